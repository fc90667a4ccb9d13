"""Alembic migrations of the registry schema (shipped in the package as ``lineage.migrations``)."""

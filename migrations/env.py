"""Alembic environment: migrates the connection lineage hands over, inside the transaction that
holds the registry's write lock (``lineage.registry.schema``); batch mode for SQLite."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from lineage.registry.db import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # lineage's own: the caller commits (or rolls back) it
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # The `alembic` command line with -x url=... (no lock: prefer `lineage db upgrade`).
    engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("lineage migrations run online only")
run_migrations_online()

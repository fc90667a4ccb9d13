"""Stage 1, the registry: what exists and where it came from.

The flow (corpora → domains → router → plan → cache → trainer → registry) ends here, and every
later stage reads from here: SQLAlchemy tables (``db``), Alembic migrations (``schema``), plain
records (``entities``), the ``Registry`` API (``store``, ``records``, ``rows``), lineage graph
arithmetic (``ancestry``), and what is read from or written beside a model directory
(``modelinfo``, ``modelcard``, ``graph``). Imports only the foundation modules.

``lineage.registry.Registry`` loads on first use, so importing a module of this package does
not import SQLAlchemy unless it needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lineage.registry.store import Registry

__all__ = ["Registry"]


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from lineage.registry.store import Registry

        return Registry
    raise AttributeError(f"module 'lineage.registry' has no attribute {name!r}")

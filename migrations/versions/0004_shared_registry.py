"""a registry a team shares: graph version kept by triggers; paths relative to the storage root

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00

- ``registry_state`` holds one row whose ``graph_version`` database triggers change on every
  insert, delete or rename of a model and every insert, update or delete of an edge, whoever
  writes (lineage, an older client, psql): readers keep the lineage graph in memory and check it
  with one read. SQLite has row triggers only; PostgreSQL gets statement triggers. On SQLite, a
  later migration that rebuilds ``models`` or ``edges`` in batch mode drops their triggers and
  must create them again (tests/test_migrations.py checks the head schema keeps the version).
- Paths of models, tokenizers, caches and domain shards under the storage root (the lineage
  command passes the workspace's) become relative to it; others stay absolute. Without a root
  (the bare ``alembic`` command), paths are left as they are.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from alembic import context, op

from lineage.errors import LineageError

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

PATH_TABLES = ("models", "tokenizers", "caches", "shards")
BUMP = "UPDATE registry_state SET graph_version = graph_version + 1"
SQLITE_TRIGGERS = {  # name: the event it follows
    "models_inserted": "INSERT ON models",
    "models_deleted": "DELETE ON models",
    "models_renamed": "UPDATE OF name ON models",
    "edges_inserted": "INSERT ON edges",
    "edges_deleted": "DELETE ON edges",
    "edges_updated": "UPDATE OF parent_id, child_id ON edges",
}
PG_TRIGGERS = {
    "models_changed": "INSERT OR DELETE OR UPDATE OF name OR TRUNCATE ON models",
    "edges_changed": "INSERT OR DELETE OR UPDATE OF parent_id, child_id OR TRUNCATE ON edges",
}


def upgrade() -> None:
    op.create_table('registry_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('graph_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_state'))
    )
    op.execute("INSERT INTO registry_state (id, graph_version) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION lineage_graph_changed() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for name, event in PG_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} "
                "FOR EACH STATEMENT EXECUTE FUNCTION lineage_graph_changed()"
            )
    else:
        for name, event in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} AFTER {event} BEGIN {BUMP}; END")
    root = _storage_root()
    if root is not None:
        _rewrite_paths(lambda path: _relative(path, root))


def downgrade() -> None:
    root = _storage_root()
    bind = op.get_bind()
    relative = [
        t for t in PATH_TABLES
        if bind.execute(sa.text(f"SELECT 1 FROM {t} WHERE path NOT LIKE '/%' LIMIT 1")).first()
    ]
    if relative and root is None:
        raise LineageError(
            f"downgrading makes the relative paths in {', '.join(relative)} absolute again, "
            "which needs the storage root: run `lineage db downgrade` in the workspace"
        )
    if root is not None:
        _rewrite_paths(lambda path: str(root / PurePosixPath(path)) if not path.startswith("/") else path)
    if bind.dialect.name == "postgresql":
        for name in PG_TRIGGERS:
            table = name.split("_")[0]
            op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute("DROP FUNCTION lineage_graph_changed()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table('registry_state')


def _storage_root() -> Path | None:
    root = context.config.attributes.get("storage_root")
    return None if root is None else Path(root)


def _relative(path: str, root: Path) -> str:
    candidate = Path(path)
    if candidate.is_absolute() and candidate.is_relative_to(root):
        return candidate.relative_to(root).as_posix() or "."
    return path


def _rewrite_paths(change) -> None:  # type: ignore[no-untyped-def]
    bind = op.get_bind()
    for table in PATH_TABLES:
        rows = bind.execute(sa.text(f"SELECT id, path FROM {table}")).all()
        updates = [{"id": i, "path": change(p)} for i, p in rows if change(p) != p]
        if updates:
            bind.execute(sa.text(f"UPDATE {table} SET path = :path WHERE id = :id"), updates)

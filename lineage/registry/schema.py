"""Schema versions: Alembic migrations in ``migrations/`` are the only way the schema changes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from lineage.errors import ConflictError, LineageError


def migrations_dir() -> Path:
    """``migrations/`` at the repository top (shipped inside the package as lineage/migrations)."""
    import lineage.migrations as pkg

    return Path(pkg.__file__).parent


def alembic_config(engine: Engine | None = None) -> AlembicConfig:
    """Alembic's configuration built in code (no alembic.ini); env.py takes ``engine``."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    heads = scripts().get_heads()
    assert len(heads) == 1, f"migrations must have one head, found {heads}"
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise LineageError(f"cannot open the registry database {engine.url!r}: {exc.orig}") from exc
    except SQLAlchemyError as exc:
        raise LineageError(f"cannot reach the registry database {engine.url!r}: {exc}") from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def check_schema(engine: Engine, *, upgrade_fresh: bool = True) -> str:
    """Make sure the database is at this code's head; upgrade a fresh one; refuse a newer one."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return head
    if current is None:
        if upgrade_fresh:
            upgrade(engine)
            return head
        raise LineageError("the registry database has no schema yet: run `lineage db upgrade`")
    known = {rev.revision for rev in scripts().walk_revisions()}
    if current not in known:
        raise ConflictError(
            f"the registry database is at schema revision {current}, which this version of "
            f"lineage does not know (its newest is {head}): the database was written by a newer "
            "lineage; upgrade lineage instead of using this one"
        )
    raise LineageError(
        f"the registry database is at schema revision {current}, older than {head}: "
        "run `lineage db upgrade`"
    )

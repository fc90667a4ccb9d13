"""Schema versions: Alembic migrations in ``migrations/`` are the only way the schema changes.

Every migration runs in one transaction that holds the registry's write lock
(``lineage.registry.db``) and reads the revision again once it has the lock: several processes
opening a fresh database at once upgrade it once, the others find it done. On SQLite, foreign
keys are off while a migration runs (batch mode copies tables; dropping the old copy must not
cascade) and checked before it commits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from lineage.errors import ConflictError, LineageError

# Tables of the first revision: any of them without a revision means a lost alembic_version.
LINEAGE_TABLES = frozenset({"models", "edges", "domains", "tokenizers"})


def migrations_dir() -> Path:
    """``migrations/`` at the repository top (shipped inside the package as lineage/migrations)."""
    import lineage.migrations as pkg

    return Path(pkg.__file__).parent


def alembic_config(
    connection: Connection | None = None, storage_root: Path | None = None
) -> AlembicConfig:
    """Alembic's configuration built in code (no alembic.ini); env.py migrates ``connection``
    inside its open transaction; data migrations read ``storage_root``."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    cfg.attributes["storage_root"] = storage_root
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    heads = scripts().get_heads()
    assert len(heads) == 1, f"migrations must have one head, found {heads}"
    return heads[0]


def known_revisions() -> set[str]:
    return {rev.revision for rev in scripts().walk_revisions()}


def newer_database(current: str) -> ConflictError:
    return ConflictError(
        f"the registry database is at schema revision {current}, which this version of "
        f"lineage does not know (its newest is {head_revision()}): the database was written "
        "by a newer lineage; upgrade lineage instead of using this one"
    )


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise LineageError(f"cannot open the registry database {engine.url!r}: {exc.orig}") from exc
    except SQLAlchemyError as exc:
        raise LineageError(f"cannot reach the registry database {engine.url!r}: {exc}") from exc


def _locked(engine: Engine, step: Callable[[Connection], None]) -> None:
    """Run ``step`` in one transaction holding the write lock (SQLite: foreign keys off)."""
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # outside any transaction, where SQLite honours it
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.execution_options(lineage_write=True).begin():
                step(conn)
                if sqlite and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").first()):
                    raise LineageError(f"the migration broke a foreign key: {tuple(bad)}")
        except CommandError as exc:  # e.g. an unknown target revision
            known = ", ".join(sorted(known_revisions()))
            raise LineageError(f"cannot migrate: {exc} (revisions: {known}; head, base)") from exc
        except OperationalError as exc:
            raise LineageError(f"registry database error: {exc.orig}") from exc
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def refuse_unstamped(bind: Engine | Connection) -> None:
    """A database with lineage's tables but no schema revision (an empty ``alembic_version``):
    migrating it would create the tables again, so it is refused with what to do."""
    tables = set(inspect(bind).get_table_names()) & LINEAGE_TABLES
    if tables:
        raise LineageError(
            f"the registry database has lineage's tables ({', '.join(sorted(tables))}) but no "
            "schema revision (alembic_version is empty); restore it from a backup, or record the "
            "revision its tables match (INSERT INTO alembic_version VALUES ('REVISION'); this "
            f"lineage's newest is {head_revision()}) before using it"
        )


def upgrade(engine: Engine, revision: str = "head", *, storage_root: Path | None = None) -> None:
    """Upgrade to ``revision`` under the lock; a database newer than the code is refused."""

    def step(conn: Connection) -> None:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None:
            refuse_unstamped(conn)
        elif current not in known_revisions():
            raise newer_database(current)
        command.upgrade(alembic_config(conn, storage_root), revision)

    _locked(engine, step)


def downgrade(engine: Engine, revision: str, *, storage_root: Path | None = None) -> None:
    """Downgrade to ``revision`` (a revision id, ``base``, or relative such as ``-1``)."""

    def step(conn: Connection) -> None:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in known_revisions():
            raise newer_database(current)
        command.downgrade(alembic_config(conn, storage_root), revision)

    _locked(engine, step)


def check_schema(
    engine: Engine, *, upgrade_fresh: bool = True, storage_root: Path | None = None
) -> str:
    """Make sure the database is at this code's head; upgrade a fresh one; refuse a newer one."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return head
    if current is None:
        if upgrade_fresh:
            # Not refuse_unstamped here: another process may create the schema between this
            # read and a look at the tables. upgrade reads both again under the write lock.
            upgrade(engine, storage_root=storage_root)
            return head
        try:
            refuse_unstamped(engine)
        except LineageError:
            if current_revision(engine) is None:
                raise
            return check_schema(engine, upgrade_fresh=False, storage_root=storage_root)
        raise LineageError("the registry database has no schema yet: run `lineage db upgrade`")
    if current not in known_revisions():
        raise newer_database(current)
    raise LineageError(
        f"the registry database is at schema revision {current}, older than {head}: "
        "run `lineage db upgrade`"
    )

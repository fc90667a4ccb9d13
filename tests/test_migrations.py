"""Migrations are the schema: step by step to head equals the ORM; every step goes back down."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from lineage.errors import ConflictError, LineageError
from lineage.registry import Registry
from lineage.registry.db import Base, make_engine
from lineage.registry.schema import (
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    scripts,
    upgrade,
)


def revisions_in_order() -> list[str]:
    return [r.revision for r in reversed(list(scripts().walk_revisions()))]


def test_upgrade_step_by_step_gives_exactly_the_orm_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'reg.db'}")
    for revision in revisions_in_order():
        upgrade(engine, revision)
        assert current_revision(engine) == revision
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'reg.db'}")
    upgrade(engine)
    for revision in reversed(revisions_in_order()):
        downgrade(engine, f"{revision}-1" if revision != revisions_in_order()[0] else "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_a_fresh_database_is_upgraded_on_first_open(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'new.db'}")
    assert reg.schema_revision == head_revision()
    assert "models" in inspect(reg.engine).get_table_names()


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'reg.db'}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(ConflictError, match="newer lineage"):
        check_schema(engine)


def test_an_older_database_asks_for_an_upgrade(tmp_path: Path) -> None:
    if len(revisions_in_order()) < 2:
        pytest.skip("only one revision so far: no older schema exists to test against")
    engine = make_engine(f"sqlite:///{tmp_path / 'reg.db'}")
    upgrade(engine, revisions_in_order()[-2])
    with pytest.raises(LineageError, match="lineage db upgrade"):
        check_schema(engine)


def test_an_unreachable_database_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="cannot open the registry database"):
        Registry(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'reg.db'}")

"""Migrations are the schema, on SQLite and PostgreSQL: step by step to head equals the ORM, every
step goes back down, data survives the round trip, and the CLI refuses what it cannot do."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from lineage.cli import app
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
from lineage.workspace import Workspace

ROOT = Path("/srv/lineage")  # the storage root the data migration is told about


def revisions_in_order() -> list[str]:
    return [r.revision for r in reversed(list(scripts().walk_revisions()))]


def test_upgrade_step_by_step_gives_exactly_the_orm_schema(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    for revision in revisions_in_order():
        upgrade(engine, revision)
        assert current_revision(engine) == revision
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    engine.dispose()


def _insert_first_rows(engine) -> None:  # type: ignore[no-untyped-def]
    """Rows as revision 0003 wrote them: absolute paths, one under the storage root."""
    with engine.begin() as conn:
        for i, (name, path) in enumerate(
            [("base", f"{ROOT}/models/base"), ("g2", f"{ROOT}/models/g2"), ("ext", "/data/ext")]
        ):
            conn.execute(
                text(
                    "INSERT INTO models (name, path, family, objective, layers, d_model, heads, "
                    "d_ffn, vocab_size, n_params, domains, description, created_at) VALUES "
                    "(:n, :p, 'roberta', 'mlm', 2, 64, 2, 256, 300, :i, '[]', '', "
                    "'2026-01-01 00:00:00')"
                ),
                {"n": name, "p": path, "i": 1000 + i},
            )
        conn.execute(
            text(
                "INSERT INTO edges (parent_id, child_id, kind, params, created_at) "
                "VALUES (1, 2, 'ki', '{\"alpha_T\": 0.5}', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO caches (path, teacher_id, top_k, manifest, created_at) "
                f"VALUES ('{ROOT}/caches/base-k10', 1, 10, '{{}}', '2026-01-01 00:00:00')"
            )
        )


def _paths(engine, table: str = "models") -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT path FROM {table} ORDER BY id")).scalars())


def test_data_survives_upgrade_downgrade_and_upgrade_again(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    upgrade(engine, "0003")
    _insert_first_rows(engine)
    upgrade(engine, storage_root=ROOT)  # 0004: paths under the root become relative
    assert _paths(engine) == ["models/base", "models/g2", "/data/ext"]
    assert _paths(engine, "caches") == ["caches/base-k10"]
    reg = Registry(empty_db_url, storage_root=ROOT, upgrade_fresh=False)
    assert [m.path for m in reg.models()] == [
        f"{ROOT}/models/base",
        f"{ROOT}/models/g2",
        "/data/ext",
    ]
    assert reg.generation("g2") == 2 and reg.edges()[0].params == {"alpha_T": 0.5}
    reg.close()
    with pytest.raises(LineageError, match="needs the storage root"):
        downgrade(engine, "0003")  # relative paths cannot go back without knowing the root
    assert current_revision(engine) == head_revision()  # refused as a whole
    downgrade(engine, "0001", storage_root=ROOT)
    assert _paths(engine) == [f"{ROOT}/models/base", f"{ROOT}/models/g2", "/data/ext"]
    assert "caches" not in inspect(engine).get_table_names()
    upgrade(engine, storage_root=ROOT)
    assert _paths(engine) == ["models/base", "models/g2", "/data/ext"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM edges")).scalar() == 1
    engine.dispose()


def test_head_schema_keeps_the_graph_version_current(registry_url: str) -> None:
    """The triggers of 0004 exist at head (a batch rebuild of models/edges would drop them)."""
    reg = Registry(registry_url)
    engine = reg.engine

    def version() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT graph_version FROM registry_state")).scalar_one())

    start = version()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (name, path, family, objective, layers, d_model, heads, d_ffn, "
                "vocab_size, n_params, domains, description, created_at) VALUES ('m', 'x', "
                "'gpt2', 'clm', 1, 8, 1, 8, 8, 8, '[]', '', '2026-01-01 00:00:00')"
            )
        )
    after_model = version()
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET path = 'y'"))  # not a graph change
    assert version() == after_model > start
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET name = 'renamed'"))
    assert version() > after_model
    reg.close()


def test_downgrade_to_base_and_back(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    upgrade(engine)
    for revision in reversed(revisions_in_order()):
        downgrade(engine, f"{revision}-1" if revision != revisions_in_order()[0] else "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_fresh_database_is_upgraded_on_first_open(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'new.db'}")
    assert reg.schema_revision == head_revision()
    assert "models" in inspect(reg.engine).get_table_names()


def _stamp(engine, revision: str) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_a_database_newer_than_the_code_is_refused(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    upgrade(engine)
    _stamp(engine, "ffff_from_the_future")
    with pytest.raises(ConflictError, match="newer lineage"):
        check_schema(engine)
    with pytest.raises(ConflictError, match="newer lineage"):
        upgrade(engine)
    engine.dispose()


def test_an_older_database_asks_for_an_upgrade(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'reg.db'}")
    upgrade(engine, revisions_in_order()[-2])
    with pytest.raises(LineageError, match="lineage db upgrade"):
        check_schema(engine)


def test_an_unreachable_database_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="cannot open the registry database"):
        Registry(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'reg.db'}")


def test_an_unsupported_backend_is_refused_in_one_line() -> None:
    with pytest.raises(LineageError, match="sqlite or postgresql"):
        make_engine("mysql+pymysql://u@h/db")


def test_db_commands_answer_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    ws = Workspace.init(tmp_path / "ws")
    engine = ws.registry.engine
    head = head_revision()
    cli = ["-w", str(ws.root), "db"]

    out = runner.invoke(app, [*cli, "current", "--json"])
    assert out.exit_code == 0 and f'"current": "{head}"' in out.output
    out = runner.invoke(app, [*cli, "upgrade", "zz9"])
    assert out.exit_code == 1 and "Can't locate revision identified by 'zz9'" in out.output
    assert "Traceback" not in out.output
    out = runner.invoke(app, [*cli, "downgrade", revisions_in_order()[-2]])
    assert out.exit_code == 0 and current_revision(engine) == revisions_in_order()[-2]
    out = runner.invoke(app, [*cli, "current"])
    assert out.exit_code == 0 and "run `lineage db upgrade`" in out.output
    out = runner.invoke(app, [*cli, "upgrade"])
    assert out.exit_code == 0 and current_revision(engine) == head

    _stamp(engine, "9999")
    for command in ("upgrade", "current"):
        out = runner.invoke(app, [*cli, command])
        assert out.exit_code == 1, command
        assert "9999" in out.output and "newer lineage" in out.output
        assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    ws.close()

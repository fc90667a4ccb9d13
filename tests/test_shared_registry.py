"""A registry a team shares: `lineage db check`, cycles written past the check, storage roots,
secrets from the environment, and `lineage init` leaving nothing behind when it fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from lineage.cli import app
from lineage.errors import LineageError
from lineage.registry.modelinfo import ModelInfo
from lineage.workspace import Workspace

runner = CliRunner()
INFO = ModelInfo("roberta", "mlm", 2, 64, 2, 256, 300, 1000, "f" * 64)


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def _edge_by_hand(ws: Workspace, parent: str, child: str) -> None:
    ids = {m.name: m.id for m in ws.registry.models()}
    with ws.registry.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO edges (parent_id, child_id, kind, params, created_at) "
                "VALUES (:p, :c, 'ki', '{}', '2026-01-01 00:00:00')"
            ),
            {"p": ids[parent], "c": ids[child]},
        )


@pytest.fixture
def team_ws(tmp_path: Path, registry_url: str) -> Workspace:
    ws = Workspace.init(tmp_path / "ws", registry_url=registry_url)
    yield ws
    ws.close()


def test_db_check_finds_cycles_and_missing_files(team_ws: Workspace) -> None:
    ws, reg = team_ws, team_ws.registry
    for name in ("a", "b", "c"):
        (ws.models_dir / name).mkdir()
        reg.add_model(name, str(ws.models_dir / name), INFO)
    reg.add_edge("a", "b", "ki")
    reg.add_edge("b", "c", "adapt")
    cli = ["-w", str(ws.root)]
    assert "registry OK" in run(*cli, "db", "check")

    _edge_by_hand(ws, "c", "a")
    shutil.rmtree(ws.models_dir / "b")
    report = json.loads(run(*cli, "db", "check", "--json", code=1))
    assert report["ok"] is False
    assert [f["problem"] for f in report["cycles"]] == ["cycle a -> b -> c -> a"]
    assert report["model-files"] == [
        {
            "check": "model-files",
            "subject": "model b",
            "problem": f"{ws.models_dir / 'b'} does not exist",
        }
    ]
    assert report["dangling-edges"] == [] and report["cache-files"] == []

    out = run(*cli, "model", "show", "c", code=1)  # generation needs a DAG: named, not a hang
    assert "cycle: a -> b -> c -> a" in out and "Traceback" not in out
    graph = runner.invoke(app, [*cli, "graph"])
    assert graph.exit_code == 0 and "warning: cycle a -> b -> c -> a" in graph.output
    # on a cycle, generations are undefined: G?
    assert all(name in graph.output for name in ("a G? (roberta", "b G? (roberta", "c G? (roberta"))
    assert "↻ cycle" in graph.output

    run(*cli, "edge", "remove", "c", "a")
    assert json.loads(run(*cli, "model", "show", "c", "--json"))["generation"] == 2  # adapt: same
    assert json.loads(run(*cli, "db", "check", "--json", code=1))["cycles"] == []


def test_db_check_finds_an_edge_to_a_missing_model(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.registry.add_model("a", "/m/a", INFO)
    with ws.registry.engine.connect() as conn:  # foreign keys off: what a careless script does
        conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        conn.execute(
            text(
                "INSERT INTO edges (parent_id, child_id, kind, params, created_at) "
                "VALUES (1, 42, 'ki', '{}', '2026-01-01 00:00:00')"
            )
        )
        conn.commit()
        conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    report = json.loads(run("-w", str(ws.root), "db", "check", "--json", code=1))
    assert [f["problem"] for f in report["dangling-edges"]] == ["no model with id 42"]
    ws.close()


def test_a_copied_workspace_finds_its_own_files(tmp_path: Path) -> None:
    """Paths are relative to the storage root: the registry moves with the files."""
    ws = Workspace.init(tmp_path / "one")
    (ws.models_dir / "m").mkdir()
    ws.registry.add_model("m", str(ws.models_dir / "m"), INFO)
    ws.close()
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    shutil.rmtree(tmp_path / "one")
    moved = Workspace.open(tmp_path / "two")
    assert moved.registry.model("m").path == str(tmp_path / "two" / "models" / "m")
    assert "registry OK" in run("-w", str(moved.root), "db", "check")
    moved.close()


def test_a_shared_storage_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[storage] root points at a mount; folders and stored paths are relative to it."""
    ws = Workspace.init(tmp_path / "ws")
    config = (ws.root / "lineage.toml").read_text()
    ws.close()
    monkeypatch.setenv("TEAM_MOUNT", str(tmp_path / "mnt"))
    (ws.root / "lineage.toml").write_text(
        config.replace('root = "{workspace}"', 'root = "${TEAM_MOUNT}"')
    )
    shared = Workspace.open(ws.root)
    assert (
        shared.storage_root == tmp_path / "mnt" and shared.models_dir == tmp_path / "mnt" / "models"
    )
    shared.registry.add_model("m", str(shared.models_dir / "m"), INFO)
    with shared.registry.engine.connect() as conn:
        assert conn.execute(text("SELECT path FROM models")).scalar() == "models/m"
    shared.close()


def test_the_registry_password_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.close()
    toml = ws.root / "lineage.toml"
    toml.write_text(
        toml.read_text().replace(
            'url = "sqlite:///{workspace}/registry.db"',
            'url = "postgresql+psycopg://lineage:${LINEAGE_TEST_PW}@/lineage?host=/nonexistent"',
        )
    )
    opened = Workspace.open(ws.root)
    with pytest.raises(LineageError, match=r"\$\{LINEAGE_TEST_PW\}, which is not set"):
        _ = opened.registry_url
    monkeypatch.setenv("LINEAGE_TEST_PW", "s3cret")
    assert opened.registry_url.startswith("postgresql+psycopg://lineage:s3cret@/lineage")
    # `lineage doctor` shows the registry (unreachable here) without the password.
    doctor = runner.invoke(app, ["-w", str(ws.root), "doctor"])
    assert "postgresql+psycopg://lineage:***@/lineage" in doctor.output
    assert "s3cret" not in doctor.output
    monkeypatch.setenv("LINEAGE_REGISTRY_URL", "sqlite:///{}".format(tmp_path / "other.db"))
    assert opened.registry_url.endswith("other.db")  # the whole URL from the environment


@pytest.mark.parametrize("where", ["new folder", "existing folder"])
def test_a_failed_init_leaves_nothing_behind(tmp_path: Path, where: str) -> None:
    root = tmp_path / "ws"
    if where == "existing folder":
        root.mkdir()
        (root / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    out = run("init", str(root), "--registry-url", "mysql://u@h/db", code=1)
    assert "sqlite or postgresql" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    out = run("init", str(root), "--registry-url", f"sqlite:///{tmp_path}/no/such/dir/r.db", code=1)
    assert "cannot open the registry database" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before

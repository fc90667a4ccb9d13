"""Weights checksummed at registration: `lineage model verify`, and a changed byte refused before
a model is used as a base or a teacher, with one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.cli import app
from lineage.errors import LineageError
from lineage.files import sha256_file
from lineage.registry.modelfiles import check_model_files, verify_files
from lineage.workspace import Workspace

runner = CliRunner()


def flip_byte(path: Path, offset: int = -10, *, keep_mtime: bool = False) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def registered(ws: Workspace, make_model_dir) -> tuple[Workspace, Path]:
    src = make_model_dir("m")
    ws.register_model(src)
    return ws, src


def test_registration_records_sha256_size_and_mtime(registered: tuple[Workspace, Path]) -> None:
    ws, src = registered
    files = ws.registry.model("m").files
    assert files is not None and set(files) == {"config.json", "model.safetensors"}
    weights = src / "model.safetensors"
    assert files["model.safetensors"] == {
        "sha256": sha256_file(weights),
        "size": weights.stat().st_size,
        "mtime_ns": weights.stat().st_mtime_ns,
    }


def test_verify_passes_then_names_the_flipped_file(registered: tuple[Workspace, Path]) -> None:
    ws, src = registered
    argv = ["-w", str(ws.root), "model", "verify", "m"]
    ok = runner.invoke(app, argv)
    assert ok.exit_code == 0 and "ok: m (2 files" in ok.output
    flip_byte(src / "model.safetensors")
    bad = runner.invoke(app, argv)
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == [
        f"error: 'm' differs from its registration: {src / 'model.safetensors'}: "
        "sha256 differs from the one recorded at registration"
    ]
    as_json = runner.invoke(app, [*argv, "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False


def test_use_is_checked_cheaply_and_verify_fully(registered: tuple[Workspace, Path]) -> None:
    """Same size and mtime: the check on use trusts the record (no re-hash), `verify` does not."""
    ws, src = registered
    flip_byte(src / "model.safetensors", keep_mtime=True)
    model = ws.registry.model("m")
    check_model_files(model, "teacher")  # stat unchanged: passes without hashing
    problems = verify_files(src, model.files or {}, full=True)
    assert problems == [
        f"{src / 'model.safetensors'}: sha256 differs from the one recorded at registration"
    ]


def test_missing_grown_and_new_files_are_named(registered: tuple[Workspace, Path]) -> None:
    ws, src = registered
    model = ws.registry.model("m")
    with (src / "config.json").open("a") as fh:
        fh.write(" ")
    (src / "extra.safetensors").write_bytes(b"x")
    problems = verify_files(src, model.files or {}, full=False)
    assert problems[0].startswith(f"{src / 'config.json'}: ") and "bytes" in problems[0]
    assert problems[1] == f"{src / 'extra.safetensors'}: not there when the model was registered"
    (src / "model.safetensors").unlink()
    with pytest.raises(LineageError, match=r"base model 'm' changed since it was registered: "):
        check_model_files(model, "base model")


@pytest.mark.parametrize(
    "args",
    [
        ["train", "-m", "m", "-d", "x", "--steps", "1", "--block-size", "16", "-o", "m2"],
        ["cache", "build", "--teacher", "m", "-d", "x", "--block-size", "16"],
        ["grow", "m", "m3", "--layers", "2", "--hidden", "128", "-d", "x", "--block-size", "16"],
        [
            "train",
            "-m",
            "m0",
            "-d",
            "x",
            "--strategy",
            "ki",
            "-t",
            "m",
            "--steps",
            "1",
            "--block-size",
            "16",
            "-o",
            "m4",
        ],
    ],
    ids=["train-base", "cache-teacher", "grow-source", "train-teacher"],
)
def test_a_flipped_byte_is_refused_before_use(
    registered: tuple[Workspace, Path], make_model_dir, args: list[str]
) -> None:
    ws, src = registered
    ws.register_model(make_model_dir("m0"))
    runs = ws.registry.runs()
    flip_byte(src / "model.safetensors")
    result = runner.invoke(app, ["-w", str(ws.root), *args])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "changed since it was registered" in line and str(src / "model.safetensors") in line
    assert ws.registry.runs() == runs and len(ws.registry.models()) == 2


def test_models_registered_before_checksums_pass_and_verify_says_so(
    registered: tuple[Workspace, Path],
) -> None:
    import sqlite3

    ws, _ = registered
    with sqlite3.connect(ws.root / "registry.db") as conn:
        conn.execute("UPDATE models SET files = NULL")
    check_model_files(ws.registry.model("m"), "teacher")
    result = runner.invoke(app, ["-w", str(ws.root), "model", "verify", "m"])
    assert result.exit_code == 1 and "before lineage recorded checksums" in result.stderr


def test_the_files_column_migration_keeps_the_graph_version_triggers(tmp_path: Path) -> None:
    """0006 adds and drops models.files in place: a recreated models table would lose the
    triggers 0004 put on it (graph_version would stop moving)."""
    import sqlite3

    from sqlalchemy import create_engine

    from lineage.registry.schema import downgrade, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")

    def triggers() -> set[str]:
        with sqlite3.connect(tmp_path / "r.db") as conn:
            sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'models'"
            return {r[0] for r in conn.execute(sql)}

    upgrade(engine, "0005")
    before = triggers()
    upgrade(engine, "0006")
    assert before and triggers() == before
    downgrade(engine, "0005")
    assert triggers() == before
    engine.dispose()

"""One name rule for every registry name, and no path built from a name outside its folder: the
audit's escapes through every command that takes a name, the Python API and the registry."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.cli import app
from lineage.errors import LineageError
from lineage.files import check_name, path_inside
from lineage.workspace import Workspace

runner = CliRunner()

GOOD = ["a", "A9", "t0", "teacher-lit", "bert_base.v2", "x" * 100, "a..b", "0"]
BAD = [
    "",
    ".",
    "..",
    ".hidden",
    "-dash",
    "_under",
    "a/b",
    "../x",
    "/tmp/x",
    "a\\b",
    "a b",
    "x" * 101,
    "é",
    "a\x00b",
    "a:b",
    "student-cs+bio",
]


@pytest.mark.parametrize("name", GOOD)
def test_safe_slugs_pass(name: str) -> None:
    assert check_name(name, "model") == name


@pytest.mark.parametrize("name", BAD)
def test_everything_else_is_refused_with_the_rule(name: str) -> None:
    with pytest.raises(LineageError, match="is not a valid name: use 1-100 letters"):
        check_name(name, "model")


def test_a_long_name_is_shown_shortened() -> None:
    with pytest.raises(LineageError) as info:
        check_name("b" * 5000)
    assert "(5000 characters)" in str(info.value) and len(str(info.value)) < 200


def test_paths_stay_inside_their_folder(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    assert path_inside(tmp_path / "models", "m", "x") == (tmp_path / "models" / "m" / "x").resolve()
    for parts in (("..", "x"), ("/etc/passwd",), ("a", "..", "..", "b"), ("",), (".",)):
        with pytest.raises(LineageError, match="outside"):
            path_inside(tmp_path / "models", *parts)
    (tmp_path / "models" / "link").symlink_to(tmp_path)  # a symlink out is resolved and refused
    with pytest.raises(LineageError, match="outside"):
        path_inside(tmp_path / "models", "link", "x")


def test_the_python_api_and_the_registry_refuse_bad_names(
    ws: Workspace, make_model_dir, tmp_path: Path
) -> None:
    from lineage.inherit.plans import create_plan
    from lineage.lifecycle import create_workspace_model, train_workspace_tokenizer
    from lineage.registry.modelinfo import read_model_info
    from lineage.train.training import TrainJob

    src = make_model_dir("m")
    with pytest.raises(LineageError, match="valid name"):
        ws.register_model(src, name="a/../../b")
    with pytest.raises(LineageError, match="valid name"):
        ws.register_model(src, name="")
    with pytest.raises(LineageError, match="valid name"):
        ws.registry.add_model("../x", str(src), read_model_info(src))
    with pytest.raises(LineageError, match="valid name"):
        ws.registry.add_tokenizer("../t", str(src), "f" * 64, 10, {})
    with pytest.raises(LineageError, match="valid name"):
        ws.registry.add_domain("../d")
    with pytest.raises(LineageError, match="valid name"):
        create_workspace_model(ws, "../m", family="roberta", shape="tiny", tokenizer="t")
    with pytest.raises(LineageError, match="valid name"):
        train_workspace_tokenizer(ws, "../../t", ["d"])
    with pytest.raises(LineageError, match="valid name"):
        TrainJob("m", "../../escape", ("d",))
    model = ws.register_model(src)  # the folder's name, which is a valid one
    with pytest.raises(LineageError, match="valid name"):
        ws.registry.add_plan("../p", model.name, {})
    with pytest.raises(LineageError, match="valid name"):
        create_plan(ws, student=model.name, domains=["d"], name="a/b")
    assert [m.name for m in ws.registry.models()] == ["m"]
    assert ws.registry.tokenizers() == [] and ws.registry.domains() == []


def _around(base: Path, ws_root: Path) -> set[str]:
    """Every path under ``base`` outside the workspace."""
    return {str(p) for p in base.rglob("*") if not p.is_relative_to(ws_root)}


ESCAPES = [
    (
        "model",
        "create",
        "../evil-model",
        "--family",
        "roberta",
        "--tokenizer",
        "shared",
        "--preset",
        "tiny",
    ),
    (
        "model",
        "create",
        "/tmp/x/abs-evil",
        "--family",
        "roberta",
        "--tokenizer",
        "shared",
        "--preset",
        "tiny",
    ),
    ("model", "register", "{ws}/models/t0", "--name", "a/../../b"),
    ("tokenizer", "train", "../../../escape-tok", "-d", "cs"),
    (
        "train",
        "-m",
        "student",
        "-d",
        "cs",
        "--steps",
        "1",
        "--block-size",
        "32",
        "-o",
        "../../escape-train",
    ),
    ("grow", "teacher-lit", "../../escape-grow", "--layers", "2", "--hidden", "64"),
    ("adapt", "teacher-lit", "-d", "cs", "--strategy", "sl", "-o", "../../escape-adapt"),
    ("plan", "create", "--student", "student", "-d", "cs", "--name", "../../escape-plan"),
    ("domain", "add", "../../escape-domain", "{ws}/lineage.toml"),
]


@pytest.mark.parametrize("args", ESCAPES, ids=[" ".join(a[:2]) for a in ESCAPES])
def test_no_command_writes_outside_the_workspace(
    family_template: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    root = tmp_path / "x" / "y" / "ws"
    shutil.copytree(family_template, root)
    outside = _around(tmp_path, root)
    argv = ["-w", str(root), *(a.replace("{ws}", str(root)) for a in args)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert "valid name" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _around(tmp_path, root) == outside
    assert not Path("/tmp/x/abs-evil").exists()


def test_a_bad_name_in_an_old_registry_cannot_lead_a_cache_outside(
    family_template: Path, tmp_path: Path
) -> None:
    """A teacher registered as 'a/../../b' by an older lineage (cache paths are built from the
    teacher's name): cache build and KI training refuse it before any job starts."""
    root = tmp_path / "x" / "y" / "ws"
    shutil.copytree(family_template, root)
    with sqlite3.connect(root / "registry.db") as conn:
        conn.execute("UPDATE models SET name = 'a/../../../../b' WHERE name = 'teacher-lit'")
    outside = _around(tmp_path, root)
    with Workspace.open(root) as ws:
        runs = ws.registry.runs()
    for args in (
        ["cache", "build", "--teacher", "a/../../../../b", "-d", "cs", "--block-size", "32"],
        [
            "train",
            "-m",
            "student",
            "-d",
            "cs",
            "--strategy",
            "ki",
            "-t",
            "a/../../../../b",
            "--steps",
            "1",
            "--block-size",
            "32",
            "-o",
            "s2",
        ],
    ):
        result = runner.invoke(app, ["-w", str(root), *args])
        assert result.exit_code == 1 and "outside" in result.stderr, result.output
    assert _around(tmp_path, root) == outside
    with Workspace.open(root) as ws:
        assert ws.registry.runs() == runs  # refused before any job was recorded
        assert not ws.registry.has_model("s2")

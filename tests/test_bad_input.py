"""Every bad input ends in one clear line on stderr and exit 1, and changes nothing: the registry's
rows and every file around the workspace are the same before and after (issue #13's audit)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.cli import app
from lineage.workspace import Workspace

runner = CliRunner()
LONG = "a" * 5000


@pytest.fixture(autouse=True)
def _quiet_transformers() -> Iterator[None]:
    """`lineage` (main()) turns transformers' progress bars off before importing it; in-process
    CliRunner calls do not go through main(), so the bars are turned off here."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


def snapshot(base: Path, registry: Path) -> tuple[dict[str, tuple[int, int]], dict[str, list]]:
    """Every file under ``base`` (size, mtime) and every registry row, table by table."""
    files = {
        str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
        if p.is_file()
        else (-1, 0)
        for p in sorted(base.rglob("*"))
        if not p.name.endswith(("-wal", "-shm", "-journal"))  # SQLite's own bookkeeping
    }
    with sqlite3.connect(registry) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    return files, rows


def _model_dir(base: Path, name: str, template: Path) -> Path:
    out = base / "sources" / name
    shutil.copytree(template, out)
    return out


def _bad_models(base: Path, template: Path) -> None:
    """Model folders the registry must refuse, built from a good one."""

    def config(name: str, text: str) -> None:
        (_model_dir(base, name, template) / "config.json").write_text(text)

    good = json.loads((template / "config.json").read_text())
    config("config-list", "[]")
    config("config-not-json", "{not json")
    config("config-abc", json.dumps(good | {"hidden_size": "abc"}))
    config("config-negative", json.dumps(good | {"num_hidden_layers": -1}))
    config("config-bool", json.dumps(good | {"num_attention_heads": True}))
    config(
        "remote-code", json.dumps(good | {"model_type": "evil", "auto_map": {"AutoModel": "x.Y"}})
    )
    weights = template / "model.safetensors"
    (_model_dir(base, "empty-weights", template) / "model.safetensors").write_bytes(b"")
    (_model_dir(base, "random-weights", template) / "model.safetensors").write_bytes(
        bytes(range(256)) * 64
    )
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32  # the JSON header's start: length prefix intact, header damaged
    (_model_dir(base, "bad-header", template) / "model.safetensors").write_bytes(bytes(data))
    (_model_dir(base, "no-weights", template) / "model.safetensors").unlink()
    (_model_dir(base, "no-config", template) / "config.json").unlink()
    _model_dir(base, "teacher-lit-copy", template)  # a good one, for the bad names


@pytest.fixture(scope="module")
def bad_ws(family_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the family workspace three folders deep (so ``../..`` stays in view), and bad
    model folders beside it; yields the folder holding both."""
    base = tmp_path_factory.mktemp("bad")
    root = base / "a" / "b" / "ws"
    shutil.copytree(family_template, root)
    _bad_models(base, family_template / "models" / "teacher-lit")
    yield base


NAME = "is not a valid name"
POSITIONS = "exceeds the 40 positions"  # the family's roberta models: max_positions=40
TRAIN = ("train", "-m", "student", "-d", "literature", "--steps", "2", "--block-size", "32")
KI = (*TRAIN, "--strategy", "ki", "-t", "teacher-lit")
CREATE = ("--family", "roberta", "--tokenizer", "shared", "--preset", "tiny")
GROW = ("grow", "teacher-lit", "grown", "--layers", "2", "--hidden", "64")
REGISTER = ("model", "register", "{src}/teacher-lit-copy")
CASES: list[tuple[str, tuple[str, ...], str]] = [
    # names: a safe slug, never a path, never empty, never too long
    ("create-dotdot", ("model", "create", "../evil-model", *CREATE), NAME),
    ("create-absolute", ("model", "create", "/tmp/x/abs-evil", *CREATE), NAME),
    ("create-empty", ("model", "create", "", *CREATE), NAME),
    ("create-5000", ("model", "create", LONG, *CREATE), "5000 characters"),
    ("create-dot", ("model", "create", "..", *CREATE), NAME),
    ("create-hidden", ("model", "create", ".hidden", *CREATE), NAME),
    ("create-space", ("model", "create", "a b", *CREATE), NAME),
    ("create-seed", ("model", "create", "ok", *CREATE, "--seed", "-1"), "seed must be"),
    ("register-empty", (*REGISTER, "--name", ""), NAME),
    ("register-escape", (*REGISTER, "--name", "a/../../b"), NAME),
    ("register-5000", (*REGISTER, "--name", LONG), "5000 characters"),
    ("tokenizer-escape", ("tokenizer", "train", "../../../escape-tok", "-d", "cs"), NAME),
    ("tokenizer-empty", ("tokenizer", "train", "", "-d", "cs"), NAME),
    ("train-escape", (*TRAIN, "-o", "../../escape-train"), NAME),
    ("train-empty", (*TRAIN, "-o", ""), NAME),
    ("train-5000", (*TRAIN, "-o", LONG), "5000 characters"),
    (
        "grow-escape",
        ("grow", "teacher-lit", "../../escape-grow", "--layers", "2", "--hidden", "64"),
        NAME,
    ),
    ("adapt-escape", ("adapt", "teacher-lit", "-d", "cs", "--strategy", "sl", "-o", "../x"), NAME),
    ("plan-escape", ("plan", "create", "--student", "student", "-d", "cs", "--name", "../p"), NAME),
    ("domain-escape", ("domain", "add", "../d", "{src}/teacher-lit-copy/config.json"), NAME),
    # model folders: config shape and types, safetensors readable, no remote code
    ("config-list", ("model", "register", "{src}/config-list"), "JSON object"),
    ("config-not-json", ("model", "register", "{src}/config-not-json"), "not valid JSON"),
    ("config-abc", ("model", "register", "{src}/config-abc"), "hidden_size must be an integer"),
    ("config-negative", ("model", "register", "{src}/config-negative"), "num_hidden_layers"),
    ("config-bool", ("model", "register", "{src}/config-bool"), "num_attention_heads"),
    ("remote-code", ("model", "register", "{src}/remote-code"), "never runs remote code"),
    ("empty-weights", ("model", "register", "{src}/empty-weights"), "not a readable safetensors"),
    ("random-weights", ("model", "register", "{src}/random-weights"), "not a readable safetensors"),
    ("bad-header", ("model", "register", "{src}/bad-header"), "not a readable safetensors"),
    ("no-weights", ("model", "register", "{src}/no-weights"), "no *.safetensors"),
    ("no-config", ("model", "register", "{src}/no-config"), "no config.json"),
    ("no-folder", ("model", "register", "{src}/nowhere"), "does not exist"),
    # training options: through the same checks as plan create / the job dataclasses
    ("schedule-kind", (*KI, "--schedule", "kind=bogus"), "unknown schedule"),
    ("schedule-alpha", (*KI, "--schedule", "alpha_T=-1"), "alpha_T must be a positive"),
    ("schedule-field", (*KI, "--schedule", "foo=1"), "unknown schedule fields: foo"),
    ("schedule-constant", (*KI, "--schedule", "constant=2"), "constant must lie in [0, 1]"),
    (
        "schedule-type",
        (*KI, "--schedule", "kind=constant", "--schedule", "constant=x"),
        "bad schedule",
    ),
    ("schedule-sl", (*TRAIN, "--schedule", "kind=constant"), "--schedule sets"),
    ("train-block", (*TRAIN[:-1], "1024"), POSITIONS),
    ("train-block-41", (*TRAIN[:-1], "41"), POSITIONS),
    ("train-block-1", (*TRAIN[:-1], "1"), "block size must be >= 2"),
    ("train-seed", (*TRAIN, "--seed", "-1"), "seed must be"),
    ("train-seed-big", (*TRAIN, "--seed", str(2**32)), "seed must be"),
    ("train-temperature", (*KI, "--temperature", "nan"), "temperature must be a finite"),
    ("train-lr", (*TRAIN, "--lr", "nan"), "lr must be a finite"),
    ("train-steps", (*TRAIN, "--steps", "0"), "steps must be >= 1"),
    ("train-fraction", (*TRAIN, "--data-fraction", "0"), "data fraction"),
    ("eval-block", ("model", "eval", "student", "-d", "cs", "--block-size", "1024"), POSITIONS),
    (
        "cache-block",
        ("cache", "build", "--teacher", "teacher-lit", "-d", "cs", "--block-size", "512"),
        POSITIONS,
    ),
    (
        "cache-topk",
        (
            "cache",
            "build",
            "--teacher",
            "teacher-lit",
            "-d",
            "cs",
            "--top-k",
            "0",
            "--block-size",
            "32",
        ),
        "top-K",
    ),
    ("grow-block", (*GROW, "--block-size", "1024"), POSITIONS),
    ("grow-seed", (*GROW, "--seed", "-1"), "seed must be"),
    (
        "adapt-block",
        ("adapt", "teacher-lit", "-d", "cs", "--strategy", "sl", "--block-size", "1024"),
        POSITIONS,
    ),
    # domains: sizes that are refused, not replaced
    (
        "shard-mb",
        ("domain", "add", "d1", "{src}/teacher-lit-copy/config.json", "--shard-mb", "-1"),
        "shard size",
    ),
    (
        "shard-mb-nan",
        ("domain", "add", "d1", "{src}/teacher-lit-copy/config.json", "--shard-mb", "nan"),
        "shard size",
    ),
    (
        "valid-every-0",
        ("domain", "add", "d1", "{src}/teacher-lit-copy/config.json", "--valid-every", "0"),
        "valid_every must be >= 2",
    ),
    (
        "valid-every-1",
        ("domain", "add", "d1", "{src}/teacher-lit-copy/config.json", "--valid-every", "1"),
        "valid_every must be >= 2",
    ),
    # unknown names, bad references
    ("verify-unknown", ("model", "verify", "nobody"), "no model named"),
]


def run_bad(base: Path, args: tuple[str, ...]) -> tuple[str, int]:
    root = base / "a" / "b" / "ws"
    argv = ["-w", str(root), *(a.replace("{src}", str(base / "sources")) for a in args)]
    result = runner.invoke(app, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {result.exception!r}"
    )
    return result.stderr, result.exit_code


@pytest.mark.parametrize(("case", "args", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_1_and_changes_nothing(
    bad_ws: Path, case: str, args: tuple[str, ...], expect: str
) -> None:
    registry = bad_ws / "a" / "b" / "ws" / "registry.db"
    before = snapshot(bad_ws, registry)
    stderr, code = run_bad(bad_ws, args)
    lines = stderr.strip().splitlines()
    assert code == 1, f"{case}: exit {code}: {stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {stderr!r}"
    assert "Traceback" not in stderr
    assert expect in lines[0], f"{case}: {lines[0]!r}"
    after = snapshot(bad_ws, registry)
    assert after[1] == before[1], f"{case} changed the registry"
    assert after[0] == before[0], f"{case} changed files: {set(after[0]) ^ set(before[0])}"


def test_the_table_holds_at_least_40_bad_inputs() -> None:
    assert len(CASES) >= 40


def _one_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    return line


@pytest.mark.parametrize(
    ("sql", "expect"),
    [
        ("UPDATE alembic_version SET version_num = 'ffff9999'", "does not know"),
        ("DELETE FROM alembic_version", "but no schema revision (alembic_version is empty)"),
    ],
    ids=["unknown-revision", "empty-alembic-version"],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["model", "list"]])
def test_a_registry_of_unknown_revision_is_refused_unchanged(
    ws: Workspace, sql: str, expect: str, command: list[str]
) -> None:
    registry = ws.root / "registry.db"
    ws.close()
    with sqlite3.connect(registry) as conn:
        conn.execute(sql)
    before = snapshot(ws.root, registry)
    assert expect in _one_line(["-w", str(ws.root), *command])
    assert snapshot(ws.root, registry) == before


def _tokenizer(ws: Workspace, tok_dir: Path) -> None:
    from lineage.registry.modelinfo import tokenizer_fingerprint

    ws.registry.add_tokenizer("tok", str(tok_dir), str(tokenizer_fingerprint(tok_dir)), 300, {})


def test_a_folder_that_cannot_be_written_is_one_line_naming_it(
    ws: Workspace, tiny_tokenizer_dir: Path
) -> None:
    """Read-only folders cannot be provoked for root (CI runs as root, and chmod does not stop
    root): a models folder whose place is taken by a file fails the same way (an OSError from
    the file system) without a privilege to bypass it."""
    _tokenizer(ws, tiny_tokenizer_dir)
    shutil.rmtree(ws.models_dir)
    ws.models_dir.write_text("not a folder")
    before = snapshot(ws.root, ws.root / "registry.db")
    line = _one_line(
        [
            "-w",
            str(ws.root),
            "model",
            "create",
            "m",
            "--family",
            "gpt2",
            "--tokenizer",
            "tok",
            "--preset",
            "tiny",
        ]
    )
    assert str(ws.models_dir) in line
    assert snapshot(ws.root, ws.root / "registry.db") == before


@pytest.mark.parametrize(
    ("errno_", "reason"),
    [(28, "No space left on device"), (30, "Read-only file system"), (36, "File name too long")],
)
def test_a_full_or_read_only_disk_is_one_line_naming_the_path(
    ws: Workspace,
    tiny_tokenizer_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    errno_: int,
    reason: str,
) -> None:
    """The OS boundary (os.replace, which publishes every atomic folder) is made to fail as a
    full disk, a read-only file system or a too-long name would: one line, nothing left."""
    import os

    _tokenizer(ws, tiny_tokenizer_dir)
    before = snapshot(ws.root, ws.root / "registry.db")
    real = os.replace

    def failing(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == ws.models_dir:
            raise OSError(errno_, os.strerror(errno_), str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    line = _one_line(
        [
            "-w",
            str(ws.root),
            "model",
            "create",
            "m",
            "--family",
            "gpt2",
            "--tokenizer",
            "tok",
            "--preset",
            "tiny",
        ]
    )
    assert line == f"error: {reason}: {ws.models_dir / 'm'}"
    assert snapshot(ws.root, ws.root / "registry.db") == before

"""The CLI tour on a real workspace: every command answers --help, reads have --json, errors are
one line with exit code 1 (2 for usage errors), and nothing is changed by a refused command."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.cli import app

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def all_commands() -> list[list[str]]:
    from typer.main import get_command

    root = get_command(app)
    paths: list[list[str]] = [[]]
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        paths.append([name])
        paths += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return paths


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "lineage")
def test_every_command_has_readable_help(path: list[str]) -> None:
    """click's conventions, as pip or mlflow print them: NAME, --domain TEXT; not typer's
    {name}, <str> or <list[str]>."""
    out = run(*path, "--help")
    assert "Usage:" in out and "--help" in out
    assert not re.search(r"\{\w+\}|<(str|int|float|path|bool|list\[\w+\])>", out), out


def options(path: list[str]) -> set[str]:
    from typer.main import get_command

    cmd = get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return {opt for param in cmd.params for opt in getattr(param, "opts", [])}


LONG_COMMANDS = [
    ["train"], ["adapt"], ["grow"], ["cache", "build"], ["demo"], ["domain", "add"],
    ["tokenizer", "train"],
]  # fmt: skip
READ_COMMANDS = [
    ["graph"], ["route"], ["doctor"], ["db", "current"], ["model", "list"], ["model", "show"],
    ["domain", "list"], ["domain", "show"], ["domain", "proximity"], ["edge", "list"],
    ["plan", "show"], ["plan", "list"], ["tokenizer", "list"], ["cache", "list"],
    ["cache", "verify"], ["report", "forgetting"], ["report", "compare"],
]  # fmt: skip


@pytest.mark.parametrize("path", LONG_COMMANDS, ids=" ".join)
def test_long_commands_can_be_quiet(path: list[str]) -> None:
    assert {"-q", "--quiet"} <= options(path)


@pytest.mark.parametrize("path", READ_COMMANDS, ids=" ".join)
def test_read_commands_print_json(path: list[str]) -> None:
    assert "--json" in options(path)


def test_quiet_prints_nothing_and_tables_are_whole_when_piped(tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    run("init", ws)
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"document {i} about cells and code" for i in range(60)))
    assert run("-w", ws, "domain", "add", "cs", str(text), "--valid-every", "5", "-q") == ""
    name = "a-tokenizer-with-a-name-long-enough-to-push-its-table-past-eighty-columns"
    assert run("-w", ws, "tokenizer", "train", name, "-d", "cs", "--vocab-size", "300", "-q") == ""
    added = run("-w", ws, "domain", "add", "bio", str(text), "--valid-every", "5")
    assert "Added domain" in added  # --quiet lasted one command
    listing = run("-w", ws, "tokenizer", "list")  # CliRunner's output is not a terminal
    (row,) = [line for line in listing.splitlines() if "a-tokenizer" in line]
    assert name in row and len(row) > 80
    assert "…" not in listing


def test_mlflow_info_lines_are_silenced(tmp_path: Path) -> None:
    """MLflow logs INFO lines when it creates its database; the CLI sets its logging level."""
    import subprocess
    import sys

    make_db = (
        "from mlflow import MlflowClient; "
        f"MlflowClient('sqlite:///{tmp_path}/{{}}.db').search_experiments()"
    )
    plain = subprocess.run(
        [sys.executable, "-c", make_db.format("a")], capture_output=True, text=True, check=True
    )
    assert "INFO mlflow" in plain.stderr  # what a first run printed before
    quiet = subprocess.run(
        [sys.executable, "-c", "from lineage.cli import quiet_libraries; quiet_libraries(); "
         + make_db.format("b")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "INFO" not in quiet.stderr and (tmp_path / "b.db").is_file()


def test_tour(tmp_path: Path, make_model_dir: Callable[..., Path]) -> None:
    ws = str(tmp_path / "ws")
    run("init", ws)
    g1, g2 = make_model_dir("g1"), make_model_dir("g2", layers=3)
    run("-w", ws, "domain", "add", "literature", "--description", "Austen")
    out = json.loads(
        run("-w", ws, "model", "register", str(g1), "--domain", "literature", "--json")
    )
    assert out["name"] == "g1" and out["domains"] == ["literature"]
    run("-w", ws, "model", "register", str(g2))
    run("-w", ws, "edge", "add", "g1", "g2", "--kind", "ki", "-p", "alpha_T=0.5", "-p", "tau=1")
    edges = json.loads(run("-w", ws, "edge", "list", "--json"))
    assert edges[0]["params"] == {"alpha_T": 0.5, "tau": 1}
    shown = json.loads(run("-w", ws, "model", "show", "g2", "--json"))
    assert shown["generation"] == 2 and shown["parents"][0]["parent"] == "g1"
    assert "└─[ki]─ g2 G2" in run("-w", ws, "graph")
    dot = run("-w", ws, "graph", "--format", "dot")
    assert '  n0 [label="g1\\nG1 · ' in dot and '  n0 -> n1 [label="ki"' in dot
    assert "n0 -.->|ki| n1" in run("-w", ws, "graph", "-f", "mermaid")
    assert len(json.loads(run("-w", ws, "graph", "-f", "json"))["edges"]) == 1
    data = json.loads(run("-w", ws, "graph", "--json"))
    assert [(m["name"], m["generation"]) for m in data["models"]] == [("g1", 1), ("g2", 2)]
    run("-w", ws, "graph", "--json", "-f", "dot", code=2)
    svg = tmp_path / "family.svg"
    run("-w", ws, "graph", "-o", str(svg))  # the format from the suffix: drawn by Graphviz
    assert svg.read_text().lstrip().startswith("<?xml") and ">g2</text>" in svg.read_text()
    run("-w", ws, "graph", "-f", "png", code=2)  # a picture needs --output
    run("-w", ws, "model", "card", "g2")
    card = (g2 / "README.md").read_text()
    assert card.startswith("---\n") and "teachers:\n  - g1" in card and "## Lineage" in card
    assert json.loads(run("-w", ws, "db", "current", "--json"))["current"] is not None


def test_errors_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = str(tmp_path / "ws")
    run("init", ws)
    monkeypatch.setenv("LINEAGE_WORKSPACE", ws)  # the environment variable selects it too
    out = run("model", "show", "ghost", code=1)
    assert "no model named 'ghost'" in out and "Traceback" not in out
    assert "would make a cycle" not in run("edge", "add", "a", "b", "--kind", "ki", code=1)
    run("model", "show", code=2)  # usage error
    run("init", ws, code=1)  # already a workspace
    assert "not a lineage workspace" in run("-w", str(tmp_path), "model", "list", code=1)
    assert json.loads(run("model", "list", "--json")) == []
    (Path(ws) / "lineage.toml").write_text("[registry]\nurl = 3\n")
    assert "registry.url must be str" in run("model", "list", code=1)


def test_domain_add_says_how_it_split_and_remove_says_what_went(tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    run("init", ws)
    legal = tmp_path / "legal.txt"
    lines = [
        f"Clause {i}: the tenant shall keep the premises number {i} in good repair."
        for i in range(60)
    ]
    legal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = run("-w", ws, "domain", "add", "legal", str(legal))
    assert "legal.txt: one document per line (no blank lines; 60 lines" in out
    assert "--documents" in out and "60 documents" in out and "valid 6 " in out
    assert "valid holds 4" in out and "smaller --block-size" in out  # 6 short lines: ~450 bytes
    assert "--replace" in run("-w", ws, "domain", "add", "legal", str(legal), code=1)
    out = run("-w", ws, "domain", "add", "legal", str(legal), "--replace", "--documents", "file")
    assert "Replaced domain legal: removed 2 shard(s)" in out and "characters held out" in out
    out = run("-w", ws, "domain", "add", "legal", str(legal), "--replace", "--valid-every", "2")
    assert "Replaced domain legal" in out and "valid holds" not in out  # ~30 lines: > 2 kB
    data = json.loads(run("-w", ws, "domain", "remove", "legal", "--json"))
    assert data["removed"]["shards"] == 2 and data["files"]
    assert "no domain named 'legal'" in run("-w", ws, "domain", "remove", "legal", code=1)
    assert "--documents" in run(
        "-w", ws, "domain", "add", "x", str(legal), "--documents", "pdf", code=2
    )
    assert json.loads(run("-w", ws, "domain", "list", "--json")) == []


def run_json(*args: str) -> object:
    """A --json command's stdout (model loading may print progress on stderr)."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cache_build_formats_list_and_verify(family_ws) -> None:
    ws = str(family_ws.root)
    common = ("-w", ws, "cache", "build", "--teacher", "teacher-lit", "-d", "literature")
    assert "must be v1 or v2" in run(*common, "--format", "v3", code=1)
    assert family_ws.registry.caches() == []
    built = run_json(*common, "--top-k", "6", "--block-size", "32", "--format", "v1")["caches"]
    assert built and {c["top_k"] for c in built} == {6}
    listed = run("-w", ws, "cache", "list")
    assert "v1" in listed and "v2" not in listed
    verified = " ".join(run("-w", ws, "cache", "verify", built[0]["path"]).split())  # unwrapped
    assert "format v1, K = 6" in verified
    again = run_json(*common, "--top-k", "4", "--block-size", "32")
    assert [c["path"] for c in again["caches"]] == [c["path"] for c in built]  # K = 6 serves 4
    assert all(p["existing"] and p["seconds"] is None for p in again["planned"])
    wider = run_json(*common, "--top-k", "8", "--block-size", "32")["caches"]
    assert {c["top_k"] for c in wider} == {8}  # the caches serving this request
    assert {c.top_k for c in family_ws.registry.caches()} == {6, 8}
    new = [c["path"] for c in wider if c["top_k"] == 8]
    assert all(
        "format v2, K = 8" in " ".join(run("-w", ws, "cache", "verify", p).split()) for p in new
    )

"""The CLI tour on a real workspace: every command answers --help, reads have --json, errors are
one line with exit code 1 (2 for usage errors), and nothing is changed by a refused command."""

from __future__ import annotations

import json
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
def test_every_command_has_help(path: list[str]) -> None:
    out = run(*path, "--help")
    assert "Usage:" in out and "--help" in out


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
    assert "└─[ki]─ g2" in run("-w", ws, "graph")
    dot = run("-w", ws, "graph", "--format", "dot")
    assert '  n0 [label="g1\\n' in dot and '  n0 -> n1 [label="ki"' in dot
    assert "n0 -.->|ki| n1" in run("-w", ws, "graph", "-f", "mermaid")
    assert len(json.loads(run("-w", ws, "graph", "-f", "json"))["edges"]) == 1
    run("-w", ws, "model", "card", "g2")
    card = (g2 / "README.md").read_text()
    assert card.startswith("---\n") and "lineage_teachers:\n- g1" in card and "## Lineage" in card
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
    assert "--replace" in run("-w", ws, "domain", "add", "legal", str(legal), code=1)
    out = run("-w", ws, "domain", "add", "legal", str(legal), "--replace", "--documents", "file")
    assert "Replaced domain legal: removed 2 shard(s)" in out and "characters held out" in out
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
    built = run_json(*common, "--top-k", "6", "--block-size", "32", "--format", "v1")
    assert built and {c["top_k"] for c in built} == {6}
    listed = run("-w", ws, "cache", "list")
    assert "v1" in listed and "v2" not in listed
    verified = " ".join(run("-w", ws, "cache", "verify", built[0]["path"]).split())  # unwrapped
    assert "format v1, K = 6" in verified
    again = run_json(*common, "--top-k", "4", "--block-size", "32")
    assert [c["path"] for c in again] == [c["path"] for c in built]  # K = 6 serves K = 4
    wider = run_json(*common, "--top-k", "8", "--block-size", "32")
    assert {c["top_k"] for c in wider} == {6, 8}
    new = [c["path"] for c in wider if c["top_k"] == 8]
    assert all(
        "format v2, K = 8" in " ".join(run("-w", ws, "cache", "verify", p).split()) for p in new
    )

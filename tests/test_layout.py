"""The package's layout follows the flow: one subpackage per stage, lowest first, and a module
imports only from its own stage or a lower one (function-level and TYPE_CHECKING imports count
too), with no import cycle; modules and functions stay short. README.md's architecture table
states the same stages and is checked against this one."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lineage"

# The stages, lowest first: a module name (or a package and everything in it) -> its stage.
STAGES: dict[str, int] = {
    "lineage.errors": 0,
    "lineage.files": 0,
    "lineage.config": 0,
    "lineage.environment": 0,
    "lineage.distributed": 0,
    "lineage.faults": 0,
    "lineage.owners": 0,
    "lineage.registry": 1,
    "lineage.migrations": 1,  # migrations/ ships as lineage.migrations: the registry's schema
    "lineage.workspace": 2,
    "lineage.corpora": 3,
    "lineage.models": 4,
    "lineage.routing": 5,
    "lineage.inherit": 6,
    "lineage.growth": 7,
    "lineage.train": 8,
    "lineage.continual": 9,
    "lineage.report": 10,
    "lineage.lifecycle": 11,
    "lineage.demo": 11,
    "lineage.cli": 11,
}
# The package root defines __version__ (foundation, stage 0, for whoever imports it) and
# re-exports public names lazily by name; its own imports (TYPE_CHECKING only) are exempt.
FACADE = "lineage"

MAX_MODULE_LINES = 500
WHY_LONG = "# layout: longer than 500 lines because"
MAX_FUNCTION_LINES = 60  # of its body, the docstring left out (a long signature is not logic)
LONG_FUNCTIONS = {  # (module, function) -> why it may stay longer
    ("lineage.cli.adapt", "adapt_command"): "a Typer command: option checks, then one table",
    ("lineage.cli.train", "train"): "a Typer command: its options are its signature",
    ("lineage.demo", "step_adaptation"): "a demo step printed as one narrative",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> int:
    if module == FACADE:
        return 0
    keys = [k for k in STAGES if module == k or module.startswith(k + ".")]
    if not keys:
        raise KeyError(f"{module} has no stage: add it to STAGES (and to README's table)")
    return STAGES[max(keys, key=len)]


def imports(module: str) -> set[str]:
    """Every lineage module ``module`` imports, anywhere in its file."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import"
            base = node.module or ""
            for alias in node.names:  # `from lineage.x import y` where y is a module imports it
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m == FACADE or m.startswith(FACADE + ".")}


def graph() -> dict[str, set[str]]:
    return {m: set() if m == FACADE else imports(m) - {m} for m in MODULES}


def test_every_module_has_a_stage() -> None:
    for module in MODULES:
        stage(module)


def test_no_module_imports_a_higher_stage() -> None:
    upward = [
        f"{m} (stage {stage(m)}) imports {t} (stage {stage(t)})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if stage(t) > stage(m)
    ]
    assert upward == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, …, a], or None (depth-first search, three colours)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycle() -> None:
    assert find_cycle(graph()) is None


def test_modules_are_short_or_say_why() -> None:
    long = [
        f"{m}: {n} lines"
        for m, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
        and WHY_LONG not in "\n".join(path.read_text(encoding="utf-8").splitlines()[:30])
    ]
    assert long == []


def function_lengths() -> Iterator[tuple[str, str, int]]:
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                first = body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    body = body[1:]  # the docstring
                if body:
                    yield module, node.name, (body[-1].end_lineno or 0) - body[0].lineno + 1


def test_functions_are_short_or_listed() -> None:
    lengths = {(m, f): n for m, f, n in function_lengths()}
    long = {key: n for key, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert set(long) <= set(LONG_FUNCTIONS), f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    stale = [key for key in LONG_FUNCTIONS if lengths.get(key, 0) <= MAX_FUNCTION_LINES]
    assert stale == [], "listed as long but no longer are (or gone): remove them"


def readme_stages() -> dict[str, int]:
    """Module -> stage from README.md's architecture table (rows `| N | `pkg/` | `mod`, … |`)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|\s*`([\w/]+)`\s*\|([^|]*)\|", line)
        if row:
            package = row.group(2).strip("/").replace("/", ".")
            for name in re.findall(r"`([\w/]+)`", row.group(3)):
                out[f"{package}.{name.strip('/').replace('/', '.')}"] = int(row.group(1))
    return out


PACKAGES = sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m != FACADE)


def test_readme_architecture_table_states_these_stages() -> None:
    documented = readme_stages()
    # Every module but the package inits, listed by name; the CLI as one entry (`cli/`).
    wanted = {m for m in MODULES if m not in PACKAGES and not m.startswith("lineage.cli.")}
    wanted |= {"lineage.cli"} - {FACADE}
    assert sorted(wanted - {FACADE} - set(documented)) == [], "missing from README's table"
    assert sorted(set(documented) - set(MODULES)) == [], "README names modules that do not exist"
    wrong = {m: s for m, s in documented.items() if stage(m) != s}
    assert wrong == {}, "README's stage differs from STAGES"


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "lineage.cli"])
def test_stage_packages_say_where_they_sit(package: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text(encoding="utf-8"))) or ""
    assert doc.startswith(f"Stage {stage(package)}, "), f"{package}: say its stage first"

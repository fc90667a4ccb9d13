"""``lineage db check``: what should hold of a registry, one check each.

Each check reads the registry and returns findings (empty: it holds). The graph is read afresh
from the database, never from a copy in memory. Checks only read; a finding says what is wrong
and where, so that a person (or a later ``--repair``) can act on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from lineage.registry.ancestry import load_graph
from lineage.registry.db import EdgeRow, ModelRow
from lineage.registry.modelfiles import verify_files
from lineage.registry.store import Registry


@dataclass(frozen=True)
class Finding:
    check: str  # the check that found it
    subject: str  # what it is about: "model g2", "edge 7 (3 -> 9)"
    problem: str  # what is wrong, in one line
    path: str | None = None  # what `--repair` deletes (temporaries, orphan folders)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def cycles(reg: Registry) -> list[Finding]:
    """The edges make no cycle (lineage refuses one; older versions or psql may not have)."""
    with reg._read() as s:
        graph = load_graph(s)
    return [
        Finding("cycles", f"models {', '.join(loop)}", f"cycle {' -> '.join([*loop, loop[0]])}")
        for loop in graph.cycles()
    ]


def dangling_edges(reg: Registry) -> list[Finding]:
    """Both ends of every edge are registered models (foreign keys can be switched off)."""
    parent, child = aliased(ModelRow), aliased(ModelRow)
    query = (
        select(EdgeRow.id, EdgeRow.parent_id, EdgeRow.child_id, parent.id, child.id)
        .outerjoin(parent, parent.id == EdgeRow.parent_id)
        .outerjoin(child, child.id == EdgeRow.child_id)
        .where(parent.id.is_(None) | child.id.is_(None))
        .order_by(EdgeRow.id)
    )
    with reg._read() as s:
        rows = s.execute(query).all()
    return [
        Finding(
            "dangling-edges",
            f"edge {edge} ({p} -> {c})",
            "no model with id " + " or ".join(str(i) for i, ok in ((p, pk), (c, ck)) if ok is None),
        )
        for edge, p, c, pk, ck in rows
    ]


def _missing(check: str, kind: str, items: Iterable[tuple[str, str]]) -> list[Finding]:
    return [
        Finding(check, f"{kind} {name}", f"{path} does not exist")
        for name, path in items
        if not Path(path).exists()
    ]


def model_files(reg: Registry) -> list[Finding]:
    """Every model's (and PEFT adapter's) directory exists under this machine's storage root."""
    return _missing("model-files", "model", ((m.name, m.path) for m in reg.models()))


def tokenizer_files(reg: Registry) -> list[Finding]:
    """Every registered tokenizer's directory exists."""
    return _missing("tokenizer-files", "tokenizer", ((t.name, t.path) for t in reg.tokenizers()))


def cache_files(reg: Registry) -> list[Finding]:
    """Every teacher logit cache's folder exists."""
    items = ((f"{c.teacher}/{c.domain or '-'} top-{c.top_k}", c.path) for c in reg.caches())
    return _missing("cache-files", "cache", items)


def shard_files(reg: Registry) -> list[Finding]:
    """Every domain's text shards exist."""
    return _missing(
        "shard-files", "shard", ((f"{s.domain}/{s.name}", s.path) for s in reg.shards())
    )


def model_checksums(reg: Registry) -> list[Finding]:
    """Every model's config and weights as recorded at registration (size and mtime; a file
    whose mtime changed is hashed again): ``lineage model verify NAME`` hashes every file."""
    found = []
    for model in reg.models():
        if model.files is not None and Path(model.path).exists():
            found += [
                Finding("model-checksums", f"model {model.name}", problem)
                for problem in verify_files(Path(model.path), model.files, full=False)
            ]
    return found


CHECKS: dict[str, Callable[[Registry], list[Finding]]] = {
    "cycles": cycles,
    "dangling-edges": dangling_edges,
    "model-files": model_files,
    "tokenizer-files": tokenizer_files,
    "cache-files": cache_files,
    "shard-files": shard_files,
    "model-checksums": model_checksums,
}


def run_checks(reg: Registry) -> dict[str, list[Finding]]:
    """Every check's findings, by check name (in ``CHECKS`` order)."""
    return {name: check(reg) for name, check in CHECKS.items()}

"""The model family as a picture or data: text tree, Graphviz DOT, Mermaid and JSON (pure)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

from lineage.registry.entities import Edge, Model

FORMATS = ("text", "dot", "mermaid", "json")
EDGE_STYLE = {"ki": "dashed", "grow": "bold", "adapt": "solid", "adapter": "dotted"}


def _label(model: Model) -> str:
    shape = f"{model.layers}x{model.d_model}"
    return f"{model.name} ({model.family}, {shape}, {model.n_params / 1e6:.2f}M)"


def to_text(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    """An indented tree from every root; a model with several parents appears under each.

    Models on a cycle (which the registry refuses, but an old client may have written) have no
    root above them: they are drawn from the first of them, and the edge that closes the
    cycle ends in a marked repeat instead of going round again.
    """
    by_name = {m.name: m for m in models}
    kids: dict[str, list[Edge]] = defaultdict(list)
    has_parent = set()
    for edge in edges:
        kids[edge.parent].append(edge)
        has_parent.add(edge.child)
    lines: list[str] = []
    drawn: set[str] = set()

    def visit(name: str, prefix: str, via: str, path: frozenset[str]) -> None:
        drawn.add(name)
        if name in path:
            lines.append(f"{prefix}{via}{name}  ↻ cycle")
            return
        lines.append(f"{prefix}{via}{_label(by_name[name])}")
        for edge in sorted(kids[name], key=lambda e: e.child):
            visit(edge.child, prefix + "    ", f"└─[{edge.kind}]─ ", path | {name})

    for model in models:
        if model.name not in has_parent:
            visit(model.name, "", "", frozenset())
    for model in models:  # on or below a cycle: no root reaches them
        if model.name not in drawn:
            visit(model.name, "", "", frozenset())
    return "\n".join(lines)


def _node_ids(models: Sequence[Model], edges: Sequence[Edge]) -> dict[str, str]:
    """Node ids n0, n1, … by first appearance: no two names can share one (``g1-init`` and
    ``g1_init`` would, were ids made from names); the name goes into the label."""
    ids: dict[str, str] = {}
    for name in [*(m.name for m in models), *(n for e in edges for n in (e.parent, e.child))]:
        ids.setdefault(name, f"n{len(ids)}")
    return ids


def _dot_text(text: str) -> str:
    """``text`` inside a DOT double-quoted string: backslash and quote escaped, a newline as
    DOT's ``\\n``."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    ids, by_name = _node_ids(models, edges), {m.name: m for m in models}
    out = ["digraph lineage {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for name, node in ids.items():
        m = by_name.get(name)
        shape = f"\\n{_dot_text(m.family)} {m.layers}x{m.d_model}" if m else ""
        out.append(f'  {node} [label="{_dot_text(name)}{shape}"];')
    for e in edges:
        style = EDGE_STYLE.get(e.kind, "solid")
        out.append(
            f'  {ids[e.parent]} -> {ids[e.child]} [label="{_dot_text(e.kind)}", style={style}];'
        )
    out.append("}")
    return "\n".join(out)


# Mermaid entity codes for what would end a quoted label or read as markup; "#" starts every
# code, so it is replaced first.
MERMAID_CODES = (("#", "#35;"), ('"', "#quot;"), ("&", "#amp;"), ("<", "#lt;"), (">", "#gt;"))


def _mermaid_text(text: str) -> str:
    """``text`` inside a quoted Mermaid label."""
    for char, code in MERMAID_CODES:
        text = text.replace(char, code)
    return text


def to_mermaid(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    ids, by_name = _node_ids(models, edges), {m.name: m for m in models}
    out = ["flowchart TD"]
    for name, node in ids.items():
        m = by_name.get(name)
        shape = f"<br/>{_mermaid_text(m.family)} {m.layers}x{m.d_model}" if m else ""
        out.append(f'  {node}["{_mermaid_text(name)}{shape}"]')
    for e in edges:
        arrow = "-.->" if e.kind == "ki" else "-->"
        out.append(f"  {ids[e.parent]} {arrow}|{_mermaid_text(e.kind)}| {ids[e.child]}")
    return "\n".join(out)


def to_json(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    return json.dumps(
        {"models": [m.to_dict() for m in models], "edges": [e.to_dict() for e in edges]}, indent=2
    )


def render(models: Sequence[Model], edges: Sequence[Edge], fmt: str) -> str:
    renderers = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid, "json": to_json}
    if fmt not in renderers:
        raise ValueError(f"unknown graph format {fmt!r}; formats: {', '.join(FORMATS)}")
    return renderers[fmt](models, edges)

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
    """An indented tree from every root; a model with several parents appears under each."""
    by_name = {m.name: m for m in models}
    kids: dict[str, list[Edge]] = defaultdict(list)
    has_parent = set()
    for edge in edges:
        kids[edge.parent].append(edge)
        has_parent.add(edge.child)
    lines: list[str] = []

    def visit(name: str, prefix: str, via: str, seen: frozenset[str]) -> None:
        lines.append(f"{prefix}{via}{_label(by_name[name])}")
        if name in seen:  # unreachable for a DAG; kept as a guard against bad data
            return
        for edge in sorted(kids[name], key=lambda e: e.child):
            visit(edge.child, prefix + "    ", f"└─[{edge.kind}]─ ", seen | {name})

    for model in models:
        if model.name not in has_parent:
            visit(model.name, "", "", frozenset())
    return "\n".join(lines)


def to_dot(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    out = ["digraph lineage {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for m in models:
        out.append(f'  "{m.name}" [label="{m.name}\\n{m.family} {m.layers}x{m.d_model}"];')
    for e in edges:
        style = EDGE_STYLE.get(e.kind, "solid")
        out.append(f'  "{e.parent}" -> "{e.child}" [label="{e.kind}", style={style}];')
    out.append("}")
    return "\n".join(out)


def _mermaid_id(name: str) -> str:
    return "m_" + "".join(c if c.isalnum() else "_" for c in name)


def to_mermaid(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    out = ["flowchart TD"]
    for m in models:
        out.append(f'  {_mermaid_id(m.name)}["{m.name}<br/>{m.family} {m.layers}x{m.d_model}"]')
    for e in edges:
        arrow = "-.->" if e.kind == "ki" else "-->"
        out.append(f"  {_mermaid_id(e.parent)} {arrow}|{e.kind}| {_mermaid_id(e.child)}")
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

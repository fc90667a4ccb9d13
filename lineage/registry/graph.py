"""The model family as a picture or data: text tree, Graphviz DOT, Mermaid and JSON (pure).

Every format shows each model's generation (``lineage.registry.ancestry.generations``: G1 has
inherited from nobody; a ki or grow edge makes the next generation, adapt and adapter keep it)
and each edge's kind. The DOT text is what the lineage picture is drawn from
(``lineage.report.plots.lineage_picture``, Graphviz's layered layout).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lineage.registry.ancestry import generations
from lineage.registry.entities import Edge, Model

FORMATS = ("text", "dot", "mermaid", "json")
PICTURE_FORMATS = ("png", "svg")  # drawn from the DOT text by Graphviz (lineage.report.plots)
# Edge kind -> (DOT style, colour): KI dashed like a teacher's guidance, growth bold.
EDGE_STYLE = {
    "ki": ("dashed", "#1f77b4"),
    "grow": ("bold", "#2ca02c"),
    "adapt": ("solid", "#555555"),
    "adapter": ("dotted", "#9467bd"),
}
# Node fill per generation (G1, G2, ...; the last colour repeats for deeper ones).
GENERATION_FILL = ("#ffffff", "#e8f1fb", "#fdf2e3", "#eaf7ea", "#f4ecf8")


def family_generations(models: Sequence[Model], edges: Sequence[Edge]) -> dict[str, int]:
    """Generation of every model listed or named by an edge (1 without parents; 0 on or below
    a cycle, which the registry refuses but an old client may have written)."""
    found = generations((e.parent, e.child, e.kind) for e in edges)
    return {m.name: found.get(m.name, 1) for m in models} | found


def _generation(generation: int) -> str:
    return f"G{generation}" if generation else "G?"  # 0: on or below a cycle


def _label(model: Model, generation: int) -> str:
    shape = f"{model.layers}x{model.d_model}"
    size = f"{model.n_params / 1e6:.2f}M"
    return f"{model.name} {_generation(generation)} ({model.family}, {shape}, {size})"


def to_text(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    """An indented tree from every root; a model with several parents appears under each.

    Models on a cycle (which the registry refuses, but an old client may have written) have no
    root above them: they are drawn from the first of them, and the edge that closes the
    cycle ends in a marked repeat instead of going round again.
    """
    by_name = {m.name: m for m in models}
    gen = family_generations(models, edges)
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
        lines.append(f"{prefix}{via}{_label(by_name[name], gen[name])}")
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


def _dot_node(model: Model | None, name: str, generation: int) -> str:
    """A node's DOT attributes: the name, then the generation, family and shape; filled by
    generation."""
    detail = _generation(generation)
    if model is not None:
        detail += f" · {_dot_text(model.family)} {model.layers}x{model.d_model}"
    fill = GENERATION_FILL[min(generation, len(GENERATION_FILL)) - 1] if generation else "#eeeeee"
    return f'label="{_dot_text(name)}\\n{detail}", fillcolor="{fill}"'


def to_dot(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    """Graphviz DOT, top to bottom; edges styled and coloured by kind (legend in the label)."""
    ids, by_name = _node_ids(models, edges), {m.name: m for m in models}
    gen = family_generations(models, edges)
    legend = " &#183; ".join(
        f'<font color="{color}">{kind} ({style})</font>'
        for kind, (style, color) in EDGE_STYLE.items()
    )
    out = [
        "digraph lineage {",
        "  rankdir=TB;",
        f'  graph [fontname="Helvetica", fontsize=10, labelloc=b, label=<G1, G2, …: generation &#183; {legend}>];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for name, node in ids.items():
        out.append(f"  {node} [{_dot_node(by_name.get(name), name, gen[name])}];")
    for e in edges:
        style, color = EDGE_STYLE.get(e.kind, ("solid", "#000000"))
        out.append(
            f'  {ids[e.parent]} -> {ids[e.child]} [label="{_dot_text(e.kind)}", style={style}, '
            f'color="{color}", fontcolor="{color}"];'
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
    gen = family_generations(models, edges)
    out = ["flowchart TD"]
    for name, node in ids.items():
        m = by_name.get(name)
        shape = f" · {_mermaid_text(m.family)} {m.layers}x{m.d_model}" if m else ""
        out.append(f'  {node}["{_mermaid_text(name)}<br/>{_generation(gen[name])}{shape}"]')
    for e in edges:
        arrow = "-.->" if e.kind == "ki" else "-->"
        out.append(f"  {ids[e.parent]} {arrow}|{_mermaid_text(e.kind)}| {ids[e.child]}")
    return "\n".join(out)


def to_data(models: Sequence[Model], edges: Sequence[Edge]) -> dict[str, Any]:
    """Models (each with its ``generation``) and edges as plain data."""
    gen = family_generations(models, edges)
    return {
        "models": [m.to_dict() | {"generation": gen[m.name]} for m in models],
        "edges": [e.to_dict() for e in edges],
    }


def to_json(models: Sequence[Model], edges: Sequence[Edge]) -> str:
    return json.dumps(to_data(models, edges), indent=2, default=str)


def render(models: Sequence[Model], edges: Sequence[Edge], fmt: str) -> str:
    renderers = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid, "json": to_json}
    if fmt not in renderers:
        raise ValueError(f"unknown graph format {fmt!r}; formats: {', '.join(FORMATS)}")
    return renderers[fmt](models, edges)

from datetime import UTC, datetime

from lineage.registry.entities import Edge, Model
from lineage.registry.graph import render, to_text

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def model(name: str) -> Model:
    return Model(
        0, name, f"/m/{name}", "roberta", "mlm", 2, 64, 2, 256, 300, 1000, "f", [], "", NOW
    )


def edge(parent: str, child: str, kind: str) -> Edge:
    return Edge(0, parent, child, kind, {"k": 1}, "run1", NOW)


def test_text_tree_lists_a_multi_parent_child_under_each_parent() -> None:
    models = [model(n) for n in ("g1", "bio", "g2")]
    edges = [edge("g1", "g2", "ki"), edge("bio", "g2", "ki")]
    lines = to_text(models, edges).splitlines()
    assert lines[0].startswith("g1") and lines[2].startswith("bio")
    assert sum("g2" in line for line in lines) == 2


def test_formats_escape_names_and_mark_kinds() -> None:
    models = [model("a-b.c"), model("d")]
    edges = [edge("a-b.c", "d", "grow")]
    assert "n0 -->|grow| n1" in render(models, edges, "mermaid")
    assert 'n0["a-b.c<br/>G1 · roberta 2x64"]' in render(models, edges, "mermaid")
    assert 'n1["d<br/>G2 · roberta 2x64"]' in render(models, edges, "mermaid")
    assert "n0 -> n1" in render(models, edges, "dot") and "style=bold" in render(
        models, edges, "dot"
    )


def test_names_that_differ_only_in_punctuation_stay_apart() -> None:
    """Ids made from names (g1-init, g1_init -> g1_init) merged two models into one node."""
    models = [model("g1-init"), model("g1_init"), model("g2")]
    edges = [edge("g1-init", "g2", "grow"), edge("g1_init", "g2", "ki")]
    mermaid = render(models, edges, "mermaid").splitlines()
    assert mermaid[1:4] == [
        '  n0["g1-init<br/>G1 · roberta 2x64"]',
        '  n1["g1_init<br/>G1 · roberta 2x64"]',
        '  n2["g2<br/>G2 · roberta 2x64"]',
    ]
    assert mermaid[4:] == ["  n0 -->|grow| n2", "  n1 -.->|ki| n2"]
    dot = render(models, edges, "dot")
    assert '  n0 [label="g1-init\\nG1 · roberta 2x64", fillcolor="#ffffff"];' in dot
    assert '  n1 [label="g1_init\\nG1 · roberta 2x64", fillcolor="#ffffff"];' in dot
    assert "  n0 -> n2" in dot and "  n1 -> n2" in dot


def test_quotes_and_backslashes_are_escaped() -> None:
    name = 'say "hi" \\ <b>#1</b> & co'
    models, edges = [model(name), model("d")], [edge(name, "d", "adapt")]
    dot = render(models, edges, "dot")
    assert '  n0 [label="say \\"hi\\" \\\\ <b>#1</b> & co\\nG1 · roberta 2x64", ' in dot
    mermaid = render(models, edges, "mermaid")
    assert (
        '  n0["say #quot;hi#quot; \\ #lt;b#gt;#35;1#lt;/b#gt; #amp; co<br/>G1 · roberta 2x64"]'
        in mermaid
    )
    assert "n0 -->|adapt| n1" in mermaid


def test_edges_to_models_not_listed_still_get_their_own_node() -> None:
    dot = render([model("a")], [edge("a", "outside", "adapt")], "dot")
    assert '  n1 [label="outside\\nG1", fillcolor="#ffffff"];' in dot and "  n0 -> n1" in dot

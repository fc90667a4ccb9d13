from datetime import UTC, datetime

from lineage.registry.entities import Edge, Model
from lineage.registry.graph import render, to_text
from lineage.registry.modelcard import render_card

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
    assert "m_a_b_c -->|grow| m_d" in render(models, edges, "mermaid")
    assert "style=bold" in render(models, edges, "dot")


def test_card_maps_kinds_onto_hub_relations() -> None:
    card = render_card(
        model("child"), [edge("base", "child", "adapter"), edge("t", "child", "ki")], 2
    )
    assert "base_model:\n- base\nbase_model_relation: adapter" in card
    assert "lineage_teachers:\n- t" in card and "Generation 2" in card
    finetune = render_card(model("c"), [edge("p", "c", "adapt")], 2)
    assert "base_model_relation: finetune" in finetune
    assert "base_model" not in render_card(model("s"), [], 1)

"""Model cards: the Hub's metadata keys through huggingface_hub, valid YAML for any name, Hub
ids only where recorded, KI teachers as teachers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from lineage.errors import LineageError
from lineage.registry.entities import Edge, Model
from lineage.registry.modelcard import CardContext, check_hub_id, render_card
from lineage.workspace import Workspace

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def model(name: str, objective: str = "mlm", domains: tuple[str, ...] = ()) -> Model:
    family = "roberta" if objective == "mlm" else "gpt2"
    return Model(
        0,
        name,
        f"/m/{name}",
        family,
        objective,
        2,
        64,
        2,
        256,
        300,
        1000,
        "f",
        list(domains),
        "",
        NOW,
    )


def edge(parent: str, child: str, kind: str) -> Edge:
    return Edge(0, parent, child, kind, {"k": 1}, "run1", NOW)


def meta(card: str) -> dict:
    head = card.split("---\n")[1]
    return yaml.safe_load(head)


def test_card_maps_kinds_onto_hub_relations_only_for_parents_on_the_hub() -> None:
    parents = [edge("base", "child", "adapter"), edge("t", "child", "ki")]
    ctx = CardContext(2, parent_hub_ids={"base": "org/base"})
    data = meta(render_card(model("child"), parents, ctx))
    assert data["base_model"] == ["org/base"] and data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "fill-mask"
    assert data["lineage"]["teachers"] == ["t"] and data["lineage"]["generation"] == 2
    assert data["lineage"]["parents"] == [{"name": "base", "kind": "adapter"}]
    local = meta(render_card(model("c", "clm"), [edge("gpt2", "c", "adapt")], CardContext(1)))
    assert "base_model" not in local and "base_model_relation" not in local  # a local "gpt2"
    assert local["library_name"] == "transformers" and local["pipeline_tag"] == "text-generation"
    assert local["lineage"]["parents"] == [{"name": "gpt2", "kind": "adapt"}]
    assert local["license"] == "other" and "datasets" not in local


@pytest.mark.parametrize(
    "name", ["exp: v2", 'say "hi"', "it's", "ünïcødé-模型", "- dash", "#1 [x]"]
)
def test_any_name_gives_valid_yaml_that_the_hub_reads(name: str, tmp_path: Path) -> None:
    parents = [edge(name, "child", "adapt"), edge(f"{name} t", "child", "ki")]
    card = render_card(model("child", domains=(name,)), parents, CardContext(2, license="mit"))
    data = meta(card)
    assert data["lineage"]["parents"] == [{"name": name, "kind": "adapt"}]
    assert data["lineage"]["teachers"] == [f"{name} t"] and data["lineage"]["domains"] == [name]
    path = tmp_path / "README.md"
    path.write_text(card, encoding="utf-8")
    loaded = ModelCard.load(path)
    assert loaded.data.license == "mit" and loaded.data.lineage["teachers"] == [f"{name} t"]


def test_hub_ids_are_checked() -> None:
    assert check_hub_id("org/name") == "org/name"
    for bad in ("exp: v2", "a/b/c", "two words"):
        with pytest.raises(LineageError, match="Hub id"):
            check_hub_id(bad)


def test_workspace_card_cites_hub_parents_and_datasets(ws: Workspace, make_model_dir) -> None:
    """A model registered with --hub-id is its child's base_model; a domain whose card has a
    hub_id is a dataset; the licence comes from [cards]."""
    reg = ws.registry
    reg.add_domain("legal", card={"hub_id": "org/legal-corpus"})
    reg.add_domain("local")
    base = ws.register_model(make_model_dir("base"), hub_id="org/base-model")
    child = ws.register_model(make_model_dir("child"), domains=["legal", "local"])
    teacher = ws.register_model(make_model_dir("teacher"))
    reg.add_edge(base.name, child.name, "adapt")
    reg.add_edge(teacher.name, child.name, "ki")
    path = ws.write_model_card(child.name)
    card = ModelCard.load(path)
    assert card.data.base_model == ["org/base-model"]
    assert card.data.base_model_relation == "finetune"
    assert card.data.datasets == ["org/legal-corpus"]
    assert card.data.license == "other"
    assert card.data.lineage["teachers"] == ["teacher"]
    assert card.data.lineage["generation"] == 2  # taught by a G1 teacher
    assert "**KI teacher** `teacher`" in card.text
    with pytest.raises(LineageError, match="Hub id"):
        ws.register_model(make_model_dir("x"), name="x", hub_id="not a hub id")
    assert not reg.has_model("x")

"""Growth in a workspace: `grow_workspace_model` and `lineage grow` leave a registered model,
a grow edge, evaluations and a card; FPI keeps the source's loss; bad input writes nothing;
a grown model can learn from its source by KI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lineage.cli import app
from lineage.errors import LineageError
from lineage.growth import GrowthRecord
from lineage.lifecycle import GROWTH_FILE, grow_workspace_model
from lineage.models.modeling import load_model
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, run_training
from lineage.workspace import Workspace

runner = CliRunner()


def grow(ws: Workspace, new: str = "big", **kw: object) -> tuple:
    args = {"layers": 2, "hidden": 64, "block_size": 32, "max_blocks": 8} | kw
    return grow_workspace_model(ws, "teacher-lit", new, **args)  # type: ignore[arg-type]


def test_fpi_width_growth_keeps_the_source_loss_and_is_registered(family_ws: Workspace) -> None:
    model, report = grow(family_ws)
    reg = family_ws.registry
    # 32 -> 64 is an integer multiple: FPI is function-preserving (papers/004 Table 1).
    assert report.grown_eval.loss == pytest.approx(report.source_eval.loss, abs=1e-4)
    assert report.grown_eval.n_tokens == report.source_eval.n_tokens > 0
    assert (model.layers, model.d_model, model.heads, model.d_ffn) == (2, 64, 4, 128)
    assert model.domains == reg.model("teacher-lit").domains == ["literature"]
    assert model.tokenizer_fingerprint == reg.model("teacher-lit").tokenizer_fingerprint
    (edge,) = reg.edges("big")
    assert (edge.parent, edge.child, edge.kind) == ("teacher-lit", "big", "grow")
    assert edge.params["method"] == "fpi" and edge.params["seed"] == 0
    assert (
        edge.params["source_shape"]["hidden"] == 32 and edge.params["target_shape"]["hidden"] == 64
    )
    assert edge.params["maps"]["new_units"]["hidden"] == 32
    assert edge.params["maps"]["layers"] == [0, 1]
    folder = Path(model.path)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    record = GrowthRecord.from_json((folder / GROWTH_FILE).read_text())
    assert record == report.record and len(record.maps["hidden"]) == 64
    card = (folder / "README.md").read_text()
    # base_model names Hub ids only (teacher-lit has none): the lineage section names the parent
    assert "base_model" not in card and "**grow from** `teacher-lit`" in card
    assert "lineage:\n  generation: 2" in card
    evals = {(e.model, e.domain, e.step): e for e in reg.evaluations()}
    assert evals[("big", "literature", 0)].loss == pytest.approx(report.grown_eval.loss)
    assert evals[("teacher-lit", "literature", 0)].loss == pytest.approx(report.source_eval.loss)
    assert reg.generation("big") == 2


def test_saved_grown_model_equals_growing_in_memory(family_ws: Workspace) -> None:
    from lineage.growth import grow_model

    model, _ = grow(family_ws, layers=3, hidden=48, method="aki", seed=7)
    source = load_model(Path(family_ws.registry.model("teacher-lit").path))
    expected, _ = grow_model(source, layers=3, hidden=48, method="aki", seed=7)
    saved = load_model(Path(model.path))
    for (name, a), b in zip(
        expected.state_dict().items(), saved.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_cli_grow_prints_source_and_grown_loss(family_ws: Workspace) -> None:
    root = str(family_ws.root)
    family_ws.close()  # the CLI opens its own connection
    args = ["-w", root, "grow", "teacher-lit", "deep", "--layers", "4", "--hidden", "64"]
    args += ["--method", "aki", "--seed", "3", "--block-size", "32", "--max-blocks", "4"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stderr carries the weight-loading progress
    assert (data["source"], data["grown"], data["method"], data["seed"]) == (
        "teacher-lit",
        "deep",
        "aki",
        3,
    )
    assert data["target_shape"]["layers"] == 4 and data["model"]["layers"] == 4
    assert data["grown_loss"] > 0 and data["source_loss"] > 0
    assert isinstance(data["warnings"], list)  # growth_warnings, also printed on stderr
    result = runner.invoke(app, ["-w", root, "grow", "teacher-lit", "wide", "--layers", "2"])
    assert result.exit_code == 2  # --hidden is required: a usage error
    table = ["-w", root, "grow", "teacher-lit", "wide", "--layers", "2", "--hidden", "64"]
    table += ["--domain", "cs", "--block-size", "32", "--max-blocks", "4"]
    result = runner.invoke(app, table)
    assert result.exit_code == 0, result.output
    assert "loss on cs" in result.output and "teacher-lit" in result.output
    bad = runner.invoke(app, [*table[:7], "--hidden", "64", "--method", "magic"])
    assert bad.exit_code == 2 and "magic" in bad.output
    with Workspace.open(root) as ws:
        assert {e.kind for e in ws.registry.edges("deep")} == {"grow"}
        assert ws.registry.model("wide").domains == ["literature"]


def _electra(ws: Workspace) -> None:
    """Register a model of a family growth has no map for (ELECTRA)."""
    from transformers import ElectraConfig, ElectraForMaskedLM

    from lineage.corpora.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(ws.registry.model("teacher-lit").path))
    config = ElectraConfig(
        vocab_size=len(tok),
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    out = ws.root / "outside" / "electra"
    ElectraForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    ws.register_model(out, name="electra", domains=["literature"])


@pytest.mark.parametrize(
    ("source", "new", "kw", "match"),
    [
        ("nobody", "g", {}, "nobody"),
        ("teacher-lit", "student", {}, "already registered"),
        ("teacher-lit", "g", {"hidden": 16}, "shrinks"),
        ("teacher-lit", "g", {"layers": 1}, "shrinks"),
        ("teacher-lit", "g", {"method": "magic"}, "unknown growth method"),
        ("teacher-lit", "g", {"sample_domain": "nowhere"}, "nowhere"),
        ("student", "g", {"hidden": 24}, "shrinks"),  # unscored growth checks shapes too
        ("electra", "g", {}, "growth supports model families"),
    ],
)
def test_bad_growth_is_refused_and_writes_nothing(
    family_ws: Workspace, source: str, new: str, kw: dict, match: str
) -> None:
    _electra(family_ws)
    reg = family_ws.registry
    before = (sorted(p.name for p in family_ws.models_dir.iterdir()), len(reg.models()))
    edges, evals = len(reg.edges()), len(reg.evaluations())
    args = {"layers": 2, "hidden": 64, "block_size": 32} | kw
    with pytest.raises(LineageError, match=match):
        grow_workspace_model(family_ws, source, new, **args)  # type: ignore[arg-type]
    after = (sorted(p.name for p in family_ws.models_dir.iterdir()), len(reg.models()))
    assert after == before
    assert (len(reg.edges()), len(reg.evaluations())) == (edges, evals)


def test_grown_model_learns_from_its_source_by_ki(family_ws: Workspace) -> None:
    grow(family_ws, new="grown", layers=3, hidden=64, method="aki")
    config = TrainConfig(
        steps=4, batch_size=4, lr=1e-3, eval_every=0, eval_blocks=4, checkpoint_every=0, log_every=2
    )
    outcome = run_training(
        family_ws,
        TrainJob(
            student="grown",
            output="grown-ki",
            domains=("literature",),
            strategy="ki",
            teachers=("teacher-lit",),
            block_size=32,
            config=config,
        ),
        progress=False,
    )
    reg = family_ws.registry
    assert outcome.model is not None and outcome.result.step == 4
    assert {(e.parent, e.child, e.kind) for e in reg.edges("grown")} >= {
        ("teacher-lit", "grown", "grow"),
        ("grown", "grown-ki", "adapt"),
    }
    kinds = {(e.parent, e.kind) for e in reg.edges("grown-ki")}
    assert kinds == {("grown", "adapt"), ("teacher-lit", "ki")}
    ancestors = {r.name for r in reg.ancestors("grown-ki")}
    assert ancestors == {"grown", "teacher-lit"}


def test_grow_without_a_domain_grows_registers_and_says_it_did_not_score(
    family_ws: Workspace,
) -> None:
    root = str(family_ws.root)
    assert family_ws.registry.model("student").domains == []  # trained on nothing yet
    family_ws.close()
    args = ["-w", root, "grow", "student", "student-big", "--layers", "3", "--hidden", "96"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not scored" in result.output and "trained on no registered domain" in result.output
    result = runner.invoke(app, [*args[:4], "student-big2", *args[5:], "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["domain"] is None and "no registered domain" in data["unscored"]
    assert "grown_loss" not in data and data["model"]["layers"] == 3
    with Workspace.open(root) as ws:
        assert {e.kind for e in ws.registry.edges("student-big")} == {"grow"}
        assert [e for e in ws.registry.evaluations() if e.model.startswith("student")] == []
        # a named domain still scores; an unknown one is refused before anything is written
        _, report = grow(ws, "scored", sample_domain="cs")
        assert report.domain == "cs" and report.grown_eval is not None
        with pytest.raises(LineageError, match="no domain named 'nope'"):
            grow(ws, "never", sample_domain="nope")
        assert not ws.registry.has_model("never")

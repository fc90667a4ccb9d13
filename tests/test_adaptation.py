"""Continual adaptation in a real workspace: KI through the router, replay and self-KI, LoRA
adapters and the CLI leave the right models, edges, evaluations and MLflow records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from lineage.cli import app
from lineage.continual.adaptation import AdaptJob, adapt, before_after_matrix
from lineage.continual.adapters import load_for_inference
from lineage.continual.forgetting import domain_forgetting
from lineage.corpora.batches import MixtureSampler
from lineage.errors import LineageError
from lineage.routing.router import regret
from lineage.train.assign import replay_weights
from lineage.train.lora import LoraSpec
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, run_training
from lineage.workspace import Workspace

CONFIG = TrainConfig(
    steps=4, batch_size=4, lr=2e-3, eval_every=0, eval_blocks=4, checkpoint_every=0, log_every=2
)


def adapt_job(**kw: object) -> AdaptJob:
    base = dict(model="teacher-lit", domains=("cs",), block_size=32, config=CONFIG)
    return AdaptJob(**(base | kw))  # type: ignore[arg-type]


@pytest.fixture
def with_cs_expert(family_ws: Workspace) -> Workspace:
    """family_ws plus a small cs expert (the router's teacher for cs shards): trained until it
    beats the cs shards' unigram perplexity, or the router would rightly refuse it."""
    expert = dataclasses.replace(CONFIG, steps=60, batch_size=8, lr=5e-3)
    job = TrainJob("student", "expert-cs", ("cs",), block_size=32, config=expert)
    run_training(family_ws, job, progress=False)
    return family_ws


def _latest(ws: Workspace, model: str) -> dict[str, float]:
    return {e.domain: e.ppl for e in ws.registry.evaluations(model=model)}


@pytest.mark.integration
def test_ki_adaptation_routes_teachers_and_logs_forgetting(with_cs_expert: Workspace) -> None:
    ws = with_cs_expert
    with pytest.raises(LineageError, match=r"--no-build-caches: .* expert-cs on cs/"):
        adapt(ws, adapt_job(build_caches=False), progress=False)  # routed, nothing built
    assert ws.registry.caches() == [] and not ws.registry.has_model("teacher-lit-ki-cs")
    (run,) = adapt(ws, adapt_job(), progress=False)
    reg = ws.registry
    listed = run.outcome.caches  # listed (with estimates) before they were built
    assert {c["teacher"] for c in listed} == {"expert-cs"}
    assert all(not c["existing"] and c["seconds"] > 0 for c in listed)
    assert {c["path"] for c in listed} == {c.path for c in reg.caches()}
    assert run.model is not None and run.model.name == "teacher-lit-ki-cs"
    assert run.model.domains == ["literature", "cs"]
    edges = {(e.parent, e.kind): e for e in reg.edges(run.model.name)}
    scores = [c for s in reg.plan(str(run.plan)).spec["shards"] for c in s["scores"]]
    reasons = [(c["model"], c["ppl"], c["reason"]) for c in scores]
    assert set(edges) == {("teacher-lit", "adapt"), ("expert-cs", "ki")}, reasons
    params = edges["teacher-lit", "adapt"].params
    assert params["strategy"] == "ki" and params["replay"] == 0 and params["self_ki"] is False
    assert edges["expert-cs", "ki"].params["plan"] == run.plan
    plan = reg.plan(run.plan)  # the router chose the cs expert where it measured better than
    # the student and than the shard's unigram model; elsewhere self-learning, with reasons
    shards = plan.spec["shards"]
    assert "expert-cs" in {s["teacher"] for s in shards} <= {"expert-cs", None}
    shown = CliRunner().invoke(app, ["-w", str(ws.root), "plan", "show", str(run.plan)])
    assert shown.exit_code == 0 and "regret" in shown.output  # measured: vs the oracle
    taught = [s for s in shards if s["teacher"] == "expert-cs"]
    assert all(regret(s["teacher"], s["scores"]) == 0.0 for s in taught)  # the only eligible
    assert "+0.000" in shown.output
    assert all(c["reason"] for s in shards if s["teacher"] is None for c in s["scores"])
    # Evaluations on the target AND the source, before (step 0, base) and after.
    after, before = _latest(ws, run.model.name), _latest(ws, "teacher-lit")
    assert set(after) == {"cs", "literature"} and {"cs", "literature"} <= set(before)
    # Forgetting = after − before on the source, logged on the run.
    metrics = MlflowClient(ws.tracking_uri).get_run(run.outcome.run_id).data.metrics
    delta = after["literature"] - before["literature"]
    assert metrics["forgetting/literature"] == pytest.approx(delta, rel=1e-9)
    assert metrics["forgetting_ratio/literature"] == pytest.approx(
        after["literature"] / before["literature"]
    )
    assert metrics["backward_transfer"] == pytest.approx(-delta)
    assert "forgetting/cs" not in metrics  # the target is not forgotten, it is learned


@pytest.mark.integration
def test_forgetting_is_a_curve_and_runs_group_by_tags(with_cs_expert: Workspace) -> None:
    """Every evaluation logs source PPL and forgetting at its step (0 at step 0), the last one
    equal to the run's before/after measure; runs carry study, strategy and base-model tags,
    no parent run; each run leaves evaluations.csv, curves.png and its plan; the experiment
    opens in MLflow's model-training view."""
    ws = with_cs_expert
    config = dataclasses.replace(CONFIG, steps=6, eval_every=2)
    (ki,) = adapt(ws, adapt_job(config=config), progress=False)
    (sl,) = adapt(ws, adapt_job(config=config, strategy="sl", replay=0.5), progress=False)
    client = MlflowClient(ws.tracking_uri)
    for run in (ki, sl):
        history = client.get_metric_history(run.outcome.run_id, "forgetting/literature")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 2, 4, 6]
        first = min(history, key=lambda m: m.step)
        assert first.value == 0.0
        assert max(history, key=lambda m: m.step).value == pytest.approx(
            run.metrics["forgetting/literature"], rel=1e-9
        )
        ppl = client.get_metric_history(run.outcome.run_id, "ppl/literature")
        assert len(ppl) == 4
        ratios = client.get_metric_history(run.outcome.run_id, "forgetting_ratio/literature")
        assert len(ratios) == 4 and min(ratios, key=lambda m: m.step).value == 1.0
    runs = {r.outcome.run_id: client.get_run(r.outcome.run_id) for r in (ki, sl)}
    tags = [r.data.tags for r in runs.values()]
    assert {t["lineage.study"] for t in tags} == {"adapt teacher-lit to cs"}
    assert [t["lineage.strategy"] for t in tags] == ["ki", "sl+replay"]
    assert [t["mlflow.runColor"] for t in tags] == ["#ff7f0e", "#2ca02c"]  # one per strategy
    assert {t["lineage.base_model"] for t in tags} == {"teacher-lit"}
    assert all("mlflow.parentRunId" not in t for t in tags)
    exp = client.get_experiment(runs[ki.outcome.run_id].info.experiment_id)
    assert all(
        "mlflow.parentRunId" not in r.data.tags for r in client.search_runs([exp.experiment_id])
    )
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    files = {f.path for f in client.list_artifacts(ki.outcome.run_id)}
    assert {"evaluations.csv", "curves.png", "plan.json"} <= files
    local = Path(client.download_artifacts(ki.outcome.run_id, "evaluations.csv"))
    table = local.read_text().splitlines()
    assert table[0].startswith("step,") and "forgetting/literature" in table[0]
    assert [row.split(",")[0] for row in table[1:]] == ["0", "2", "4", "6"]
    plan = json.loads(Path(client.download_artifacts(ki.outcome.run_id, "plan.json")).read_text())
    assert plan["student"] == "teacher-lit"


@pytest.mark.integration
def test_replay_with_self_ki_is_taught_by_the_base_on_its_sources(family_ws: Workspace) -> None:
    job = adapt_job(strategy="sl", replay=0.5, self_ki=True, self_ki_alpha=0.7, data_fraction=0.5)
    (run,) = adapt(family_ws, job, progress=False)
    reg = family_ws.registry
    (edge,) = reg.edges(run.model.name)  # no ki edge: the base taught itself
    assert (edge.parent, edge.kind) == ("teacher-lit", "adapt")
    p = edge.params
    assert p["replay"] == 0.5 and p["replay_domains"] == ["literature"]
    assert p["data_fraction"] == 0.5
    assert p["self_ki"]["schedule"] == {**p["self_ki"]["schedule"], "kind": "constant"}
    assert p["self_ki"]["schedule"]["constant"] == 0.7
    assert all(k.startswith("literature/") for k in p["self_ki"]["shards"])
    # The base's own predictions were cached on its source shards (pre-adaptation weights).
    caches = reg.caches("teacher-lit")
    assert caches and {c.domain for c in caches} == {"literature"}
    client = MlflowClient(family_ws.tracking_uri)
    mlrun = client.get_run(run.outcome.run_id)
    assert mlrun.data.params["replay"] == "0.5" and mlrun.data.params["self_ki"] == "True"
    alphas = [m.value for m in client.get_metric_history(run.outcome.run_id, "alpha/teacher-lit")]
    assert alphas and all(a == pytest.approx(0.7) for a in alphas)


@pytest.mark.integration
def test_lora_adapter_per_domain_loads_with_peft(family_ws: Workspace) -> None:
    from peft import PeftModel

    from lineage.models.modeling import load_model

    lora = LoraSpec(rank=2, alpha=4)
    job = adapt_job(strategy="sl", domains=("cs", "bio"), lora=lora, output="lit-lora")
    runs = adapt(family_ws, job, progress=False)
    reg = family_ws.registry
    base = reg.model("teacher-lit")
    assert [r.model.name for r in runs] == ["lit-lora-cs", "lit-lora-bio"]
    for run, domain in zip(runs, ("cs", "bio"), strict=True):
        model = run.model
        assert Path(model.path).parent == family_ws.adapters_dir
        assert (model.family, model.layers, model.d_model) == ("roberta", base.layers, 32)
        (edge,) = reg.edges(model.name)
        assert (edge.parent, edge.kind, edge.params["domains"]) == (
            "teacher-lit",
            "adapter",
            [domain],
        )
        trainable = edge.params["lora"]["trainable_params"]
        assert edge.params["lora"]["rank"] == 2 and 0 < trainable < base.n_params // 10
        assert model.n_params == base.n_params + trainable
        assert set(_latest(family_ws, model.name)) == {domain, "literature"}
        # The folder holds only the adapter, and PEFT loads it onto the base.
        assert not (Path(model.path) / "model.safetensors").exists()
        peft_model = PeftModel.from_pretrained(load_model(Path(base.path)), model.path).eval()
        n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        assert n_lora == trainable
        merged, _ = load_for_inference(family_ws, model)
        ids = torch.tensor([[5, 17, 42, 9, 4, 30, 2]])
        with torch.no_grad():
            a, b = peft_model(input_ids=ids).logits, merged(input_ids=ids).logits
            plain = load_model(Path(base.path)).eval()(input_ids=ids).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a, plain)  # the adapter was trained: it changes the function


@pytest.mark.integration
def test_cli_adapt_json(family_ws: Workspace) -> None:
    args = ["-w", str(family_ws.root), "adapt", "teacher-lit", "-d", "bio", "--strategy", "sl"]
    args += ["--steps", "2", "--batch-size", "4", "--block-size", "32", "--eval-blocks", "2"]
    args += ["--replay", "0.25", "--output", "lit-bio", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.stdout)  # stderr carries progress bars
    assert summary["model"] == "lit-bio" and set(summary["final"]) == {"bio", "literature"}
    assert "forgetting/literature" in summary["forgetting"]
    (edge,) = family_ws.registry.edges("lit-bio")  # plain replay: no teacher at all
    assert (edge.kind, edge.params["replay"], edge.params["replay_domains"]) == (
        "adapt",
        0.25,
        ["literature"],
    )
    assert edge.params["self_ki"] is False and "lora" not in edge.params
    bad = CliRunner().invoke(app, ["-w", str(family_ws.root), "adapt", "student", "-d", "cs"])
    assert bad.exit_code == 1 and "not trained on any domain" in bad.output


def test_refusals(family_ws: Workspace) -> None:
    with pytest.raises(LineageError, match="replay share"):
        TrainJob("a", "b", ("cs",), self_ki=True)
    with pytest.raises(LineageError, match=r"in \[0, 1\)"):
        TrainJob("a", "b", ("cs",), replay=1.0)
    with pytest.raises(LineageError, match="target domain"):
        TrainJob("a", "b", ("cs",), replay=0.5, replay_domains=("cs",))
    with pytest.raises(LineageError, match="strategy ki"):
        adapt_job(strategy="sl", plan="p")
    with pytest.raises(LineageError, match="not both"):
        adapt_job(plan="p", teachers=("teacher-lit",))
    with pytest.raises(LineageError, match="not trained on any domain"):
        adapt(family_ws, adapt_job(model="student"), progress=False)
    with pytest.raises(LineageError, match="no domain named"):
        adapt(family_ws, adapt_job(domains=("nope",)), progress=False)
    assert [m.name for m in family_ws.registry.models()] == ["t0", "teacher-lit", "student"]


def test_replay_weights_give_the_share_and_keep_proportions() -> None:
    sizes, replay = [30, 10, 20, 40], [False, False, True, True]
    w = replay_weights(sizes, replay, 0.25)
    assert sum(w) == pytest.approx(1.0)
    assert w[2] + w[3] == pytest.approx(0.25)
    assert w[0] / w[1] == pytest.approx(3.0) and w[3] / w[2] == pytest.approx(2.0)
    assert replay_weights([5, 5], [False, True], 0.0) == [1.0, 0.0]
    with pytest.raises(LineageError):
        replay_weights([5], [False], 0.5)

    class Shard:
        def __init__(self, name: str, n: int) -> None:
            self.name, self.n, self.teacher = name, n, None

        def __len__(self) -> int:
            return self.n

        def batch(self, indices: object, generator: object, epochs: object = None) -> str:
            return self.name

    shards = [Shard(f"s{i}", n) for i, n in enumerate(sizes)]
    sampler = MixtureSampler(shards, batch_size=1, seed=0, weights=w)  # type: ignore[arg-type]
    drawn = [next(sampler) for _ in range(4000)]
    share = np.mean([d in ("s2", "s3") for d in drawn])
    assert share == pytest.approx(0.25, abs=0.03)  # ~4.6 standard errors


def test_before_after_matrix_feeds_the_forgetting_math() -> None:
    m = before_after_matrix(
        "base", "new", ["lit"], ["cs"], {"lit": 10.0, "cs": 40.0}, {"lit": 12.0, "cs": 20.0}
    )
    assert m.learned == (("lit",), ("cs",))
    (f,) = domain_forgetting(m).values()
    assert (f.domain, f.delta, f.ratio) == ("lit", 2.0, 1.2)


@pytest.mark.integration
def test_quiet_adaptations_compared_by_gain_and_forgetting(family_ws: Workspace) -> None:
    """Two adaptations from the CLI (-q: no output at all), then `report compare` reads both
    runs back: target gain and source forgetting from their step-0 and final perplexities,
    a plot with its JSON, logged on both runs."""
    ws = str(family_ws.root)
    base = ["-w", ws, "adapt", "teacher-lit", "-d", "bio", "--strategy", "sl", "--steps", "2"]
    base += ["--batch-size", "4", "--block-size", "32", "--eval-every", "1", "--eval-blocks", "2"]
    quiet = CliRunner().invoke(app, [*base, "-o", "lit-sl", "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""
    replay = CliRunner().invoke(app, [*base, "-o", "lit-replay", "--replay", "0.5", "-q"])
    assert replay.exit_code == 0, replay.output
    plot = family_ws.root / "tradeoff.png"
    args = ["-w", ws, "report", "compare", "lit-sl", "lit-replay", "--plot", str(plot), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads(result.stdout)}
    assert [rows[m]["strategy"] for m in ("lit-sl", "lit-replay")] == ["sl", "sl+replay"]
    reg = family_ws.registry
    for name, row in rows.items():
        before, after = row["targets"]["bio"]
        final = {e.domain: e.ppl for e in reg.evaluations(model=name)}
        assert after == pytest.approx(final["bio"]) and row["target_gain"] == pytest.approx(
            1 - after / before
        )
        s0, s1 = row["sources"]["literature"]
        assert row["forgetting"] == pytest.approx(s1 / s0 - 1) and s1 == pytest.approx(
            final["literature"]
        )
        files = {f.path for f in MlflowClient(family_ws.tracking_uri).list_artifacts(
            row["run_id"], "compare"
        )}  # fmt: skip
        assert files == {"compare/tradeoff.png", "compare/tradeoff.json"}
    assert plot.stat().st_size > 5_000 and json.loads(plot.with_suffix(".json").read_text())
    table = CliRunner().invoke(app, ["-w", ws, "report", "compare", "lit-sl", "--no-log-artifacts"])
    assert "lit-sl" in table.output and "literature" in table.output
    missing = CliRunner().invoke(app, ["-w", ws, "report", "compare", "nothing-by-that-name"])
    assert missing.exit_code == 1 and "no model or MLflow run named" in missing.output

"""Training jobs in a real workspace: SL and KI (cached and online) leave a registered model,
edges, evaluations, an MLflow run with metrics, and refuse bad input without side effects."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lineage.errors import ConflictError, LineageError
from lineage.lifecycle import create_workspace_model
from lineage.models.modeling import ModelShape
from lineage.train.assign import source_domains
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, run_training
from lineage.workspace import Workspace

CONFIG = TrainConfig(
    steps=6, batch_size=4, lr=2e-3, eval_every=3, eval_blocks=4, checkpoint_every=3, log_every=2
)


def job(**kw: object) -> TrainJob:
    base = dict(student="student", output="out", domains=("cs",), block_size=32, config=CONFIG)
    return TrainJob(**(base | kw))  # type: ignore[arg-type]


def test_self_learning_registers_model_evaluations_and_mlflow_run(family_ws: Workspace) -> None:
    outcome = run_training(family_ws, job(), progress=False)
    reg = family_ws.registry
    model = reg.model("out")
    assert model.domains == ["cs"] and Path(model.path, "model.safetensors").is_file()
    assert reg.edges("out") == []  # the student was a random init: a new family member
    evals = {(e.model, e.domain, e.step) for e in reg.evaluations()}
    assert ("out", "cs", 6) in evals and ("student", "cs", 0) in evals
    run = MlflowClient(family_ws.tracking_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lineage.model"] == "out"
    assert {"loss", "lr", "tokens_per_s", "ppl/cs"} <= set(run.data.metrics)
    assert run.data.params["strategy"] == "sl" and run.data.params["config.steps"] == "6"
    assert run.inputs.dataset_inputs, "datasets are logged as run inputs"
    assert "## Lineage" in Path(model.path, "README.md").read_text()


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_ki_from_a_teacher_adds_a_ki_edge_and_logs_alpha(family_ws: Workspace, mode: str) -> None:
    outcome = run_training(
        family_ws,
        job(
            strategy="ki",
            teachers=("teacher-lit",),
            domains=("literature",),
            teacher_mode=mode,
            schedule={"kind": "linear", "guided_steps": 4},
        ),
        progress=False,
    )
    reg = family_ws.registry
    (edge,) = reg.edges("out")
    assert (edge.parent, edge.kind) == ("teacher-lit", "ki")
    assert edge.params["schedule"]["guided_steps"] == 4 and edge.params["mode"] == mode
    assert edge.mlflow_run_id == outcome.run_id
    history = MlflowClient(family_ws.tracking_uri).get_metric_history(
        outcome.run_id, "alpha/teacher-lit"
    )
    alphas = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert alphas[0] > 0 and alphas[-1] == 0.0  # guidance ends at step 4 of 6
    if mode == "cached":
        assert reg.caches("teacher-lit") and all(Path(c.path).is_dir() for c in reg.caches())
    assert reg.generation("out") == 2  # teacher-lit (a family root) -> out


def test_mask_rate_reaches_the_shards_and_the_cache(
    family_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MLM job's mask rate masks its training shards and builds (and records) the cache at
    that rate, in its own folder: a 15 % cache is never reused for a 40 % job."""
    from lineage.corpora.batches import MixtureSampler
    from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
    from lineage.inherit import teachers
    from lineage.train.assign import assign_shards, shard_sources

    ki = job(
        strategy="ki", teachers=("teacher-lit",), domains=("literature",), mask_probability=0.4
    )
    run_training(family_ws, ki, progress=False)
    reg = family_ws.registry
    caches = reg.caches("teacher-lit")
    for cache in caches:
        assert Path(cache.path).parent.parent.name.endswith("-M0.4-D4")
        manifest = json.loads(Path(cache.path, "manifest.json").read_text())
        assert manifest["masking"]["probability"] == 0.4
        assert manifest["masking"]["draws"] == 4  # the default: epoch e reads draw e mod 4
    assert reg.edges("out")[0].params["mask_probability"] == 0.4
    teacher, student = reg.model("teacher-lit"), reg.model("student")
    info = TokenizerInfo.of(load_tokenizer(Path(student.path)))
    sl = job(domains=("literature",), mask_probability=0.4)
    assigned, _ = assign_shards(family_ws, sl, student)
    sources, _ = shard_sources(family_ws, sl, student, assigned, info)
    batch = next(iter(MixtureSampler(sources, batch_size=64, seed=0)))
    share = float((batch.labels != -100).sum()) / batch.labels.numel()
    assert 0.3 < share < 0.45  # 40 % of the (non-special) tokens are targets
    # The 40 % cache opened for a 15 % job (as if its folder were found) is refused.
    path = teachers.cache_dir(family_ws, teacher, assigned[0].blocks, 10, 0.4)
    assert str(path) in {c.path for c in caches}
    monkeypatch.setattr(teachers, "cache_dir", lambda *a, **k: path)
    with pytest.raises(LineageError, match=r"mask probability 0\.4, not 0\.15"):
        teachers.ensure_cache(family_ws, teacher, assigned[0].blocks, top_k=10)


def test_continuing_a_trained_model_is_an_adapt_edge_and_sources_are_evaluated(
    family_ws: Workspace,
) -> None:
    outcome = run_training(family_ws, job(student="teacher-lit", output="lit-cs"), progress=False)
    (edge,) = family_ws.registry.edges("lit-cs")
    assert (edge.parent, edge.kind, edge.params["strategy"]) == ("teacher-lit", "adapt", "sl")
    assert set(outcome.result.final_eval) == {"cs", "literature"}  # target AND source domain
    assert source_domains(family_ws, family_ws.registry.model("lit-cs")) == ["literature", "cs"]


def test_bad_jobs_are_refused_before_anything_is_written(family_ws: Workspace) -> None:
    reg = family_ws.registry
    before = (len(reg.models()), len(reg.runs()))
    with pytest.raises(LineageError, match="KI needs a --teacher"):
        job(strategy="ki")
    with pytest.raises(LineageError, match="takes no --teacher"):
        job(teachers=("teacher-lit",))
    with pytest.raises(LineageError, match="new name"):
        job(output="student")
    with pytest.raises(LineageError, match="no domain named 'nope'"):
        run_training(family_ws, job(domains=("nope",)), progress=False)
    with pytest.raises(ConflictError, match="already registered"):
        run_training(family_ws, job(output="teacher-lit"), progress=False)
    create_workspace_model(
        family_ws,
        "gpt",
        family="gpt2",
        shape=ModelShape(2, 32, 2, 64),
        tokenizer="shared",
        max_positions=40,
    )
    with pytest.raises(LineageError, match="is clm but student"):
        run_training(family_ws, job(strategy="ki", teachers=("gpt",)), progress=False)
    assert (len(reg.models()) - 1, len(reg.runs())) == before


def test_resume_continues_the_same_run(family_ws: Workspace) -> None:
    crash = dataclasses.replace(CONFIG, steps=6)
    first = job(config=crash)

    def crash_at_4(step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    import lineage.train.training as training

    real_train = training.train
    with pytest.raises(KeyboardInterrupt):
        training.train = lambda *a, **k: real_train(*a, **k, on_step=crash_at_4)  # type: ignore[assignment]
        try:
            run_training(family_ws, first, progress=False)
        finally:
            training.train = real_train  # type: ignore[assignment]
    with pytest.raises(ConflictError, match="--resume"):
        run_training(family_ws, first, progress=False)
    outcome = run_training(family_ws, dataclasses.replace(first, resume=True), progress=False)
    assert outcome.result.resumed_from == 3 and outcome.result.step == 6
    runs = MlflowClient(family_ws.tracking_uri).search_runs(
        [MlflowClient(family_ws.tracking_uri).get_experiment_by_name("lineage").experiment_id],
        "tags.`lineage.model` = 'out'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert json.loads(json.dumps(runs[0].data.params)) is not None


def test_a_wider_cache_serves_a_smaller_k_and_the_edge_records_both(family_ws: Workspace) -> None:
    from lineage.lifecycle import build_caches

    built = build_caches(family_ws, "teacher-lit", ["literature"], top_k=12, block_size=32)
    assert built and all(c.top_k == 12 and c.manifest["format"] == 2 for c in built)
    run_training(
        family_ws,
        job(strategy="ki", teachers=("teacher-lit",), domains=("literature",), top_k=5),
        progress=False,
    )
    reg = family_ws.registry
    assert [c.path for c in reg.caches("teacher-lit")] == [c.path for c in built]  # none new
    (edge,) = reg.edges("out")
    assert edge.params["top_k"] == 5
    assert {(c["cache_top_k"], c["format"]) for c in edge.params["caches"]} == {(12, 2)}
    assert sorted(c["path"] for c in edge.params["caches"]) == sorted(c.path for c in built)

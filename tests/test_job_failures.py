"""A job that raises — before, during or after training; train, adapt, grow, cache build — ends
its MLflow run FAILED with the error as a tag, its registry run row failed with the error, and
leaves no model (no row, no edge, no evaluation, no folder) behind. Faults are injected."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

import lineage.inherit.teachers as teachers
import lineage.lifecycle as lifecycle
import lineage.train.training as training
from lineage.continual.adaptation import AdaptJob, adapt
from lineage.lifecycle import build_caches, grow_workspace_model
from lineage.registry import Registry
from lineage.train.lora import LoraSpec
from lineage.train.runs import ERROR_TAG
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, run_training
from lineage.workspace import Workspace

CONFIG = TrainConfig(
    steps=4, batch_size=4, lr=2e-3, eval_every=2, eval_blocks=4, checkpoint_every=2, log_every=2
)


class Injected(RuntimeError):
    """The fault these tests inject."""


def job(**kw: object) -> TrainJob:
    base = dict(student="student", output="out", domains=("cs",), block_size=32, config=CONFIG)
    return TrainJob(**(base | kw))  # type: ignore[arg-type]


def raise_injected(*args: object, **kwargs: object) -> None:
    raise Injected("injected fault")


def mlflow_runs(ws: Workspace) -> list:  # type: ignore[type-arg]
    client = MlflowClient(ws.tracking_uri)
    experiment = client.get_experiment_by_name(ws.config.tracking.experiment)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def assert_failed_and_nothing_left(ws: Workspace, output: str, folder: Path, kind: str) -> None:
    reg = ws.registry
    assert not reg.has_model(output)
    assert not folder.exists(), f"{folder} was left behind"
    assert all(output not in (e.parent, e.child) for e in reg.edges())
    run = reg.runs()[-1]  # the job's own row: the newest
    assert run.kind == kind and run.status == "failed" and run.ended_at is not None
    assert run.error is not None and "Injected: injected fault" in run.error
    (mlrun,) = [r for r in mlflow_runs(ws) if r.info.run_id == run.mlflow_run_id]
    assert mlrun.info.status == "FAILED"
    assert "injected fault" in mlrun.data.tags[ERROR_TAG]


@pytest.fixture
def unmodified(family_ws: Workspace) -> Iterator[Workspace]:
    """The family workspace; afterwards its registry still holds exactly what it held."""
    reg = family_ws.registry
    before = ([m.name for m in reg.models()], len(reg.edges()), len(reg.evaluations()))
    yield family_ws
    after = ([m.name for m in reg.models()], len(reg.edges()), len(reg.evaluations()))
    assert after == before


def test_training_that_fails_before_its_first_step(
    unmodified: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "load_model", raise_injected)
    with pytest.raises(Injected):
        run_training(unmodified, job(), progress=False)
    assert_failed_and_nothing_left(unmodified, "out", unmodified.models_dir / "out", "sl")


def test_training_that_fails_after_its_first_step(
    unmodified: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = training.train

    def fail_after_step_1(step: int) -> None:
        if step == 1:
            raise Injected("injected fault")

    monkeypatch.setattr(
        training, "train", lambda *a, **k: real_train(*a, **k, on_step=fail_after_step_1)
    )
    with pytest.raises(Injected):
        run_training(unmodified, job(strategy="ki", teachers=("teacher-lit",)), progress=False)
    assert_failed_and_nothing_left(unmodified, "out", unmodified.models_dir / "out", "ki")


def test_training_that_fails_while_registering_leaves_no_half_registered_model(
    family_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model row and its ki edge are written, then an evaluation fails: all rolled back."""
    reg = family_ws.registry
    evaluations = len(reg.evaluations())
    monkeypatch.setattr(Registry, "add_evaluation", raise_injected)
    ki = job(strategy="ki", teachers=("teacher-lit",), output="ki-out")
    with pytest.raises(Injected):
        run_training(family_ws, ki, progress=False)
    assert_failed_and_nothing_left(family_ws, "ki-out", family_ws.models_dir / "ki-out", "ki")
    assert len(reg.evaluations()) == evaluations
    monkeypatch.undo()
    # The checkpoints survive the failure: the same job resumes and registers.
    outcome = run_training(family_ws, dataclasses.replace(ki, resume=True), progress=False)
    assert outcome.result.resumed_from == CONFIG.steps
    assert reg.model("ki-out").path == str(family_ws.models_dir / "ki-out")
    assert [e.kind for e in reg.edges("ki-out")] == ["ki"]
    run = reg.runs()[-1]
    assert (
        run.kind == "ki" and run.status == "finished" and run.error is None
    )  # the resumed run took its row back


def test_lora_adaptation_that_fails_is_recorded(
    unmodified: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "add_lora", raise_injected)
    job = AdaptJob(
        model="teacher-lit",
        domains=("cs",),
        strategy="sl",
        lora=LoraSpec(rank=2),
        output="lit-lora",
        block_size=32,
        config=CONFIG,
    )
    with pytest.raises(Injected):
        adapt(unmodified, job, progress=False)
    assert_failed_and_nothing_left(
        unmodified, "lit-lora-cs", unmodified.adapters_dir / "lit-lora-cs", "sl"
    )


@pytest.mark.parametrize("where", ["scoring", "registering"])
def test_growth_that_fails_is_recorded_and_leaves_nothing(
    unmodified: Workspace, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "scoring":
        monkeypatch.setattr(lifecycle, "evaluate", raise_injected)
    else:  # after the model row: the edge fails, the row must go too
        monkeypatch.setattr(Registry, "add_edge", raise_injected)
    with pytest.raises(Injected):
        grow_workspace_model(unmodified, "teacher-lit", "grown", layers=3, hidden=48, block_size=32)
    assert_failed_and_nothing_left(unmodified, "grown", unmodified.models_dir / "grown", "grow")


def test_cache_build_that_fails_is_recorded(
    unmodified: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(teachers, "build_cache", raise_injected)
    with pytest.raises(Injected):
        build_caches(unmodified, "teacher-lit", ["cs"], block_size=32, progress=False)
    assert unmodified.registry.caches() == []
    run = unmodified.registry.runs()[-1]
    assert (run.kind, run.status) == ("cache", "failed") and "injected" in str(run.error)
    (mlrun,) = [r for r in mlflow_runs(unmodified) if r.info.run_id == run.mlflow_run_id]
    assert mlrun.info.status == "FAILED" and "injected" in mlrun.data.tags[ERROR_TAG]

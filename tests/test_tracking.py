"""MLflow tracking on a temporary SQLite store: one run, resumed runs, nesting, datasets."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lineage.train.tracking import (
    STRATEGY_COLORS,
    MlflowTracker,
    NullTracker,
    flatten,
    metric_key,
    strategy_color,
)


@dataclass
class _Inner:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)


def test_flatten_and_keys() -> None:
    flat = flatten({"train": _Inner(), "model": {"shape": {"layers": 2}}, "name": "x"})
    assert flat == {
        "train.lr": 0.1,
        "train.betas": (0.9, 0.98),
        "model.shape.layers": 2,
        "name": "x",
    }
    assert metric_key("alpha/roberta@wb:v2") == "alpha/roberta_wb_v2"


def test_null_tracker_records() -> None:
    t = NullTracker()
    t.log_metrics({"loss": 2.0, "alpha/t@1": 0.5}, step=3)
    t.log_params({"a": {"b": 1}})
    t.finish("FAILED")
    assert t.history("loss") == [(3, 2.0)] and t.history("alpha/t@1") == [(3, 0.5)]
    assert t.params == {"a.b": 1} and t.status == "FAILED" and t.run_id is None


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_mlflow_run_resume_and_nesting(uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    artifacts = (tmp_path / "art").as_uri()
    tracker = MlflowTracker(uri, "exp", "student", tags={"kind": "ki"}, artifact_location=artifacts)
    tracker.log_params({"train": _Inner(), "long": "x" * 7000})
    tracker.log_metrics({"loss": 3.0, "ppl/wb": 20.0}, step=1)
    tracker.log_dataset("wb-train", "ab" * 32, str(tmp_path / "wb.npy"))
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracker.log_artifact(note)
    tracker.finish("KILLED")

    again = MlflowTracker(uri, "exp", resume_run_id=tracker.run_id)
    assert again.run_id == tracker.run_id
    again.log_metrics({"loss": 2.0}, step=2)
    again.finish()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [tracker.run_id]  # resumed, not duplicated
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "student"
    assert run.data.params["train.lr"] == "0.1" and len(run.data.params["long"]) == 6000
    assert run.data.tags["kind"] == "ki"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0)]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "wb-train"
    assert dataset_input.dataset.digest == ("ab" * 32)[:36]
    assert dataset_input.dataset.source_type == "local"
    assert json.loads(dataset_input.dataset.source) == {"uri": str(tmp_path / "wb.npy")}
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]

    child = MlflowTracker(uri, "exp", "child", parent_run_id=tracker.run_id)
    child_run = client.get_run(child.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == tracker.run_id


def test_each_strategy_has_its_own_stable_run_colour() -> None:
    colours = list(STRATEGY_COLORS.values())
    assert len(set(colours)) == len(colours)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    assert strategy_color("ki+replay") == STRATEGY_COLORS["ki+replay"]
    other = strategy_color("sl+replay+lora")  # not listed: a stable pick of its own
    assert other == strategy_color("sl+replay+lora") and other not in colours

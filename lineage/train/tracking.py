"""Experiment tracking: a small ``Tracker`` protocol, MLflow behind it, and a null tracker.

One training run is one MLflow run. ``MlflowTracker`` talks to the tracking store through an
``MlflowClient`` (no global "active run"), so several trackers can coexist in one process and
a resumed training run appends to the run it started (``resume_run_id``) instead of opening a
duplicate. MLflow is imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import re
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from lineage.errors import LineageError

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
_BATCH_PARAMS = 100  # MLflow's limit per log_batch call
_BATCH_METRICS = 1000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow accepts in a key


class Tracker(Protocol):
    """What the trainer needs from an experiment tracker."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_dataset(
        self, name: str, digest: str, source: str, context: str = "training"
    ) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/dataclasses -> {"a.b.c": leaf}; lists and tuples stay leaves."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {"value": obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        ):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def metric_key(key: str) -> str:
    """A key MLflow accepts (teacher names may contain ':' or '@')."""
    return _BAD_KEY_CHARS.sub("_", key)


# The MLflow UI opens an experiment in its classic model-training view (runs, charts, compare)
# rather than its GenAI view (traces, prompts) when this experiment tag says so (MLflow 3).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_NOTE = (  # one line in the UI's header
    "One run per trained model or adapter. Group by tag lineage.study, lineage.strategy or "
    "lineage.base_model; chart forgetting/DOMAIN and ppl/DOMAIN against the step."
)
# The UI draws a run in the colour of its ``mlflow.runColor`` tag (else one hashed from its id,
# often the same for two runs): one colour per strategy, the same in every study and chart.
STRATEGY_COLORS = {
    "sl": "#1f77b4",
    "ki": "#ff7f0e",
    "sl+replay": "#2ca02c",
    "ki+replay": "#d62728",
    "sl+lora": "#9467bd",
    "ki+lora": "#8c564b",
    "ki+self-ki": "#e377c2",
    "ki+replay+self-ki": "#7f7f7f",
    "grow": "#bcbd22",
    "cache": "#17becf",
}
_OTHER_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")


def strategy_color(strategy: str) -> str:
    """The run colour of a ``lineage.strategy`` (a stable pick for combinations not listed)."""
    known = STRATEGY_COLORS.get(strategy)
    return known or _OTHER_COLORS[zlib.crc32(strategy.encode()) % len(_OTHER_COLORS)]


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` (fcntl, released by the kernel if the process dies) around the
    first touch of a SQLite tracking store: MLflow creates and migrates a fresh database on
    first use, and two processes doing it at once fail ("Online migration expected to match
    one row"). Other stores need no lock here."""
    from sqlalchemy.engine import make_url

    if not tracking_uri.startswith("sqlite:"):
        yield
        return
    database = make_url(tracking_uri).database
    if not database or database == ":memory:":
        yield
        return
    lock = Path(database).with_name(Path(database).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` whose store has been opened (created and migrated if new) under
    ``store_lock``."""
    from mlflow import MlflowClient

    with store_lock(tracking_uri):  # the client opens (so creates) its store when built
        client = MlflowClient(tracking_uri=tracking_uri)
        client._tracking_client.store  # noqa: B018  # (and if a later version defers that)
    return client


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing, tagged as a model-training
    experiment with a description (tags a person has set are left alone)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, artifact_location=artifact_location)
        tags: dict[str, str] = {}
    else:
        exp_id, tags = exp.experiment_id, dict(exp.tags)
    wanted = EXPERIMENT_KIND | {"mlflow.note.content": EXPERIMENT_NOTE}
    for key, value in wanted.items():
        if key not in tags:
            client.set_experiment_tag(exp_id, key, value)
    return str(exp_id)


class NullTracker:
    """Records everything in memory and sends nothing: for tests and non-main ranks."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, str, float]] = []  # (step, key, value)
        self.tags: dict[str, str] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.texts: dict[str, str] = {}  # artifact file -> text
        self.figures: list[str] = []  # artifact files of logged figures
        self.datasets: list[tuple[str, str, str, str]] = []  # name, digest, source, context
        self.status: str | None = None

    @property
    def run_id(self) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.extend((step, metric_key(k), float(v)) for k, v in metrics.items())

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.figures.append(artifact_file)

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        self.datasets.append((name, digest, source, context))

    def finish(self, status: str = "FINISHED") -> None:
        self.status = status

    def history(self, key: str) -> list[tuple[int, float]]:
        """[(step, value)] logged under ``key``."""
        return [(s, v) for s, k, v in self.metrics if k == metric_key(key)]


class MlflowTracker:
    """One MLflow run per training run; ``resume_run_id`` continues an existing run.

    ``parent_run_id`` nests the new run under a parent (e.g. a plan with several students).
    ``artifact_location`` is used only when the experiment has to be created.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        from mlflow.exceptions import MlflowException

        self.tracking_uri = tracking_uri
        try:
            self._client = mlflow_client(tracking_uri)
            if resume_run_id is not None:
                run = self._client.get_run(resume_run_id)
                self._client.update_run(resume_run_id, status="RUNNING")
                self._run_id = run.info.run_id
            else:
                exp_id = ensure_experiment(self._client, experiment, artifact_location)
                all_tags = {k: str(v) for k, v in (tags or {}).items()}
                if parent_run_id is not None:
                    all_tags["mlflow.parentRunId"] = parent_run_id
                run = self._client.create_run(exp_id, tags=all_tags, run_name=run_name)
                self._run_id = run.info.run_id
        except MlflowException as exc:
            raise LineageError(f"MLflow ({tracking_uri}): {exc.message}") from exc
        if resume_run_id is not None and tags:
            self.set_tags(tags)

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened; values longer than MLflow's limit are cut (and marked with '…')."""
        from mlflow.entities import Param

        items = []
        for key, value in flatten(params).items():
            text = str(value)
            if len(text) > _MAX_PARAM_CHARS:
                text = text[: _MAX_PARAM_CHARS - 1] + "…"
            items.append(Param(metric_key(key), text))
        for i in range(0, len(items), _BATCH_PARAMS):
            self._client.log_batch(self._run_id, params=items[i : i + _BATCH_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH_METRICS):
            self._client.log_batch(self._run_id, metrics=items[i : i + _BATCH_METRICS])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self._client.log_batch(self._run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self._run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact (a CSV table, a JSON plan) at ``artifact_file`` in the run."""
        self._client.log_text(self._run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure saved as the artifact ``artifact_file`` (e.g. curves.png)."""
        self._client.log_figure(self._run_id, figure, artifact_file)

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        """Record a dataset input (``mlflow.log_input`` semantics) by name and content digest.

        Shards and eval sets are local files: the source is MLflow's ``local`` type with the
        path as its URI, as ``mlflow.data`` records a local file.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest[:36],  # MLflow keeps at most 36 characters of a digest
            source_type="local",
            source=json.dumps({"uri": str(source)}),
        )
        from mlflow.exceptions import MlflowException

        tag = InputTag("mlflow.data.context", context)
        inputs = [DatasetInput(dataset, tags=[tag])]
        try:
            self._client.log_inputs(self._run_id, datasets=inputs)
        except MlflowException as exc:
            # MLflow's SQL store reads, then inserts an experiment's dataset: two runs logging
            # the same dataset at once collide on its unique key. The other run's insert has
            # committed, so a second try finds the dataset and only links it to this run.
            text = str(exc)
            if "datasets" not in text or ("UNIQUE" not in text and "duplicate key" not in text):
                raise
            self._client.log_inputs(self._run_id, datasets=inputs)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: FINISHED, FAILED or KILLED."""
        self._client.set_terminated(self._run_id, status=status)

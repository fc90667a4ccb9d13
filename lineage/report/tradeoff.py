"""The adaptation trade-off: what each run gained on its target domains against what it forgot
on its source domains — the picture for choosing among SL, KI, replay, self-KI and LoRA.

Each run is read back from MLflow, so any run that evaluated at step 0 and at its end counts
(a model name stands for the run that made it). For a domain d with perplexity p0 at step 0 and
p1 at the last evaluation:

- target gain on d = 1 − p1 / p0 (> 0: the run lowered the target's perplexity);
- forgetting on d = p1 / p0 − 1 (> 0: the source's perplexity rose), the run's
  ``forgetting_ratio/<d>`` − 1.

A run's gain and forgetting are the means over its target and source domains. The report prints
them, draws gain against forgetting (one point per run: up is better, left is better), writes
the figure's JSON beside it and logs both as ``compare/`` artifacts of every compared run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lineage.errors import LineageError
from lineage.workspace import Workspace

__all__ = ["RunTradeOff", "compare_runs", "read_run", "trade_off_plot"]


@dataclass(frozen=True)
class RunTradeOff:
    """One run: perplexity at step 0 and at its last evaluation, per target and source."""

    label: str  # the model it made, else its MLflow run name
    run_id: str
    strategy: str  # the lineage.strategy tag ("sl", "ki+replay", ...)
    study: str | None  # the lineage.study tag
    step: int  # last evaluated step
    targets: dict[str, tuple[float, float]]  # domain -> (PPL at step 0, PPL at the end)
    sources: dict[str, tuple[float, float]]

    @property
    def target_gain(self) -> float | None:
        """Mean over targets of 1 − after/before (> 0: better on the new domains)."""
        values = [1 - after / before for before, after in self.targets.values()]
        return sum(values) / len(values) if values else None

    @property
    def forgetting(self) -> float | None:
        """Mean over sources of after/before − 1 (> 0: worse on the earlier domains)."""
        values = [after / before - 1 for before, after in self.sources.values()]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_gain"], out["forgetting"] = self.target_gain, self.forgetting
        return out


def _run_id(ws: Workspace, ref: str) -> str:
    """A registered model's run (the run that made it), or ``ref`` itself as a run id."""
    reg = ws.registry
    if reg.has_model(ref):
        for edge in reg.edges(ref):
            if edge.child == ref and edge.mlflow_run_id:
                return edge.mlflow_run_id
        made = [r.mlflow_run_id for r in reg.runs() if r.model == ref and r.mlflow_run_id]
        if made:
            return made[-1]
        raise LineageError(f"model {ref!r} was not trained here: no MLflow run made it")
    return ref


def _ends(client: Any, run_id: str, key: str) -> tuple[int, float, float] | None:
    """(last step, value at step 0, value at the last step) of a metric; None without step 0."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    if not history or history[0].step != 0:
        return None
    return history[-1].step, float(history[0].value), float(history[-1].value)


def read_run(ws: Workspace, ref: str) -> RunTradeOff:
    """The trade-off of one run (``ref``: a model name or an MLflow run id)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=ws.tracking_uri)
    run_id = _run_id(ws, ref)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise LineageError(f"no model or MLflow run named {ref!r}") from exc
    tags, metrics = run.data.tags, run.data.metrics
    targets = [d for d in tags.get("lineage.domains", "").split(",") if d]
    sources = [k.split("/", 1)[1] for k in metrics if k.startswith("forgetting_ratio/")]
    ends = {d: _ends(client, run_id, f"ppl/{d}") for d in (*targets, *sources)}
    missing = [d for d, e in ends.items() if e is None]
    if not targets or missing:
        raise LineageError(
            f"run {ref!r} has no perplexity at step 0 and at its end on "
            f"{', '.join(missing) or 'its targets'}: it cannot be compared"
        )
    steps = {e[0] for e in ends.values() if e is not None}
    return RunTradeOff(
        label=tags.get("lineage.model") or run.info.run_name or run_id,
        run_id=run_id,
        strategy=tags.get("lineage.strategy", "?"),
        study=tags.get("lineage.study"),
        step=max(steps),
        targets={d: ends[d][1:] for d in targets},  # type: ignore[index]
        sources={d: ends[d][1:] for d in sources},  # type: ignore[index]
    )


def trade_off_plot(runs: Sequence[RunTradeOff], path: Path) -> Path:
    """Target gain (y) against source forgetting (x), one labelled point per run."""
    from matplotlib.figure import Figure

    from lineage.report.plots import save_figure

    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    strategies = list(dict.fromkeys(r.strategy for r in runs))
    colors = {s: f"C{i}" for i, s in enumerate(strategies)}
    for r in runs:
        x, y = 100 * (r.forgetting or 0.0), 100 * (r.target_gain or 0.0)
        ax.scatter([x], [y], s=60, color=colors[r.strategy], zorder=3)
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    for s, c in colors.items():
        ax.scatter([], [], color=c, label=s)
    ax.axhline(0, color="0.7", linewidth=0.8)
    ax.axvline(0, color="0.7", linewidth=0.8)
    targets = sorted({d for r in runs for d in r.targets})
    sources = sorted({d for r in runs for d in r.sources})
    ax.set(
        title="adaptation trade-off (up and left is better)",
        xlabel=f"forgetting on {', '.join(sources) or 'sources'}: PPL change, %",
        ylabel=f"gain on {', '.join(targets)}: PPL reduction, %",
    )
    ax.grid(alpha=0.3)
    ax.legend(title="strategy", fontsize=8)
    return save_figure(fig, path)


def compare_runs(
    ws: Workspace, refs: Sequence[str], *, plot: Path | None = None, log_artifacts: bool = True
) -> list[RunTradeOff]:
    """Read every run, draw ``plot`` (default ``plots/compare-<labels>.png``) with its JSON
    beside it, and log both as ``compare/`` artifacts of each run when ``log_artifacts``."""
    if not refs:
        raise LineageError("name at least one run or model to compare")
    runs = [read_run(ws, ref) for ref in dict.fromkeys(refs)]
    path = plot or ws.plots_dir / f"compare-{'+'.join(r.label for r in runs)[:80]}.png"
    trade_off_plot(runs, path)
    from lineage.files import atomic_write_text

    data = [r.to_dict() for r in runs]
    atomic_write_text(path.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    if log_artifacts:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=ws.tracking_uri)
        for r in runs:
            client.log_artifact(r.run_id, str(path), "compare")
            client.log_artifact(r.run_id, str(path.with_suffix(".json")), "compare")
    return runs

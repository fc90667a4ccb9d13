"""What a training run leaves beside its metrics: its evaluation table and its curves figure.

``evaluations.csv`` holds one row per evaluation (step, then ``ppl/<domain>``,
``eval_loss/<domain>``, ``forgetting/<domain>``, ...: the training history); ``curves.png``
draws the perplexity of every evaluated domain against the step (targets solid, sources
dashed) and, when the model has source domains, their forgetting ratio since step 0. Both are
logged as artifacts of the run when it ends (``log_run_curves``); the MLflow UI shows the CSV
as a table and the PNG as an image.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from lineage.train.tracking import Tracker

TABLE_FILE = "evaluations.csv"
FIGURE_FILE = "curves.png"


def evaluation_table(history: Sequence[Mapping[str, float]]) -> str:
    """The history as CSV: ``step`` first, then every key in the order first seen."""
    columns = list(dict.fromkeys(["step", *(k for row in history for k in row)]))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: int(v) if k == "step" else v for k, v in row.items()})
    return out.getvalue()


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in history if key in r]
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def curves_figure(
    history: Sequence[Mapping[str, float]],
    targets: Sequence[str],
    sources: Sequence[str],
    *,
    title: str,
) -> Any:
    """Perplexity per domain against the step (log scale; targets solid, sources dashed) and,
    with sources, a second panel of their forgetting ratio (1 = as before training)."""
    from matplotlib.figure import Figure

    panels = 2 if sources else 1
    fig = Figure(figsize=(6.0 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    domains = list(dict.fromkeys([*targets, *sources]))
    for d in domains:
        steps, ppl = _series(history, f"ppl/{d}")
        role = "source" if d in sources else "target"
        axes[0].plot(
            steps,
            ppl,
            marker=".",
            linestyle="--" if role == "source" else "-",
            label=f"{d} ({role})",
        )
    axes[0].set(title="validation perplexity", xlabel="step", ylabel="perplexity", yscale="log")
    if sources:
        for d in sources:
            steps, ratio = _series(history, f"forgetting_ratio/{d}")
            axes[1].plot(steps, ratio, marker=".", linestyle="--", label=d)
        axes[1].axhline(1.0, color="0.6", linewidth=0.8)
        axes[1].set(title="forgetting: source PPL / PPL at step 0", xlabel="step", ylabel="ratio")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def log_run_curves(
    tracker: Tracker,
    history: Sequence[Mapping[str, float]],
    targets: Sequence[str],
    sources: Sequence[str],
    *,
    title: str,
) -> None:
    """Log ``evaluations.csv`` and ``curves.png`` on the tracker's run (nothing without a
    history)."""
    if not history:
        return
    tracker.log_text(evaluation_table(history), TABLE_FILE)
    tracker.log_figure(curves_figure(history, targets, sources, title=title), FIGURE_FILE)


def forgetting_since(
    start: dict[str, float], row: dict[str, float], sources: tuple[str, ...]
) -> dict[str, float]:
    """Forgetting on each source domain d between two evaluation rows: ``forgetting/<d>`` =
    PPL now − PPL at ``start`` (> 0: forgotten), ``forgetting_ratio/<d>`` = their ratio, and
    ``backward_transfer`` = −mean Δ (lineage.continual.forgetting's measures for one run)."""
    out: dict[str, float] = {}
    for d in sources:
        before, now = start.get(f"ppl/{d}"), row.get(f"ppl/{d}")
        if before is not None and now is not None and before > 0:
            out[f"forgetting/{d}"] = now - before
            out[f"forgetting_ratio/{d}"] = now / before
    deltas = [v for k, v in out.items() if k.startswith("forgetting/")]
    if deltas:
        out["backward_transfer"] = -sum(deltas) / len(deltas)
    return out

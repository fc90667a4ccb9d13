"""``lineage report``: what adaptation did to a family (forgetting on earlier domains)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.cli.common import app as make_app
from lineage.report.forgetting import forgetting_report

app = make_app("Reports on the model family: forgetting and transfer across domains.")


@app.command()
def forgetting(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(help="Models to report on (each with its chain).")],
    plot: Annotated[
        Path | None,
        typer.Option(help="Heatmap PNG to write (JSON beside it); default plots/forgetting-*.png."),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="A model (e.g. a random init) whose perplexities are FWT's reference."),
    ] = None,
    log_artifacts: Annotated[
        bool, typer.Option(help="Attach the PNG and JSON to the models' MLflow runs.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Perplexity per generation and domain, forgetting per source domain, BWT and FWT."""
    report = forgetting_report(
        workspace(ctx), models, reference=reference, plot=plot, log_artifacts=log_artifacts
    )
    if as_json:
        emit_json(report.to_dict())
        return
    m = report.matrix
    table(
        "validation perplexity (rows: generations, base first)",
        ["model", *m.domains],
        [
            (name, *("-" if math.isnan(v) else f"{v:.2f}" for v in row))
            for name, row in zip(m.models, m.ppl.tolist(), strict=True)
        ],
    )
    table(
        "forgetting on earlier domains (after − before; ratio) and transfer",
        ["model", "chain", "forgetting", "BWT", "FWT"],
        [
            (
                c.model,
                " → ".join(c.chain),
                ", ".join(f"{d} {f.delta:+.2f} ({f.ratio:.2f}×)" for d, f in c.forgetting.items())
                or "-",
                "-" if c.backward_transfer is None else f"{c.backward_transfer:+.3f}",
                "-" if c.forward_transfer is None else f"{c.forward_transfer:+.3f}",
            )
            for c in report.chains
        ],
    )
    console.print("BWT/FWT in perplexity units, sign flipped: > 0 is good (lower perplexity).")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _ppl(ends: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{d} {a:.1f} → {b:.1f}" for d, (a, b) in ends.items()) or "-"


@app.command()
def compare(
    ctx: typer.Context,
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Models (the run that made each) or MLflow run ids.", metavar="RUN|MODEL..."
        ),
    ],
    plot: Annotated[
        Path | None,
        typer.Option(help="Figure PNG to write (JSON beside it); default plots/compare-*.png."),
    ] = None,
    log_artifacts: Annotated[
        bool, typer.Option(help="Attach the PNG and JSON to every compared MLflow run.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Target gain against source forgetting, per run: which adaptation to keep."""
    from lineage.report.tradeoff import compare_runs

    found = compare_runs(workspace(ctx), runs, plot=plot, log_artifacts=log_artifacts)
    if as_json:
        emit_json([r.to_dict() for r in found])
        return
    table(
        "adaptation trade-off: perplexity at step 0 → at the end",
        ["run", "strategy", "targets", "gain", "sources", "forgetting"],
        [
            (
                r.label,
                r.strategy,
                _ppl(r.targets),
                _pct(r.target_gain),
                _ppl(r.sources),
                _pct(r.forgetting),
            )
            for r in found
        ],
    )
    console.print("gain: PPL reduction on the targets; forgetting: PPL rise on the sources.")

"""``lineage grow``: initialise a larger model from a registered one (bert2BERT, papers/004)."""

from __future__ import annotations

from typing import Annotated

import typer

from lineage.cli.common import (
    JsonOption,
    QuietOption,
    console,
    emit_json,
    err_console,
    quiet_mode,
    table,
    workspace,
)
from lineage.models.shapes import DEFAULT_BLOCK_SIZE

METHODS = (
    "fpi",
    "aki",
    "copy",
    "copy-hf-init",
)  # lineage.growth.GrowthMethod, spelled here to keep --help fast


def grow(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Registered model to grow from.")],
    new: Annotated[str, typer.Argument(help="Name of the grown model.")],
    layers: Annotated[int, typer.Option(help="Transformer blocks of the grown model.")],
    hidden: Annotated[int, typer.Option(help="d_model of the grown model.")],
    heads: Annotated[
        int | None, typer.Option(help="Attention heads (default: keep the head size).")
    ] = None,
    ffn: Annotated[
        int | None, typer.Option(help="Feed-forward size (default: keep the FFN ratio).")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="fpi (function-preserving), aki (units from the layer above), copy (DirectCopy: "
            "new units at the source's scale), copy-hf-init (new units at the HF init)."
        ),
    ] = "fpi",
    seed: Annotated[int, typer.Option(help="Seed of the unit maps (and copy's random init).")] = 0,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            "-d",
            help="Score on this domain (default: the source's first registered one; none: "
            "grow unscored).",
        ),
    ] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per scored block.")] = DEFAULT_BLOCK_SIZE,
    max_blocks: Annotated[int, typer.Option(help="Score at most this many valid blocks.")] = 64,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Grow SOURCE into NEW: wider by FPI/AKI/DirectCopy, deeper by stacking; register it with
    a grow edge and score both on a domain sample when there is one (FPI should keep the
    source's loss)."""
    from lineage.lifecycle import grow_workspace_model

    quiet_mode(quiet, as_json)
    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    model, report = grow_workspace_model(
        workspace(ctx),
        source,
        new,
        layers=layers,
        hidden=hidden,
        heads=heads,
        ffn=ffn,
        method=method,  # type: ignore[arg-type]  # checked against METHODS above
        seed=seed,
        sample_domain=domain,
        block_size=block_size,
        max_blocks=max_blocks,
    )
    for warning in report.warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(report.to_dict() | {"model": model.to_dict()})
        return
    console.print(
        f"Grew [bold]{source}[/] into [bold]{new}[/] by {method}: {model.layers} layers x "
        f"{model.d_model}, {model.n_params:,} parameters at {model.path}"
    )
    if report.source_eval is None or report.grown_eval is None:
        console.print(
            f"[yellow]not scored[/]: {report.unscored}; pass --domain to compare the source "
            "and the grown model on a domain's valid split"
        )
        return
    table(
        f"loss on {report.domain} (valid, {report.grown_eval.n_tokens} targets)",
        ["model", "loss", "ppl"],
        [
            (source, f"{report.source_eval.loss:.4f}", f"{report.source_eval.ppl:.2f}"),
            (new, f"{report.grown_eval.loss:.4f}", f"{report.grown_eval.ppl:.2f}"),
        ],
    )

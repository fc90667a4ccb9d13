"""``lineage adapt``: post-train a trained model on new domains (full or LoRA, replay, self-KI)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lineage.cli.common import (
    BatchSizeOption,
    BlockSizeOption,
    BuildCachesOption,
    CheckpointEveryOption,
    EvalBlocksOption,
    EvalEveryOption,
    JsonOption,
    LrOption,
    QuietOption,
    SeedOption,
    StudyOption,
    TeacherModeOption,
    console,
    emit_json,
    parse_params,
    quiet_mode,
    table,
    workspace,
)
from lineage.models.shapes import DEFAULT_BLOCK_SIZE


def adapt_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The registered, trained model to adapt.")],
    domain: Annotated[
        list[str] | None, typer.Option("--domain", "-d", help="A new target domain (repeat).")
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="ki (teachers per shard, chosen by the router) or sl.")
    ] = "ki",
    plan: Annotated[
        str | None, typer.Option(help="A stored plan (name or id) instead of routing now.")
    ] = None,
    teacher: Annotated[
        list[str] | None,
        typer.Option("--teacher", "-t", help="Only these candidate teachers (default: all)."),
    ] = None,
    lora: Annotated[
        bool, typer.Option("--lora", help="Train one LoRA adapter per domain, not all weights.")
    ] = False,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA scale numerator (update × α/r).")] = 16,
    replay: Annotated[
        float, typer.Option(help="Share of batches replaying the source domains (0 = none).")
    ] = 0.0,
    self_ki: Annotated[
        bool,
        typer.Option("--self-ki", help="Replay batches are taught by the model's own predictions."),
    ] = False,
    self_ki_alpha: Annotated[float, typer.Option(help="Constant α of the self-KI term.")] = 0.5,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    data_fraction: Annotated[
        float, typer.Option(help="Use this share of each target shard (data-scarce runs).")
    ] = 1.0,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Name of the new model or adapter.")
    ] = None,
    schedule: Annotated[
        str, typer.Option(help="Teachers' schedule kind when routing: linear, heaviside, ...")
    ] = "linear",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Schedule parameter key=value.")
    ] = None,
    teacher_mode: TeacherModeOption = "cached",
    build_caches: BuildCachesOption = True,
    batch_size: BatchSizeOption = 16,
    lr: LrOption = 5e-4,
    block_size: BlockSizeOption = DEFAULT_BLOCK_SIZE,
    eval_every: EvalEveryOption = 200,
    eval_blocks: EvalBlocksOption = 64,
    checkpoint_every: CheckpointEveryOption = 500,
    seed: SeedOption = 0,
    study: StudyOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Adapt a model to new domains; reports the forgetting on its source domains."""
    from lineage.continual.adaptation import AdaptJob, adapt  # torch: only when the command runs
    from lineage.train.lora import LoraSpec
    from lineage.train.trainer import TrainConfig

    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        eval_every=eval_every,
        eval_blocks=eval_blocks,
        checkpoint_every=checkpoint_every,
    )
    job = AdaptJob(
        model=model,
        domains=tuple(domain or ()),
        output=output,
        strategy=strategy,
        plan=plan,
        teachers=tuple(teacher or ()),
        lora=LoraSpec(rank=lora_rank, alpha=lora_alpha) if lora else None,
        replay=replay,
        self_ki=self_ki,
        self_ki_alpha=self_ki_alpha,
        data_fraction=data_fraction,
        schedule=schedule,
        schedule_params=parse_params(param or []),
        teacher_mode=teacher_mode,
        build_caches=build_caches,
        block_size=block_size,
        config=config,
        study=study,
    )
    runs = adapt(workspace(ctx), job, progress=quiet_mode(quiet, as_json))
    summary: list[dict[str, Any]] = [
        {
            "model": r.model.name if r.model else None,
            "path": r.model.path if r.model else None,
            "run_id": r.outcome.run_id,
            "plan": r.plan,
            "teachers": sorted(r.outcome.teachers),
            "final": {d: e.ppl for d, e in r.outcome.result.final_eval.items()},
            "forgetting": r.metrics,
            "caches": r.outcome.caches,
        }
        for r in runs
    ]
    if as_json:
        emit_json(summary)
        return
    for r in summary:
        console.print(
            f"Adapted [bold]{r['model']}[/] (teachers: {', '.join(r['teachers']) or 'none'}; "
            f"MLflow run {r['run_id']})"
        )
    table(
        "after adaptation",
        ["model", "domain", "ppl", "forgetting (Δ ppl)", "ratio"],
        [
            (
                r["model"],
                d,
                f"{ppl:.2f}",
                _fmt(r["forgetting"].get(f"forgetting/{d}"), "{:+.2f}"),
                _fmt(r["forgetting"].get(f"forgetting_ratio/{d}"), "{:.2f}×"),
            )
            for r in summary
            for d, ppl in r["final"].items()
        ],
    )


def _fmt(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)

"""``lineage train``: self-learning, KI from a teacher, or a plan's multi-teacher KI."""

from __future__ import annotations

from typing import Annotated

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


def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model to start from.")],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Name of the new model.")
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", "-d", help="Target domain (repeat).")
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="sl (self-learning) or ki (knowledge inheritance).")
    ] = "sl",
    teacher: Annotated[
        list[str] | None, typer.Option("--teacher", "-t", help="KI teacher (shortcut for a plan).")
    ] = None,
    plan: Annotated[
        str | None, typer.Option(help="A stored plan (name or id): per-shard teachers.")
    ] = None,
    schedule: Annotated[
        list[str] | None,
        typer.Option(
            help="Inheritance schedule field, key=value: kind=linear|heaviside|constant|auto, "
            "alpha_T, guided_steps, switch_step, constant."
        ),
    ] = None,
    teacher_mode: TeacherModeOption = "cached",
    build_caches: BuildCachesOption = True,
    top_k: Annotated[int, typer.Option(help="Teacher logits kept per target (cache).")] = 10,
    mask_rate: Annotated[
        float, typer.Option(help="MLM: share of tokens masked in training (and the cache).")
    ] = 0.15,
    mask_draws: Annotated[
        int, typer.Option(help="MLM KI: the teacher cache's masks per block (draw = epoch mod N).")
    ] = 4,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: BatchSizeOption = 16,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: LrOption = 5e-4,
    block_size: BlockSizeOption = DEFAULT_BLOCK_SIZE,
    temperature: Annotated[float, typer.Option(help="KI temperature tau.")] = 1.0,
    eval_every: EvalEveryOption = 200,
    eval_blocks: EvalBlocksOption = 64,
    checkpoint_every: CheckpointEveryOption = 500,
    data_fraction: Annotated[
        float, typer.Option(help="Use this share of each target shard.")
    ] = 1.0,
    seed: SeedOption = 0,
    two_stage_layers: Annotated[
        int, typer.Option(help="bert2BERT two-stage training: sub-model step l_b (0 = off).")
    ] = 0,
    two_stage_fraction: Annotated[
        float, typer.Option(help="Share of steps in the sub-model stage.")
    ] = 0.5,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the student.")
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run of --output.")] = False,
    study: StudyOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train a model: SL, KI with a teacher, or a plan (GPU when present; several processes under
    torchrun or accelerate launch: README, Scaling out)."""
    from lineage.train.trainer import TrainConfig
    from lineage.train.training import TrainJob, run_training

    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        seed=seed,
        eval_every=eval_every,
        eval_blocks=eval_blocks,
        checkpoint_every=checkpoint_every,
        temperature=temperature,
        compile=compile_model,
        two_stage_layers=two_stage_layers,
        two_stage_fraction=two_stage_fraction,
    )
    targets = tuple(domain or ())
    name = f"{model}-{strategy}-{'-'.join(targets) or plan}" if output is None else output
    job = TrainJob(
        student=model,
        output=name,
        domains=targets,
        strategy=strategy,
        teachers=tuple(teacher or ()),
        plan=plan,
        schedule=parse_params(schedule or []),
        teacher_mode=teacher_mode,
        build_caches=build_caches,
        top_k=top_k,
        mask_probability=mask_rate,
        mask_draws=mask_draws,
        block_size=block_size,
        data_fraction=data_fraction,
        config=config,
        resume=resume,
        study=study,
    )
    progress = quiet_mode(quiet, as_json)
    outcome = run_training(workspace(ctx), job, progress=progress)
    r = outcome.result
    summary = {
        "model": outcome.model.to_dict() if outcome.model else None,
        "run_id": outcome.run_id,
        "steps": r.step,
        "tokens_per_s": r.tokens_per_s,
        "wall_time_s": r.wall_time_s,
        "eval_share": r.eval_time_s / max(r.wall_time_s, 1e-9),
        "final": {d: {"loss": e.loss, "ppl": e.ppl} for d, e in r.final_eval.items()},
        "teachers": outcome.teachers,
        "caches": outcome.caches,
    }
    if as_json:
        emit_json(summary)
        return
    console.print(
        f"Trained [bold]{name}[/] in {r.wall_time_s:.0f} s ({r.tokens_per_s:,.0f} tokens/s, "
        f"evaluation {summary['eval_share']:.0%}); MLflow run {outcome.run_id}"
    )
    table(
        "final perplexity",
        ["domain", "ppl"],
        [(d, f"{e.ppl:.2f}") for d, e in r.final_eval.items()],
    )

"""A training job in a workspace: self-learning, single-teacher KI, or a plan's multi-teacher KI.

Resolves names to shards, token blocks, teacher caches and evaluation sets; runs
``lineage.train.trainer.train`` under an MLflow run; then registers the new model with its edges
and evaluations. Only the main process writes the registry, MLflow and files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from lineage.corpora.batches import MixtureSampler
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.distributed import on_main, process_state
from lineage.errors import ConflictError, LineageError
from lineage.faults import fault_point
from lineage.inherit.cache_costs import describe, refuse_missing
from lineage.inherit.plans import load_plan
from lineage.inherit.schedules import AutoInheritance
from lineage.inherit.teachers import check_same_vocabulary
from lineage.models.modeling import load_model
from lineage.registry.entities import Model
from lineage.registry.modelfiles import check_model_files, model_files
from lineage.registry.modelinfo import (
    ModelInfo,
    check_block_size,
    check_has_lm_head,
    read_model_info,
)
from lineage.registry.reservations import Reservation, holding, take_output
from lineage.train.assign import (
    Assigned,
    assign_shards,
    auto_samples,
    cache_params,
    eval_sets,
    planned_caches,
    replay_shards,
    replay_weights,
    shard_sources,
    source_domains,
)
from lineage.train.checkpoints import checkpoint_run_id
from lineage.train.curves import log_run_curves
from lineage.train.job import TrainJob, TrainOutcome
from lineage.train.lora import adapter_bytes, adapter_info, add_lora, is_adapter
from lineage.train.runs import fail_mlflow_runs, recorded
from lineage.train.tracking import MlflowTracker, NullTracker, Tracker, strategy_color
from lineage.train.trainer import TrainResult, train
from lineage.workspace import Workspace

__all__ = ["TrainJob", "TrainOutcome", "run_training"]

log = logging.getLogger(__name__)


def strategy_label(job: TrainJob) -> str:
    """How the run trains, as users compare runs: "sl", "ki", "ki+replay", "ki+replay+self-ki",
    "sl+lora", ... (the ``lineage.strategy`` tag)."""
    parts = [job.strategy]
    if job.replay:
        parts.append("replay")
    if job.self_ki:
        parts.append("self-ki")
    if job.lora is not None:
        parts.append("lora")
    return "+".join(parts)


def run_tags(job: TrainJob, student: Model) -> dict[str, str]:
    """The tags that group runs in the MLflow UI: one study (what the runs compare, e.g. every
    adaptation of one model to the same domains), the strategy and the base model; and the run's
    description."""
    domains = ", ".join(job.domains)
    teachers = f"; teachers {', '.join(job.teachers)}" if job.teachers else ""
    plan = f"; plan {job.plan}" if job.plan else ""
    tags = {
        "lineage.study": job.study or f"train {student.name} on {'+'.join(job.domains)}",
        "lineage.strategy": strategy_label(job),
        "mlflow.runColor": strategy_color(strategy_label(job)),
        "lineage.base_model": student.name,
        "lineage.model": job.output,
        "lineage.domains": ",".join(job.domains),
        "lineage.parents": ",".join(sorted({student.name, *job.teachers})),
        "mlflow.note.content": f"{strategy_label(job)} from {student.name} on {domains}"
        f"{teachers}{plan}{f', replay {job.replay:.0%}' if job.replay else ''}.",
    }
    if job.plan:
        tags["lineage.plan"] = job.plan
    return tags


def _tracker(
    ws: Workspace, job: TrainJob, student: Model, checkpoint_dir: Path, main: bool
) -> Tracker:
    """A new MLflow run tagged for grouping (no parent run), or the interrupted one."""
    if not main:
        return NullTracker()
    resume_id = checkpoint_run_id(checkpoint_dir) if job.resume else None
    return MlflowTracker(
        ws.tracking_uri,
        ws.config.tracking.experiment,
        job.output,
        tags=run_tags(job, student),
        resume_run_id=resume_id,
        artifact_location=ws.expand(ws.config.tracking.artifacts),
    )


def run_training(ws: Workspace, job: TrainJob, *, progress: bool = True) -> TrainOutcome:
    """Run ``job`` and register its result; resumable with ``job.resume``."""
    reg = ws.registry
    student = reg.model(job.student)
    if is_adapter(reg, student.name):
        raise LineageError(f"{student.name!r} is a LoRA adapter: train from its base model")
    check_has_lm_head(student.name, student.objective, "a model to train")
    if reg.has_model(job.output):
        raise ConflictError(f"a model named {job.output!r} is already registered")
    _check_models(ws, job, student)
    assigned, job = assign_shards(ws, job, student)
    replayed = replay_shards(ws, job, student)
    if replayed:
        reviewed = tuple(dict.fromkeys(a.blocks.shard.domain for a in replayed))
        job = dataclasses.replace(job, replay_domains=reviewed)
    assigned += replayed
    for teacher in {a.teacher for a in assigned if a.teacher is not None}:
        check_same_vocabulary(reg.model(teacher), student)  # before any record is written
        _check_teacher(ws, reg.model(teacher), job.block_size)
    caches = _announce_caches(ws, job, assigned)  # listed (or refused) before any record
    state = process_state()
    run_dir = ws.child_path(ws.root / "runs", job.output)
    out_dir = ws.child_path(ws.adapters_dir if job.lora else ws.models_dir, job.output)
    main = state.is_main_process
    # taken on the main process; a refusal there stops every rank at once
    taken = on_main(
        lambda: take_output(reg, job.output, out_dir, job="train"),
        f"reserving the output name {job.output!r}",
    )
    claim: AbstractContextManager[Reservation | None] = (
        holding(reg, taken, out_dir) if main else nullcontext()
    )
    with claim as reservation:  # the output name is this job's until it is registered
        fault_point("train.reserved")
        if reservation is not None:
            fail_mlflow_runs(ws.tracking_uri, reservation.stale_runs)
        if (run_dir / "checkpoints").exists() and not job.resume:
            raise ConflictError(
                f"an interrupted run of {job.output!r} exists in {run_dir}: pass --resume to "
                "continue it, or remove that folder"
            )
        return _run(ws, job, student, assigned, run_dir, main, progress, caches)


def _run(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    assigned: list[Assigned],
    run_dir: Path,
    main: bool,
    progress: bool,
    caches: list[dict[str, Any]],
) -> TrainOutcome:
    """Records, training, registration: the body of ``run_training`` once the output is
    reserved (``train.saved``: the model is published, not yet registered)."""
    reg = ws.registry
    tracker = _tracker(ws, job, student, run_dir / "checkpoints", main)
    params = dataclasses.asdict(job)
    with recorded(reg, job.strategy, tracker, config=params, main=main, resume=job.resume) as rec:
        if main and not job.resume:  # a resumed run keeps its records
            tracker.log_params(params)
            for a in assigned:
                tracker.log_dataset(a.blocks.key, a.blocks.shard.digest, a.blocks.shard.path)
            if job.plan:  # the plan that chose the teachers travels with the run
                spec = load_plan(ws, job.plan).to_dict()
                tracker.log_text(json.dumps(spec, indent=2, default=str), "plan.json")
        result, teacher_params = _train(ws, job, student, assigned, tracker, run_dir, progress)
        sources = _sources(ws, job, student)
        log_run_curves(
            tracker,
            result.history,
            job.domains,
            sources,
            title=f"{job.output} ({strategy_label(job)})",
        )
        self_ki = teacher_params.pop(student.name, None)  # the student taught itself: no ki edge
        model = None
        fault_point("train.saved")
        if main:
            model = _register(ws, job, student, result, teacher_params, self_ki)
            fault_point("train.registered")
            tracker.set_tags({"lineage.registered": model.name})
            rec.succeed(model.name)
    return TrainOutcome(model, result, result.run_id, teacher_params, caches)


def _announce_caches(ws: Workspace, job: TrainJob, assigned: list[Assigned]) -> list[dict]:
    """The teacher caches the job reads, logged (stderr) before any is built; with
    ``build_caches`` off, a missing one stops the job here, before any record."""
    planned = planned_caches(ws, job, assigned)
    if planned and process_state().is_main_process:
        for line in describe(planned):
            log.info("teacher cache: %s", line)
    if not job.build_caches:
        refuse_missing(planned)
    return [p.to_dict() for p in planned]


def _check_models(ws: Workspace, job: TrainJob, student: Model) -> None:
    """The shortcut's teachers (what a teacher is refused for comes first), then the base:
    block size against positions, files as registered; then the domains; before any work."""
    for name in job.teachers:
        _check_teacher(ws, ws.registry.model(name), job.block_size)
    check_block_size(student.name, Path(student.path), job.block_size)
    check_model_files(student, "base model")
    for d in job.domains:
        ws.registry.domain(d)  # unknown names fail before any work


def _check_teacher(ws: Workspace, teacher: Model, block_size: int) -> None:
    """A teacher has an LM head, fits the blocks, its files are as registered, its caches' folder
    lies inside the workspace."""
    check_has_lm_head(teacher.name, teacher.objective, "a KI teacher")
    check_block_size(teacher.name, Path(teacher.path), block_size)
    check_model_files(teacher, "teacher")
    ws.child_path(ws.caches_dir, teacher.name)


def _train(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    assigned: list[Assigned],
    tracker: Tracker,
    run_dir: Path,
    progress: bool,
) -> tuple[TrainResult, dict[str, dict[str, Any]]]:
    """Teachers' caches, the sampler and the student; then the training loop itself."""
    state = process_state()
    tokenizer = load_tokenizer(Path(student.path))
    info = TokenizerInfo.of(tokenizer)
    sources, online = shard_sources(ws, job, student, assigned, info, progress)
    schedules = _schedules(assigned)
    sampler = MixtureSampler(
        sources,
        batch_size=job.config.batch_size,
        seed=job.config.seed,
        weights=replay_weights([len(s) for s in sources], [a.replay for a in assigned], job.replay)
        if job.replay
        else None,
        rank=state.process_index,
        world_size=state.num_processes,
    )
    lm = load_model(Path(student.path))
    if job.lora is not None:
        lm = add_lora(lm, job.lora, seed=job.config.seed, base_path=student.path)
    result = train(
        lm,
        config=job.config,
        sampler=sampler,
        eval_sets=eval_sets(ws, job, student),
        sources=_sources(ws, job, student),
        objective=student.objective,
        out_dir=ws.child_path(ws.adapters_dir if job.lora else ws.models_dir, job.output),
        checkpoint_dir=run_dir / "checkpoints",
        tracker=tracker,
        schedules=schedules,
        online_teachers=online,
        resume=job.resume,
        progress=progress,
        tokenizer=tokenizer,
        auto_samples=auto_samples(ws, job, assigned, student),
    )
    return result, _teacher_params(job, assigned, schedules, cache_params(sources))


def _sources(ws: Workspace, job: TrainJob, student: Model) -> list[str]:
    """The student's earlier domains that this run does not target: where it may forget."""
    return [d for d in source_domains(ws, student) if d not in job.domains]


def _schedules(assigned: list[Assigned]) -> dict[str, Any]:
    """One schedule object per teacher (AutoInheritance for "auto": it holds state)."""
    out: dict[str, Any] = {}
    for a in assigned:
        if a.teacher and a.schedule and a.teacher not in out:
            out[a.teacher] = (
                AutoInheritance(a.schedule) if a.schedule.kind == "auto" else a.schedule
            )
    return out


def _teacher_params(
    job: TrainJob,
    assigned: list[Assigned],
    schedules: dict[str, Any],
    caches: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, schedule in schedules.items():
        base = schedule.schedule if isinstance(schedule, AutoInheritance) else schedule
        params = {
            "schedule": base.to_dict(),
            "temperature": job.config.temperature,
            "top_k": job.top_k,  # the K the loss used (≤ each cache's K)
            "mask_probability": job.mask_probability,
            "mask_draws": job.mask_draws,
            "mode": job.teacher_mode,
            "plan": job.plan,
            "shards": [a.blocks.key for a in assigned if a.teacher == name],
        }
        if name in caches:
            params["caches"] = caches[name]
        if isinstance(schedule, AutoInheritance):
            params["auto_events"] = [dataclasses.asdict(e) for e in schedule.events]
        out[name] = params
    return out


def _register(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    result: TrainResult,
    teachers: dict[str, dict[str, Any]],
    self_ki: dict[str, Any] | None = None,
) -> Model:
    """The new model, its edges (adapt from a trained student, or adapter from its base; ki
    from each teacher), evaluations."""
    reg = ws.registry
    out_dir = result.model_dir
    domains = list(dict.fromkeys([*student.domains, *job.domains]))
    info = adapter_info(student, out_dir) if job.lora else read_model_info(out_dir)
    files = model_files(out_dir)  # hashed before the registry's write lock is taken
    with reg.transaction():  # the model, its edges, evaluations and card, or nothing
        model = _register_rows(ws, job, student, result, teachers, self_ki, domains, info, files)
        ws.write_model_card(model.name)  # in the published folder; a kill before the commit
    return model  # leaves it unregistered, for the next job of that name to delete


def _description(job: TrainJob, student: Model, teachers: list[str], self_ki: bool) -> str:
    """'KI from <start>, taught by <teachers>, on <domains>': the teachers, not only the start."""
    what = f"{job.strategy.upper()}{' LoRA adapter' if job.lora else ''} from {student.name}"
    taught = [*teachers, *([f"{student.name} (self-KI on replay)"] if self_ki else [])]
    by = f", taught by {', '.join(taught)}," if taught else ""
    return f"{what}{by} on {', '.join(job.domains)}"


def _register_rows(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    result: TrainResult,
    teachers: dict[str, dict[str, Any]],
    self_ki: dict[str, Any] | None,
    domains: list[str],
    info: ModelInfo,
    files: dict[str, Any],
) -> Model:
    reg = ws.registry
    model = reg.add_model(
        job.output,
        str(result.model_dir),
        info,
        files=files,
        domains=domains,
        description=_description(job, student, sorted(teachers), self_ki is not None),
    )
    fault_point("train.registering")  # inside the transaction: none of it is committed
    trained_before = bool(student.domains) or bool(reg.parents(student.name))
    if trained_before or job.lora:
        reg.add_edge(
            student.name,
            model.name,
            "adapter" if job.lora else "adapt",
            mlflow_run_id=result.run_id,
            params=_adapt_params(job, result, info.n_params - student.n_params, self_ki),
        )
    for teacher, params in teachers.items():
        reg.add_edge(teacher, model.name, "ki", params=params, mlflow_run_id=result.run_id)
    _add_evaluations(ws, student, model, result)
    return model


def _adapt_params(
    job: TrainJob, result: TrainResult, added_params: int, self_ki: dict[str, Any] | None
) -> dict[str, Any]:
    """The adapt/adapter edge's record: targets, data share, replay, self-KI, LoRA."""
    params: dict[str, Any] = {
        "strategy": job.strategy,
        "domains": list(job.domains),
        "steps": result.step,
        "data_fraction": job.data_fraction,
        "replay": job.replay,
        "replay_domains": list(job.replay_domains),
        "self_ki": self_ki or False,
    }
    if job.lora is not None:
        params["lora"] = {
            **job.lora.to_dict(),
            "trainable_params": added_params,
            "adapter_bytes": adapter_bytes(result.model_dir),
        }
    return params


def _add_evaluations(ws: Workspace, student: Model, model: Model, result: TrainResult) -> None:
    """The run's final perplexities; the student's step-0 ones too (the "before" of forgetting)."""
    reg = ws.registry
    start = result.history[0] if result.history and result.history[0].get("step") == 0 else None
    known = {(e.domain, e.step, e.protocol) for e in reg.evaluations(model=student.name)}
    for domain, final in result.final_eval.items():
        if start and f"ppl/{domain}" in start and (domain, 0, final.protocol) not in known:
            reg.add_evaluation(
                student.name,
                domain,
                loss=start[f"eval_loss/{domain}"],
                ppl=start[f"ppl/{domain}"],
                mlflow_run_id=result.run_id,
                protocol=final.protocol,  # the same evaluation blocks at step 0
            )
        reg.add_evaluation(
            model.name,
            domain,
            loss=final.loss,
            ppl=final.ppl,
            step=result.step,
            n_tokens=final.n_tokens,
            mlflow_run_id=result.run_id,
            protocol=final.protocol,
        )

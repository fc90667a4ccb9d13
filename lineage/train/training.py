"""A training job in a workspace: self-learning, single-teacher KI, or a plan's multi-teacher KI.

Resolves names to shards, token blocks, teacher caches and evaluation sets; runs
``lineage.train.trainer.train`` under an MLflow run; then registers the new model with its edges
and evaluations. Only the main process writes the registry, MLflow and files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState

from lineage.corpora.batches import BlockShard, MixtureSampler, ShardSource
from lineage.corpora.blocks import ShardBlocks, shard_blocks, valid_blocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.errors import ConflictError, LineageError
from lineage.inherit.plans import load_plan
from lineage.inherit.schedules import AutoInheritance, InheritanceSchedule, guided_steps_for
from lineage.inherit.teachers import TEACHER_MODES, check_same_vocabulary, ensure_cache
from lineage.models.evaluation import evaluate
from lineage.models.modeling import load_model
from lineage.models.shapes import DEFAULT_BLOCK_SIZE
from lineage.registry.entities import Model
from lineage.registry.modelinfo import ModelInfo, read_model_info
from lineage.train.checkpoints import checkpoint_run_id
from lineage.train.lora import LoraSpec, adapter_bytes, adapter_info, add_lora, is_adapter
from lineage.train.runs import recorded, remove_unregistered
from lineage.train.tracking import MlflowTracker, NullTracker, Tracker
from lineage.train.trainer import AutoSample, TrainConfig, TrainResult, train
from lineage.workspace import Workspace

STRATEGIES = ("sl", "ki")


@dataclass(frozen=True)
class TrainJob:
    """What to train; every field one line of help (the CLI mirrors them)."""

    student: str  # registered model the weights start from
    output: str  # name of the new model (registered at the end)
    domains: tuple[str, ...] = ()  # target domains (taken from the plan when one is given)
    strategy: str = "sl"  # "sl" (self-learning) or "ki" (knowledge inheritance)
    teachers: tuple[str, ...] = ()  # KI shortcut: these teachers teach every target shard
    plan: str | None = None  # a stored plan: per-shard teachers, schedules, steps
    schedule: dict[str, Any] = field(default_factory=dict)  # InheritanceSchedule fields (shortcut)
    teacher_mode: str = "cached"  # "cached" (top-K logit cache) or "online" (teacher forward)
    top_k: int = 10  # teacher logits kept per target in the cache
    block_size: int = DEFAULT_BLOCK_SIZE  # tokens per training block
    data_fraction: float = 1.0  # use only this share of each target shard (data-scarce runs)
    config: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = False  # continue the interrupted run of the same output name
    replay: float = 0.0  # share of batches drawn from the student's source domains ("reviewing")
    replay_domains: tuple[str, ...] = ()  # domains to replay (default: the student's sources)
    self_ki: bool = False  # replay batches are taught by the student's own (pre-run) predictions
    self_ki_alpha: float = 0.5  # constant inheritance rate of that self-KI term
    lora: LoraSpec | None = None  # train a LoRA adapter (saved under adapters/), not all weights

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LineageError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.teacher_mode not in TEACHER_MODES:
            raise LineageError(f"teacher mode must be one of {', '.join(TEACHER_MODES)}")
        if self.strategy == "sl" and (self.teachers or self.plan):
            raise LineageError("self-learning takes no --teacher or --plan (use --strategy ki)")
        if self.strategy == "ki" and not (self.teachers or self.plan):
            raise LineageError("KI needs a --teacher or a --plan")
        if self.teachers and self.plan:
            raise LineageError("give --teacher or --plan, not both")
        if not self.plan and not self.domains:
            raise LineageError("name at least one --domain to train on")
        if not 0 < self.data_fraction <= 1:
            raise LineageError(f"data fraction must be in (0, 1], got {self.data_fraction}")
        if self.student == self.output:
            raise LineageError("the output must get a new name (models are never overwritten)")
        if not 0 <= self.replay < 1:
            raise LineageError(f"replay share must be in [0, 1), got {self.replay}")
        if (self.self_ki or self.replay_domains) and self.replay == 0:
            raise LineageError("--self-ki and replay domains need a replay share (--replay R > 0)")
        if not 0 < self.self_ki_alpha <= 1:
            raise LineageError(f"self-KI alpha must be in (0, 1], got {self.self_ki_alpha}")
        if set(self.replay_domains) & set(self.domains):
            raise LineageError("a replayed domain cannot also be a target domain")


@dataclass(frozen=True)
class TrainOutcome:
    model: Model | None  # None on non-main processes
    result: TrainResult
    run_id: str | None
    teachers: dict[str, dict[str, Any]]  # teacher -> edge parameters


@dataclass
class _Assigned:
    """One target shard and who teaches it."""

    blocks: ShardBlocks
    teacher: str | None
    schedule: InheritanceSchedule | None
    replay: bool = False  # a source-domain shard replayed against forgetting


def source_domains(ws: Workspace, model: Model) -> list[str]:
    """Every domain the model or any ancestor was trained on (its lineage tells which)."""
    reg = ws.registry
    seen = list(model.domains)
    for rel in reg.ancestors(model.name):
        seen += [d for d in reg.model(rel.name).domains if d not in seen]
    return seen


def _default_schedule(job: TrainJob, teacher: Model, student: Model) -> InheritanceSchedule:
    params = dict(job.schedule)
    kind = params.pop("kind", "linear")
    steps = job.config.steps
    if kind in ("linear", "auto") and "alpha_T" not in params and "guided_steps" not in params:
        params["guided_steps"] = guided_steps_for(teacher.layers, student.layers, steps)
    return InheritanceSchedule(kind=kind, total_steps=steps, **params)


def _assign(ws: Workspace, job: TrainJob, student: Model) -> tuple[list[_Assigned], TrainJob]:
    """Shards with their teachers and schedules, from the plan or the shortcut options."""
    reg = ws.registry
    tok_dir = Path(student.path)
    if job.plan is not None:
        spec = load_plan(ws, job.plan)
        if spec.student != student.name:
            raise ConflictError(
                f"plan {job.plan!r} is for student {spec.student!r}, not {student.name!r}"
            )
        schedules = spec.schedules()
        shards = {s.id: s for d in spec.domains for s in reg.shards(d, split="train")}
        assigned = []
        for sp in spec.shards:
            if sp.shard_id not in shards:
                raise LineageError(f"plan {job.plan!r}: shard {sp.name} no longer exists")
            blocks = shard_blocks(ws, shards[sp.shard_id], tok_dir, job.block_size)
            assigned.append(
                _Assigned(blocks, sp.teacher, schedules.get(sp.teacher) if sp.teacher else None)
            )
        config = dataclasses.replace(job.config, steps=spec.steps, temperature=spec.temperature)
        job = dataclasses.replace(job, domains=tuple(spec.domains), top_k=spec.top_k, config=config)
        return assigned, job
    teachers = [reg.model(t) for t in job.teachers]
    if len(teachers) > 1:
        raise LineageError("several teachers need a plan (`lineage plan create`) to route shards")
    assigned = []
    for domain in job.domains:
        for shard in reg.shards(domain, split="train"):
            blocks = shard_blocks(ws, shard, tok_dir, job.block_size)
            teacher = teachers[0] if teachers else None
            schedule = _default_schedule(job, teacher, student) if teacher else None
            assigned.append(_Assigned(blocks, teacher.name if teacher else None, schedule))
    if not assigned:
        raise LineageError(f"no train shards in {', '.join(job.domains)}")
    return assigned, job


def replay_weights(sizes: Sequence[int], replay: Sequence[bool], share: float) -> list[float]:
    """Sampler weights that draw ``share`` of the batches from the replay shards.

    Within each group (target / replay) a shard is drawn in proportion to its size, as the
    sampler's default does: w_i = (1 − R) · n_i / Σ_target n + R · [replay_i] · n_i / Σ_replay n.
    """
    target = sum(n for n, r in zip(sizes, replay, strict=True) if not r)
    again = sum(n for n, r in zip(sizes, replay, strict=True) if r)
    if target == 0 or (share > 0 and again == 0):
        raise LineageError("replay needs both target and replay shards")
    return [
        (share * n / again) if r else ((1 - share) * n / target)
        for n, r in zip(sizes, replay, strict=True)
    ]


def _replay(ws: Workspace, job: TrainJob, student: Model) -> list[_Assigned]:
    """The source-domain shards to review; with self-KI the student teaches them (α constant)."""
    if job.replay == 0:
        return []
    domains = job.replay_domains or tuple(
        d for d in source_domains(ws, student) if d not in job.domains
    )
    if not domains:
        raise LineageError(f"{student.name!r} has no source domain to replay")
    schedule = (
        InheritanceSchedule(
            kind="constant", total_steps=job.config.steps, constant=job.self_ki_alpha
        )
        if job.self_ki
        else None
    )
    teacher = student.name if job.self_ki else None
    return [
        _Assigned(shard_blocks(ws, s, Path(student.path), job.block_size), teacher, schedule, True)
        for d in domains
        for s in ws.registry.shards(d, split="train")
    ]


def _scarce(blocks: ShardBlocks, fraction: float) -> ShardBlocks:
    keep = max(1, int(len(blocks.blocks) * fraction))
    return dataclasses.replace(blocks, blocks=blocks.blocks[:keep])


def _sources(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    assigned: list[_Assigned],
    info: TokenizerInfo,
    progress: bool = True,
) -> tuple[list[ShardSource], dict[str, Any]]:
    """ShardSources for the sampler (cached or online teachers) and the online teacher models."""
    reg = ws.registry
    online: dict[str, Any] = {}
    sources: list[ShardSource] = []
    for a in assigned:
        scarce = job.data_fraction < 1 and not a.replay  # the sources are not the scarce data
        blocks = _scarce(a.blocks, job.data_fraction) if scarce else a.blocks
        if a.teacher is None:
            sources.append(BlockShard(blocks.key, blocks.blocks, student.objective, info))
            continue
        teacher = reg.model(a.teacher)
        if job.teacher_mode == "online":
            if a.teacher not in online:
                online[a.teacher] = load_model(Path(teacher.path))
            sources.append(
                BlockShard(blocks.key, blocks.blocks, student.objective, info, teacher=a.teacher)
            )
        else:
            cache = ensure_cache(ws, teacher, a.blocks, top_k=job.top_k, progress=progress)
            sources.append(_ScarceCached(cache.shard(blocks.key, a.teacher), len(blocks.blocks)))
    return sources, online


class _ScarceCached:
    """A cached shard limited to its first ``n`` blocks (the cache covers the whole shard)."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n = inner, min(n, len(inner))
        self.name, self.teacher = inner.name, inner.teacher

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: Sequence[int], generator: Any) -> Any:
        return self.inner.batch(indices, generator)


def _eval_sets(ws: Workspace, job: TrainJob, student: Model) -> dict[str, np.ndarray]:
    """Valid blocks of the target domains AND every source domain (forgetting, as it happens)."""
    names = list(dict.fromkeys([*job.domains, *source_domains(ws, student)]))
    limit = job.config.eval_blocks
    return {d: valid_blocks(ws, d, Path(student.path), job.block_size, limit) for d in names}


def _auto_samples(
    ws: Workspace, job: TrainJob, assigned: list[_Assigned], student: Model, info: TokenizerInfo
) -> dict[str, AutoSample]:
    """Held-out blocks of each auto-scheduled teacher's domains, with its perplexity on them."""
    out: dict[str, AutoSample] = {}
    for a in assigned:
        if a.teacher is None or a.schedule is None or a.schedule.kind != "auto" or a.teacher in out:
            continue
        domains = sorted({b.blocks.shard.domain for b in assigned if b.teacher == a.teacher})
        blocks = np.concatenate(
            [
                valid_blocks(ws, d, Path(student.path), job.block_size, job.config.eval_blocks)
                for d in domains
            ]
        )
        teacher = load_model(Path(ws.registry.model(a.teacher).path))
        ppl = evaluate(
            teacher,
            blocks,
            objective=student.objective,
            batch_size=job.config.eval_batch_size,
            tokenizer=info,
        ).ppl
        out[a.teacher] = AutoSample(blocks=blocks, teacher_ppl=ppl)
    return out


def _tracker(
    ws: Workspace, job: TrainJob, student: Model, checkpoint_dir: Path, main: bool
) -> Tracker:
    if not main:
        return NullTracker()
    tags = {
        "lineage.model": job.output,
        "lineage.student": student.name,
        "lineage.strategy": job.strategy,
        "lineage.parents": ",".join(sorted({student.name, *job.teachers})),
        "lineage.domains": ",".join(job.domains),
    }
    if job.plan:
        tags["lineage.plan"] = job.plan
    resume_id = checkpoint_run_id(checkpoint_dir) if job.resume else None
    return MlflowTracker(
        ws.tracking_uri,
        ws.config.tracking.experiment,
        job.output,
        tags=tags,
        parent_run_id=_plan_parent_run(ws, job.plan) if job.plan and not resume_id else None,
        resume_run_id=resume_id,
        artifact_location=ws.expand(ws.config.tracking.artifacts),
    )


def _plan_parent_run(ws: Workspace, plan: str) -> str:
    """The MLflow run that every training run of a plan nests under (made once)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ws.tracking_uri)
    exp = client.get_experiment_by_name(ws.config.tracking.experiment)
    if exp is not None:
        found = client.search_runs(
            [exp.experiment_id], f"tags.`lineage.plan_parent` = '{plan}'", max_results=1
        )
        if found:
            return found[0].info.run_id
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(
            ws.config.tracking.experiment, artifact_location=ws.expand(ws.config.tracking.artifacts)
        )
    )
    spec = load_plan(ws, plan)
    run = client.create_run(exp_id, run_name=f"plan {plan}", tags={"lineage.plan_parent": plan})
    client.log_dict(run.info.run_id, spec.to_dict(), "plan.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_training(ws: Workspace, job: TrainJob, *, progress: bool = True) -> TrainOutcome:
    """Run ``job`` and register its result; resumable with ``job.resume``."""
    reg = ws.registry
    student = reg.model(job.student)
    if is_adapter(reg, student.name):
        raise LineageError(f"{student.name!r} is a LoRA adapter: train from its base model")
    if reg.has_model(job.output):
        raise ConflictError(f"a model named {job.output!r} is already registered")
    for d in job.domains:
        reg.domain(d)
    assigned, job = _assign(ws, job, student)
    replayed = _replay(ws, job, student)
    if replayed:
        reviewed = tuple(dict.fromkeys(a.blocks.shard.domain for a in replayed))
        job = dataclasses.replace(job, replay_domains=reviewed)
    assigned += replayed
    for teacher in {a.teacher for a in assigned if a.teacher is not None}:
        check_same_vocabulary(reg.model(teacher), student)  # before any record is written
    state = PartialState()
    run_dir = ws.root / "runs" / job.output
    out_dir = (ws.adapters_dir if job.lora else ws.models_dir) / job.output
    if out_dir.exists():
        raise ConflictError(f"{out_dir} already exists; choose another output name")
    if (run_dir / "checkpoints").exists() and not job.resume:
        raise ConflictError(
            f"an interrupted run of {job.output!r} exists in {run_dir}: pass --resume to continue "
            "it, or remove that folder"
        )
    main = state.is_main_process
    tracker = _tracker(ws, job, student, run_dir / "checkpoints", main)
    params = dataclasses.asdict(job)
    with recorded(reg, job.strategy, tracker, config=params, main=main, resume=job.resume) as rec:
        if main and not job.resume:  # a resumed run keeps its records
            tracker.log_params(params)
            for a in assigned:
                tracker.log_dataset(a.blocks.key, a.blocks.shard.digest, a.blocks.shard.path)
        result, teacher_params = _train(ws, job, student, assigned, tracker, run_dir, progress)
        self_ki = teacher_params.pop(student.name, None)  # the student taught itself: no ki edge
        model = None
        if main:
            try:
                model = _register(ws, job, student, result, teacher_params, self_ki)
            except BaseException:
                remove_unregistered(reg, job.output, out_dir)  # a rerun can --resume
                raise
            tracker.set_tags({"lineage.registered": model.name})
            rec.succeed(model.name)
    return TrainOutcome(model, result, result.run_id, teacher_params)


def _train(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    assigned: list[_Assigned],
    tracker: Tracker,
    run_dir: Path,
    progress: bool,
) -> tuple[TrainResult, dict[str, dict[str, Any]]]:
    """Teachers' caches, the sampler and the student; then the training loop itself."""
    state = PartialState()
    tokenizer = load_tokenizer(Path(student.path))
    info = TokenizerInfo.of(tokenizer)
    sources, online = _sources(ws, job, student, assigned, info, progress)
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
        eval_sets=_eval_sets(ws, job, student),
        objective=student.objective,
        out_dir=(ws.adapters_dir if job.lora else ws.models_dir) / job.output,
        checkpoint_dir=run_dir / "checkpoints",
        tracker=tracker,
        schedules=schedules,
        online_teachers=online,
        resume=job.resume,
        progress=progress,
        tokenizer=tokenizer,
        auto_samples=_auto_samples(ws, job, assigned, student, info),
    )
    return result, _teacher_params(job, assigned, schedules)


def _schedules(assigned: list[_Assigned]) -> dict[str, Any]:
    """One schedule object per teacher (AutoInheritance for "auto": it holds state)."""
    out: dict[str, Any] = {}
    for a in assigned:
        if a.teacher and a.schedule and a.teacher not in out:
            out[a.teacher] = (
                AutoInheritance(a.schedule) if a.schedule.kind == "auto" else a.schedule
            )
    return out


def _teacher_params(
    job: TrainJob, assigned: list[_Assigned], schedules: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, schedule in schedules.items():
        base = schedule.schedule if isinstance(schedule, AutoInheritance) else schedule
        params = {
            "schedule": base.to_dict(),
            "temperature": job.config.temperature,
            "top_k": job.top_k,
            "mode": job.teacher_mode,
            "plan": job.plan,
            "shards": [a.blocks.key for a in assigned if a.teacher == name],
        }
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
    with reg.transaction():  # the model with all its edges and evaluations, or nothing
        model = _register_rows(ws, job, student, result, teachers, self_ki, domains, info)
    ws.write_model_card(model.name)
    return model


def _register_rows(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    result: TrainResult,
    teachers: dict[str, dict[str, Any]],
    self_ki: dict[str, Any] | None,
    domains: list[str],
    info: ModelInfo,
) -> Model:
    reg = ws.registry
    model = reg.add_model(
        job.output,
        str(result.model_dir),
        info,
        domains=domains,
        description=f"{job.strategy.upper()}{' LoRA adapter' if job.lora else ''} from "
        f"{student.name} on {', '.join(job.domains)}",
    )
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
    known = {(e.domain, e.step) for e in reg.evaluations(model=student.name)}
    for domain in result.final_eval:
        if start and f"ppl/{domain}" in start and (domain, 0) not in known:
            reg.add_evaluation(
                student.name,
                domain,
                loss=start[f"eval_loss/{domain}"],
                ppl=start[f"ppl/{domain}"],
                mlflow_run_id=result.run_id,
            )
        final = result.final_eval[domain]
        reg.add_evaluation(
            model.name,
            domain,
            loss=final.loss,
            ppl=final.ppl,
            step=result.step,
            n_tokens=final.n_tokens,
            mlflow_run_id=result.run_id,
        )

"""Continual domain adaptation (papers/001 §3.3): post-train an existing model on new domains.

``adapt`` turns one request into training jobs: full fine-tuning (one job over all target
domains) or one LoRA adapter per domain; for KI the router picks a teacher per target shard
(``lineage.inherit.plans.create_plan``) unless a stored plan is given. Against forgetting (App. A.5:
"largely mitigated by reviewing"), a share R of the batches can replay the model's source
domains, and with self-KI those replay batches are taught by the model's own pre-adaptation
predictions, so source knowledge is inherited, not only re-learned. Every evaluation of each run
logs the forgetting on every source domain since step 0 on its MLflow run (curves against the
step), and all runs of one request share a ``lineage.study`` tag.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineage.continual.forgetting import (
    DomainForgetting,
    PerplexityMatrix,
    domain_forgetting,
    forgetting_metrics,
)
from lineage.distributed import on_main
from lineage.errors import LineageError
from lineage.files import check_name
from lineage.inherit.plans import compatible_teachers, create_plan, load_plan
from lineage.inherit.schedules import SCHEDULE_KINDS
from lineage.inherit.teachers import TEACHER_MODES
from lineage.models.shapes import DEFAULT_BLOCK_SIZE
from lineage.registry.entities import Model
from lineage.registry.modelinfo import check_block_size
from lineage.train.assign import source_domains
from lineage.train.job import STRATEGIES
from lineage.train.lora import LoraSpec, is_adapter
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, TrainOutcome, run_training
from lineage.workspace import Workspace

__all__ = ["AdaptJob", "Adapted", "adapt", "before_after_matrix", "teacher_candidates"]


@dataclass(frozen=True)
class AdaptJob:
    """What to adapt and how; every field one line of help (``lineage adapt`` mirrors them)."""

    model: str  # the registered, trained model to adapt (its domains are the sources)
    domains: tuple[str, ...]  # the new target domains
    output: str | None = None  # new model's name (LoRA over several domains: <output>-<domain>)
    strategy: str = "ki"  # "ki": teachers per shard (router or plan); "sl": self-learning
    plan: str | None = None  # a stored plan (name or id) instead of routing now
    teachers: tuple[str, ...] = ()  # the router's candidates (default: every compatible model)
    lora: LoraSpec | None = None  # one LoRA adapter per domain instead of full fine-tuning
    replay: float = 0.0  # share R of batches replaying the source domains ("reviewing")
    self_ki: bool = False  # replay batches taught by the model's own pre-adaptation predictions
    self_ki_alpha: float = 0.5  # constant inheritance rate of the self-KI term
    data_fraction: float = 1.0  # share of each target shard used (data-scarce adaptation)
    schedule: str = "linear"  # teachers' inheritance-rate schedule when the router plans
    schedule_params: dict[str, Any] = field(default_factory=dict)  # its parameters
    teacher_mode: str = "cached"  # "cached" (top-K logit caches) or "online"
    build_caches: bool = True  # build missing teacher caches (False: refuse, naming them)
    top_k: int = 10  # teacher logits kept per target
    block_size: int = DEFAULT_BLOCK_SIZE  # tokens per block
    config: TrainConfig = field(default_factory=TrainConfig)
    study: str | None = None  # MLflow tag lineage.study; default "adapt <model> to <domains>"

    def __post_init__(self) -> None:
        if self.output is not None:
            check_name(self.output, "output")
        if self.strategy not in STRATEGIES:
            raise LineageError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if not self.domains and self.plan is None:
            raise LineageError("name at least one --domain to adapt to")
        if (self.plan is not None or self.teachers) and self.strategy != "ki":
            raise LineageError("--plan and --teacher choose KI teachers: use --strategy ki")
        if self.plan is not None and self.teachers:
            raise LineageError("give --plan or --teacher candidates, not both")
        if self.plan is not None and self.lora is not None and len(self.domains) > 1:
            raise LineageError("LoRA trains one adapter per domain: give one domain with --plan")
        if self.schedule not in SCHEDULE_KINDS:
            raise LineageError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}")
        if self.teacher_mode not in TEACHER_MODES:
            raise LineageError(f"teacher mode must be one of {', '.join(TEACHER_MODES)}")


@dataclass(frozen=True)
class Adapted:
    """One adaptation run: the new model (or adapter), its plan, and what it forgot."""

    outcome: TrainOutcome
    plan: str | None  # the plan that chose its teachers (KI)
    forgetting: dict[str, DomainForgetting]  # per source domain, before vs after this run
    metrics: dict[str, float]  # what was logged on the MLflow run

    @property
    def model(self) -> Model | None:
        return self.outcome.model


def teacher_candidates(ws: Workspace, base: Model) -> list[str]:
    """The router's candidates for adapting ``base``: what ``teachers="auto"`` offers."""
    return [m.name for m in compatible_teachers(ws.registry, base)]


def before_after_matrix(
    base: str,
    adapted: str,
    sources: list[str],
    targets: list[str],
    before: dict[str, float],
    after: dict[str, float],
) -> PerplexityMatrix:
    """The two-generation matrix of one run: row 0 the base (``before``: domain -> PPL at step
    0), row 1 the adapted model (``after``: at the last step), which learned ``targets``."""
    domains = tuple(dict.fromkeys([*sources, *targets, *before, *after]))
    rows = [[float(r.get(d, math.nan)) for d in domains] for r in (before, after)]
    return PerplexityMatrix(
        (base, adapted), domains, np.array(rows), (tuple(sources), tuple(targets))
    )


def _groups(ws: Workspace, job: AdaptJob) -> list[tuple[str, tuple[str, ...]]]:
    """(output name, target domains) per training run: one run, or one adapter per domain."""
    domains = job.domains or tuple(load_plan(ws, job.plan).domains)  # type: ignore[arg-type]
    tag = f"{job.strategy}{'-lora' if job.lora else ''}"
    if job.lora is None or len(domains) == 1:
        default = f"{job.model}-{tag}-{'-'.join(domains)}"
        return [(default if job.output is None else job.output, domains)]
    stem = f"{job.model}-{tag}" if job.output is None else job.output
    return [(f"{stem}-{d}", (d,)) for d in domains]


def _plan_for(ws: Workspace, job: AdaptJob, base: Model, domains: tuple[str, ...]) -> str | None:
    """The plan that teaches these domains: the given one (checked), or routed now."""
    if job.strategy == "sl":
        return None
    if job.plan is not None:
        spec = load_plan(ws, job.plan)
        if set(spec.domains) != set(domains):
            raise LineageError(
                f"plan {job.plan!r} covers {', '.join(spec.domains)}, not {', '.join(domains)}"
            )
        return job.plan
    candidates = list(job.teachers) or teacher_candidates(ws, base)
    if not candidates:
        raise LineageError(f"no registered model shares {base.name!r}'s tokenizer to teach it")

    def plan() -> str:  # stored by the main process alone; every rank trains by it
        return create_plan(
            ws,
            student=base.name,
            domains=domains,
            teachers=candidates,
            steps=job.config.steps,
            schedule=job.schedule,
            schedule_params=job.schedule_params,
            temperature=job.config.temperature,
            top_k=job.top_k,
        ).name

    return on_main(plan, f"planning the teachers of {', '.join(domains)}")


def study_name(job: AdaptJob, domains: tuple[str, ...]) -> str:
    """The ``lineage.study`` of the request's runs: every adaptation of one model to the same
    domains is one study (SL, KI, replay, LoRA side by side), unless ``job.study`` names it."""
    return job.study or f"adapt {job.model} to {'+'.join(sorted(domains))}"


def _train_job(job: AdaptJob, output: str, domains: tuple[str, ...], plan: str | None) -> TrainJob:
    # Evaluate at step 0 at least: those numbers are the "before" of forgetting.
    config = job.config
    if config.eval_every == 0:
        config = dataclasses.replace(config, eval_every=config.steps)
    return TrainJob(
        student=job.model,
        output=output,
        domains=domains,
        strategy=job.strategy,
        plan=plan,
        teacher_mode=job.teacher_mode,
        build_caches=job.build_caches,
        top_k=job.top_k,
        block_size=job.block_size,
        data_fraction=job.data_fraction,
        config=config,
        replay=job.replay,
        self_ki=job.self_ki,
        self_ki_alpha=job.self_ki_alpha,
        lora=job.lora,
        study=study_name(job, job.domains or domains),
    )


def adapt(ws: Workspace, job: AdaptJob, *, progress: bool = True) -> list[Adapted]:
    """Run the adaptation ``job``: one run (full), or one per domain (LoRA); each registered
    with an adapt/adapter edge, evaluations on targets and sources, forgetting metrics."""
    reg = ws.registry
    base = reg.model(job.model)
    if is_adapter(reg, base.name):
        raise LineageError(f"{base.name!r} is a LoRA adapter: adapt its base model")
    sources = source_domains(ws, base)
    if not sources:
        raise LineageError(
            f"{base.name!r} was not trained on any domain: adaptation continues a trained model "
            "(use `lineage train` for a new one)"
        )
    check_block_size(base.name, Path(base.path), job.block_size)
    for d in job.domains:
        reg.domain(d)  # unknown names fail before any work
    out: list[Adapted] = []
    for output, domains in _groups(ws, job):
        plan = _plan_for(ws, job, base, domains)
        outcome = run_training(ws, _train_job(job, output, domains, plan), progress=progress)
        result = outcome.result
        start = result.history[0] if result.history and result.history[0]["step"] == 0 else {}
        before = {k[4:]: v for k, v in start.items() if k.startswith("ppl/")}
        after = {d: e.ppl for d, e in result.final_eval.items()}
        old = [d for d in sources if d not in domains]
        matrix = before_after_matrix(base.name, output, old, list(domains), before, after)
        metrics = forgetting_metrics(matrix)  # the loop logged these at every evaluation
        out.append(Adapted(outcome, plan, domain_forgetting(matrix), metrics))
    return out

"""Who teaches what in a training job: the target shards with their teachers and schedules (from
a plan or the shortcut options), the replayed source-domain shards, the sampler's sources
(cached or online teachers), the evaluation sets and the held-out samples of automatic
schedules."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lineage.corpora.batches import BlockShard, ShardSource
from lineage.corpora.blocks import ShardBlocks, fraction_blocks, shard_blocks, valid_blocks
from lineage.corpora.tokenizer import TokenizerInfo
from lineage.errors import ConflictError, LineageError
from lineage.inherit.cache import CachedShard
from lineage.inherit.cache_costs import PlannedCache, plan_teacher_caches
from lineage.inherit.plans import load_plan
from lineage.inherit.schedules import InheritanceSchedule, guided_steps_for
from lineage.inherit.teachers import ensure_cache
from lineage.models.modeling import load_model
from lineage.registry.entities import Model
from lineage.train.config import AutoSample
from lineage.train.job import TrainJob
from lineage.workspace import Workspace


@dataclass
class Assigned:
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
    steps = job.config.steps
    default = guided_steps_for(teacher.layers, student.layers, steps, objective=student.objective)
    return InheritanceSchedule.from_options(job.schedule, total_steps=steps, default_steps=default)


def assign_shards(ws: Workspace, job: TrainJob, student: Model) -> tuple[list[Assigned], TrainJob]:
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
                Assigned(blocks, sp.teacher, schedules.get(sp.teacher) if sp.teacher else None)
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
            assigned.append(Assigned(blocks, teacher.name if teacher else None, schedule))
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


def replay_shards(ws: Workspace, job: TrainJob, student: Model) -> list[Assigned]:
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
        Assigned(shard_blocks(ws, s, Path(student.path), job.block_size), teacher, schedule, True)
        for d in domains
        for s in ws.registry.shards(d, split="train")
    ]


def _scarce(blocks: ShardBlocks, fraction: float) -> ShardBlocks:
    keep = fraction_blocks(len(blocks.blocks), fraction)
    return dataclasses.replace(blocks, blocks=blocks.blocks[:keep])


def _read_blocks(job: TrainJob, a: Assigned) -> int:
    """How many of the shard's first blocks the job reads (its data fraction of a target)."""
    n = len(a.blocks.blocks)
    return fraction_blocks(n, job.data_fraction) if job.data_fraction < 1 and not a.replay else n


def planned_caches(ws: Workspace, job: TrainJob, assigned: list[Assigned]) -> list[PlannedCache]:
    """The teacher caches the job reads (cached mode), found or to build with estimates: each
    covers the blocks the job reads of its shard (``find_cache``'s rule)."""
    if job.teacher_mode != "cached":
        return []
    by_teacher: dict[str, list[tuple[ShardBlocks, int]]] = {}
    for a in assigned:
        if a.teacher is not None:
            by_teacher.setdefault(a.teacher, []).append((a.blocks, _read_blocks(job, a)))
    out: list[PlannedCache] = []
    for name, shards in by_teacher.items():
        out += plan_teacher_caches(
            ws, ws.registry.model(name), shards, top_k=job.top_k,
            mask_probability=job.mask_probability, mask_draws=job.mask_draws,
        )  # fmt: skip
    return out


def shard_sources(
    ws: Workspace,
    job: TrainJob,
    student: Model,
    assigned: list[Assigned],
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
            sources.append(
                BlockShard(
                    blocks.key,
                    blocks.blocks,
                    student.objective,
                    info,
                    mask_probability=job.mask_probability,
                )
            )
            continue
        teacher = reg.model(a.teacher)
        if job.teacher_mode == "online":
            if a.teacher not in online:
                online[a.teacher] = load_model(Path(teacher.path))
            sources.append(
                BlockShard(
                    blocks.key,
                    blocks.blocks,
                    student.objective,
                    info,
                    teacher=a.teacher,
                    mask_probability=job.mask_probability,
                )
            )
        else:
            cache = ensure_cache(
                ws,
                teacher,
                a.blocks,
                top_k=job.top_k,
                progress=progress,
                mask_probability=job.mask_probability,
                max_blocks=len(blocks.blocks),
                mask_draws=job.mask_draws,
            )
            shard = cache.shard(blocks.key, a.teacher, top_k=job.top_k)
            sources.append(_ScarceCached(shard, len(blocks.blocks)))
    return sources, online


def cache_params(sources: list[ShardSource]) -> dict[str, list[dict[str, Any]]]:
    """Per teacher, the caches its shards are served from: path, the cache's K (≥ the K used)
    and format version."""
    out: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        inner = getattr(source, "inner", source)
        if isinstance(inner, CachedShard) and inner.teacher is not None:
            cache = inner.cache
            out.setdefault(inner.teacher, []).append(
                {
                    "shard": inner.name,
                    "path": str(cache.path),
                    "cache_top_k": cache.meta.top_k,
                    "format": cache.format_version,
                    "mask_draws": cache.draws,
                }
            )
    return out


class _ScarceCached:
    """A cached shard limited to its first ``n`` blocks (the cache may cover more)."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n = inner, min(n, len(inner))
        self.name, self.teacher = inner.name, inner.teacher

    def __len__(self) -> int:
        return self.n

    def batch(
        self, indices: Sequence[int], generator: Any, epochs: Sequence[int] | None = None
    ) -> Any:
        return self.inner.batch(indices, generator, epochs)


def eval_sets(ws: Workspace, job: TrainJob, student: Model) -> dict[str, np.ndarray]:
    """Valid blocks of the target domains AND every source domain (forgetting, as it happens)."""
    names = list(dict.fromkeys([*job.domains, *source_domains(ws, student)]))
    limit = job.config.eval_blocks
    return {d: valid_blocks(ws, d, Path(student.path), job.block_size, limit) for d in names}


def auto_samples(
    ws: Workspace, job: TrainJob, assigned: list[Assigned], student: Model
) -> dict[str, AutoSample]:
    """Held-out blocks of each auto-scheduled teacher's domains, with the teacher's model (the
    loop measures it once, as it measures the student)."""
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
        out[a.teacher] = AutoSample(blocks=blocks, teacher=teacher)
    return out

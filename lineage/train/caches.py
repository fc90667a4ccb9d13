"""``lineage cache build`` as a job: a teacher's top-K caches over the train shards of some
domains, all of each shard or its first blocks (``max_blocks`` / ``data_fraction``), listed with
their estimated cost before anything is built."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lineage.corpora.blocks import ShardBlocks, domain_blocks, fraction_blocks
from lineage.distributed import process_state
from lineage.errors import LineageError
from lineage.inherit.cache_build import DEFAULT_MASK_DRAWS
from lineage.inherit.cache_costs import PlannedCache, plan_teacher_caches
from lineage.inherit.teachers import ensure_cache
from lineage.models.modeling import load_model
from lineage.registry.entities import Cache
from lineage.registry.modelfiles import check_model_files
from lineage.registry.modelinfo import check_block_size
from lineage.train.runs import job_tracker, recorded
from lineage.workspace import Workspace


def blocks_wanted(n_blocks: int, max_blocks: int | None, data_fraction: float | None) -> int:
    """How many of a shard's first blocks a cache covers: ``max_blocks`` or ``data_fraction``
    of them (the count ``train --data-fraction`` reads), at most one of the two; all by default."""
    if max_blocks is not None and data_fraction is not None:
        raise LineageError("give --max-blocks or --data-fraction, not both")
    if max_blocks is not None:
        if max_blocks < 1:
            raise LineageError(f"--max-blocks must be at least 1, not {max_blocks}")
        return min(max_blocks, n_blocks)
    if data_fraction is not None:
        return fraction_blocks(n_blocks, data_fraction)
    return n_blocks


def build_caches(
    ws: Workspace,
    teacher_name: str,
    domains: Sequence[str],
    *,
    top_k: int = 10,
    block_size: int,
    progress: bool = True,
    mask_probability: float = 0.15,
    format_version: int | None = None,
    max_blocks: int | None = None,
    data_fraction: float | None = None,
    announce: Callable[[list[PlannedCache]], None] | None = None,
    mask_draws: int = DEFAULT_MASK_DRAWS,
) -> list[Cache]:
    """``lineage cache build``: the teacher's caches for every train shard of ``domains`` (each
    over its first ``blocks_wanted`` blocks), as one job (an MLflow run and a registry run,
    FAILED with the error if anything raises). A shard that already has a cache of at least
    ``top_k`` over at least those blocks keeps it (it serves this K too); ``format_version`` is
    that of the caches built (default: ``build_cache``'s). ``announce`` is given the list of
    caches with their estimates before any is built. MLM caches hold ``mask_draws`` masks of
    every block (a student reads draw ``epoch mod mask_draws``). Returns the caches serving the
    request."""
    reg = ws.registry
    teacher = reg.model(teacher_name)
    blocks_wanted(1, max_blocks, data_fraction)  # bad options fail before any work
    check_block_size(teacher.name, Path(teacher.path), block_size)
    check_model_files(teacher, "teacher")
    ws.child_path(ws.caches_dir, teacher.name)  # a name from an old registry cannot escape
    if top_k < 1 or top_k > max(teacher.vocab_size, 1):
        raise LineageError(f"top-K must be in [1, {teacher.vocab_size}] (the vocabulary): {top_k}")
    for domain in domains:
        reg.domain(domain)
    params = {"teacher": teacher_name, "domains": list(domains), "top_k": top_k}
    params |= {"block_size": block_size, "format": format_version}
    params |= {"max_blocks": max_blocks, "data_fraction": data_fraction}
    if teacher.objective == "mlm":
        params["mask_probability"] = mask_probability
        params["mask_draws"] = mask_draws
    main = process_state().is_main_process
    tags = {"lineage.teacher": teacher_name, "lineage.strategy": "cache"}
    tracker = job_tracker(ws, f"cache {teacher_name}", tags, main=main)
    with recorded(reg, "cache", tracker, config=params, main=main):
        tracker.log_params(params)
        lm = load_model(Path(teacher.path))
        shards: list[tuple[ShardBlocks, int]] = [
            (b, blocks_wanted(len(b.blocks), max_blocks, data_fraction))
            for domain in domains
            for b in domain_blocks(ws, domain, "train", Path(teacher.path), block_size)
        ]
        planned = plan_teacher_caches(
            ws, teacher, shards, top_k=top_k, mask_probability=mask_probability,
            format_version=format_version, load_teacher=lambda: lm, mask_draws=mask_draws,
        )  # fmt: skip
        if announce is not None and main:
            announce(planned)
        tracker.log_metrics({"estimated_seconds": sum(p.seconds or 0.0 for p in planned)}, step=0)
        paths = set()
        for blocks, need in shards:
            cache = ensure_cache(
                ws, teacher, blocks, top_k=top_k, lm=lm, progress=progress,
                mask_probability=mask_probability, format_version=format_version,
                max_blocks=need, mask_draws=mask_draws,
            )  # fmt: skip
            paths.add(Path(cache.path).resolve())
        caches = [c for c in reg.caches(teacher_name) if Path(c.path).resolve() in paths]
        tracker.log_metrics({"caches": len(caches)}, step=0)
    return caches

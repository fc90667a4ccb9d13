"""What a job's teacher caches will cost, said before anything is built: per teacher and shard,
the blocks a cache covers, its K, whether a registered cache already serves it, and for those to
build an estimated time (the teacher's forward timed on two blocks, extrapolated) and size.

``lineage cache build``, ``lineage train`` and ``lineage adapt`` print this list first;
``--no-build-caches`` turns a missing cache into a refusal that names it (README, CLI tour).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lineage.corpora.blocks import ShardBlocks
from lineage.errors import LineageError
from lineage.inherit.cache_build import (
    DEFAULT_MASK_DRAWS,
    MAX_CODED_K,
    forward_seconds_per_block,
)
from lineage.inherit.cache_parts import index_dtype
from lineage.inherit.teachers import DEFAULT_MASK_PROBABILITY, cache_dir, find_cache
from lineage.registry.entities import Model
from lineage.workspace import Workspace

# Format 2 bytes per target, ~1.4 per kept logit plus the row's overhead: the trained teachers
# of benchmarks/README (K = 10: 13-16 B/token with the 2 B of inputs, K = 64: 78-98).
_CODED_BYTES_PER_K = 1.4
_CODED_ROW_BYTES = 0.5
_NPY_HEADER = 128  # bytes of each .npy file's header
_TABLE_SHARE = 4  # the codec tables hold about a quarter of the ids (10-21 kB at V = 32,000)


@dataclass(frozen=True)
class PlannedCache:
    """One teacher cache a job needs: found (``existing``) or to be built (with estimates)."""

    teacher: str
    shard: str  # domain/shard
    blocks: int  # the shard's first blocks the cache covers
    shard_blocks: int  # blocks in the whole shard
    top_k: int
    path: str
    existing: bool  # a registered cache serves it: nothing to build
    seconds: float | None = None  # estimated build time (teacher forward, extrapolated)
    bytes: int | None = None  # estimated size on disk

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_bytes(
    n_blocks: int,
    block_size: int,
    top_k: int,
    objective: str,
    vocab: int,
    mask_probability: float = DEFAULT_MASK_PROBABILITY,
    format_version: int | None = None,
    mask_draws: int = 1,
) -> int:
    """A cache's size on disk, from its shape: exact for format 1 (give or take the headers),
    the measured bytes per kept logit for format 2 (the default up to K = 256); an MLM cache
    of ``mask_draws`` draws holds every block that many times."""
    coded = (format_version or (2 if top_k <= MAX_CODED_K else 1)) >= 2
    index = index_dtype(vocab).itemsize
    per_block = block_size - 1 if objective == "clm" else mask_probability * block_size
    masks = index_dtype(block_size).itemsize + index  # positions and labels
    if coded:
        row = _CODED_BYTES_PER_K * top_k + _CODED_ROW_BYTES + (masks if objective == "mlm" else 0)
        files = 7 + (2 if objective == "mlm" else 0)  # 4 arrays a part, 3 codec tables
        fixed = _NPY_HEADER * files + vocab * index // _TABLE_SHARE
    else:
        row = top_k * (index + 2) + masks
        fixed = _NPY_HEADER * 6
    rows = n_blocks * (mask_draws if objective == "mlm" else 1)
    return int(fixed + rows * (block_size * index + 16 + per_block * row))


def plan_teacher_caches(
    ws: Workspace,
    teacher: Model,
    shards: Sequence[tuple[ShardBlocks, int]],
    *,
    top_k: int,
    mask_probability: float = DEFAULT_MASK_PROBABILITY,
    format_version: int | None = None,
    load_teacher: Callable[[], Any] | None = None,
    mask_draws: int = DEFAULT_MASK_DRAWS,
) -> list[PlannedCache]:
    """The caches of ``teacher`` over ``shards`` (each with the number of its first blocks the
    job reads): found ones as they are; for the others the estimates, timing the teacher (from
    ``load_teacher``, default ``load_model``) once on the first shard to build."""
    out: list[PlannedCache] = []
    per_block: float | None = None
    draws = mask_draws if teacher.objective == "mlm" else 1  # the teacher runs on every draw
    for blocks, need in shards:
        total = len(blocks.blocks)
        need = max(1, min(need, total))
        found = find_cache(ws, teacher, blocks, top_k, mask_probability, need, draws)
        path = found or cache_dir(ws, teacher, blocks, top_k, mask_probability, need, draws)
        item = PlannedCache(
            teacher.name, blocks.key, need, total, top_k, str(path), found is not None
        )
        if found is None:
            if per_block is None:
                per_block = _time_teacher(teacher, blocks, top_k, load_teacher)
            size = estimate_bytes(
                need, blocks.blocks.shape[1], top_k, str(teacher.objective),
                int(teacher.vocab_size), mask_probability, format_version, draws,
            )  # fmt: skip
            seconds = per_block * need * draws
            item = PlannedCache(**{**item.to_dict(), "seconds": seconds, "bytes": size})
        out.append(item)
    return out


def _time_teacher(
    teacher: Model, blocks: ShardBlocks, top_k: int, load_teacher: Callable[[], Any] | None
) -> float:
    if load_teacher is None:
        from lineage.models.modeling import load_model

        lm = load_model(Path(teacher.path))
    else:
        lm = load_teacher()
    return forward_seconds_per_block(lm, blocks.blocks, top_k)


def describe(planned: Sequence[PlannedCache]) -> list[str]:
    """One line per cache: what is built (with its estimates) and what is reused."""
    lines = []
    for p in planned:
        span = (
            f"{p.blocks} of {p.shard_blocks} blocks"
            if p.blocks < p.shard_blocks
            else (f"{p.blocks} blocks")
        )
        if p.existing:
            lines.append(f"reuse  {p.teacher} on {p.shard}: {span}, K = {p.top_k}")
        else:
            lines.append(
                f"build  {p.teacher} on {p.shard}: {span}, K = {p.top_k}, "
                f"~{_duration(p.seconds or 0.0)}, ~{_size(p.bytes or 0)}"
            )
    to_build = [p for p in planned if not p.existing]
    if len(to_build) > 1:
        total = sum(p.seconds or 0.0 for p in to_build)
        size = sum(p.bytes or 0 for p in to_build)
        lines.append(f"total  {len(to_build)} caches to build, ~{_duration(total)}, ~{_size(size)}")
    return lines


def refuse_missing(planned: Sequence[PlannedCache]) -> None:
    """``--no-build-caches``: a job whose caches are not all built stops here, naming them."""
    missing = [p for p in planned if not p.existing]
    if missing:
        names = "; ".join(f"{p.teacher} on {p.shard} ({p.blocks} blocks, K = {p.top_k})"
                          for p in missing)  # fmt: skip
        raise LineageError(
            f"--no-build-caches: {len(missing)} teacher cache(s) missing: {names} "
            "(build them with `lineage cache build`, or drop --no-build-caches)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"

"""Building a teacher top-K logit cache (the format: ``lineage.inherit.cache``): run the teacher
once over a shard's blocks, one part per rank, and publish the directory atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from lineage.distributed import broadcast, process_state
from lineage.errors import ConflictError, LineageError
from lineage.inherit.cache import (
    CODEC_DIR,
    FORMAT_VERSION,
    MANIFEST,
    CacheManifest,
    CacheMeta,
    MaskSpec,
    PartInfo,
    _read_manifest,
)
from lineage.inherit.cache_parts import (
    PartSpec,
    block_targets,
    build_part,
    calibrate_codec,
    file_info,
    index_dtype,
    teacher_topk,
)
from lineage.inherit.codec import DEFAULT_STEP

if TYPE_CHECKING:  # transformers is slow to import and only named in annotations here
    from transformers import PreTrainedModel

_HASH_ROWS_BYTES = 1 << 24  # read blocks 16 MiB at a time when hashing a memory-mapped shard
MAX_CODED_K = 256  # format 2 up to this K; wider rows (a full distribution) stay format 1
DEFAULT_MASK_DRAWS = 4  # MLM caches of a workspace: masks per block (epoch e reads e mod 4)


# ---------------------------------------------------------------- identity


def blocks_digest(blocks: np.ndarray) -> str:
    """sha256 of the blocks' bytes in row-major order, read in chunks (blocks may be mmapped)."""
    h = hashlib.sha256()
    rows = max(1, _HASH_ROWS_BYTES // max(1, blocks[:1].nbytes))
    for s in range(0, len(blocks), rows):
        h.update(np.ascontiguousarray(blocks[s : s + rows]).data)
    return h.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes), in name order."""
    return state_digest(model.state_dict())


def state_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


# ---------------------------------------------------------------- building


def _part_span(n_blocks: int, world: int, rank: int) -> tuple[int, int]:
    return n_blocks * rank // world, n_blocks * (rank + 1) // world


def _complete_meta(
    meta: CacheMeta, teacher: PreTrainedModel, top_k: int, objective: str, block_size: int
) -> CacheMeta:
    """``meta`` with K, objective and T from the build; fields the caller set must agree."""
    built = replace(meta, top_k=top_k, objective=objective, block_size=block_size)
    if built.teacher_name is None:
        built = replace(built, teacher_name=getattr(teacher.config, "name_or_path", "") or "")
    if built.teacher_digest is None:
        built = replace(built, teacher_digest=weights_digest(teacher))
    diffs = meta.mismatches(built)
    if diffs:
        raise LineageError("meta disagrees with the build arguments: " + "; ".join(diffs))
    return built


def _lineage_version() -> str:
    try:
        return metadata.version("lineage")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_blocks(blocks: np.ndarray) -> None:
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise LineageError(f"blocks must be [n_blocks, block_size >= 2], got {blocks.shape}")
    if not np.issubdtype(blocks.dtype, np.integer):
        raise LineageError(f"blocks must hold token ids (integers), got {blocks.dtype}")


def _masking(
    objective: str,
    mask_token_id: int | None,
    vocab: int,
    special_ids: Sequence[int],
    probability: float,
    seed: int,
    draws: int,
) -> MaskSpec | None:
    if objective != "mlm":
        if draws != 1:
            raise LineageError(f"mask draws are for MLM caches; a causal cache has 1, not {draws}")
        return None
    if mask_token_id is None:
        raise LineageError("an MLM cache needs mask_token_id")
    if draws < 1:
        raise LineageError(f"mask draws must be at least 1, not {draws}")
    return MaskSpec(
        int(mask_token_id), vocab, tuple(int(i) for i in special_ids), probability, seed, draws
    )


def _format_for(k: int, format_version: int | None) -> int:
    """The format to write: by default 2, but 1 for rows wider than MAX_CODED_K (a full
    distribution: every id is in every row, so coding the ids gains nothing)."""
    if format_version is None:
        return FORMAT_VERSION if k <= MAX_CODED_K else 1
    if format_version not in (1, 2):
        raise LineageError(f"cache format must be 1 or 2, not {format_version}")
    if format_version == 2 and k > MAX_CODED_K:
        raise LineageError(f"format 2 codes at most K = {MAX_CODED_K}; use format 1 for K = {k}")
    return format_version


def build_cache(
    teacher: PreTrainedModel,
    blocks: np.ndarray,
    out_dir: Path,
    *,
    objective: Literal["mlm", "clm"],
    meta: CacheMeta,
    top_k: int | Literal["full"] = 10,
    mask_seed: int = 0,
    mask_probability: float = 0.15,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    special_ids: Sequence[int] = (),
    mask_token_id: int | None = None,
    vocab_size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    format_version: int | None = None,
    codec_step: float = DEFAULT_STEP,
    shard_blocks: int | None = None,
    mask_draws: int = 1,
) -> CacheManifest:
    """Run ``teacher`` once over ``blocks`` [n, T] and write its top-K logits to ``out_dir``.

    Under ``accelerate launch`` every rank builds one contiguous part and the main process writes
    the manifest; single-process it is one part. The cache appears atomically (built in a temp
    dir beside ``out_dir``, then renamed); a failed build leaves nothing. ``vocab_size`` is the
    range of MLM's random replacement tokens (default: the teacher's vocabulary). The teacher is
    moved to ``device`` (default: this rank's) and run in eval mode, bf16 autocast on CUDA.
    ``format_version``: 2 (coded rows; the default up to K = MAX_CODED_K) or 1 (plain arrays);
    ``codec_step``: format 2's value grid in nats (``lineage.inherit.codec``);
    ``shard_blocks``: the whole shard's block count when ``blocks`` are only its first rows
    (recorded in the manifest: such a cache never serves a job that reads the whole shard).
    ``mask_draws``: MLM masks per block (workspaces build ``DEFAULT_MASK_DRAWS``): the teacher
    runs on every draw (draw d of block i masked by ``block_generator(mask_seed, d·n + i)``)
    and the trainer reads draw ``epoch mod mask_draws``; causal caches have one.
    """
    state = process_state()  # CPU ranks on gloo (else each would build the whole cache alone)
    _check_blocks(blocks)
    if shard_blocks is not None and shard_blocks < len(blocks):
        raise LineageError(f"shard_blocks {shard_blocks} < the {len(blocks)} blocks given")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConflictError(f"{out_dir} already exists (pass overwrite=True to rebuild)")
    vocab = int(teacher.config.vocab_size)
    k = vocab if top_k == "full" else int(top_k)
    if not 1 <= k <= vocab:
        raise LineageError(f"top_k must be in 1..{vocab} (the vocabulary size), not {top_k}")
    masking = _masking(
        objective, mask_token_id, vocab_size or vocab, special_ids, mask_probability, mask_seed,
        mask_draws,
    )  # fmt: skip
    rows = len(blocks) * (1 if masking is None else masking.draws)
    full_meta = _complete_meta(meta, teacher, k, objective, blocks.shape[1])
    run_device = torch.device(device) if device is not None else state.device
    spec = PartSpec(
        objective, k, masking, index_dtype(vocab), batch_size, run_device,
        progress and state.is_main_process, _format_for(k, format_version),
    )  # fmt: skip
    tmp = _shared_tmp_dir(out_dir, state)
    was_training = teacher.training
    teacher.eval().to(run_device)
    try:
        first = None
        if spec.format_version >= 2:
            spec, first = calibrate_codec(teacher, blocks, spec, state, vocab, codec_step)
        span = _part_span(rows, state.num_processes, state.process_index)
        part_dir = tmp / f"part-{state.process_index:05d}"
        part = build_part(teacher, blocks, part_dir, span, spec, first)
        (part_dir / "part.json").write_text(json.dumps(asdict(part)))
        state.wait_for_everyone()
        if state.is_main_process:
            manifest = _merge_manifest(tmp, state.num_processes, full_meta, blocks, spec, vocab)
            if shard_blocks is not None and shard_blocks > len(blocks):
                manifest = replace(manifest, shard_blocks=shard_blocks)
            _publish(tmp, out_dir, manifest, overwrite)
        state.wait_for_everyone()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        teacher.train(was_training)
    return _read_manifest(out_dir)


def forward_seconds_per_block(
    teacher: PreTrainedModel,
    blocks: np.ndarray,
    top_k: int,
    device: torch.device | str | None = None,
    sample: int = 2,
) -> float:
    """Seconds per block of the teacher's forward and top-K (a build's main cost), timed on the
    first ``sample`` blocks after a one-block warm-up: what a cache build's estimate
    extrapolates from (coding and writing add a few per cent on CPU; bench_real_checkpoint)."""
    import time

    _check_blocks(blocks)
    run_device = torch.device(device) if device is not None else process_state().device
    was_training = teacher.training
    teacher.eval().to(run_device)
    k = min(int(top_k), int(teacher.config.vocab_size))
    try:
        n = min(sample, len(blocks))
        for rows in (blocks[:1], blocks[:n]):  # warm-up, then the timed batch
            inputs, labels = block_targets(rows, 0, "clm", None)
            start = time.perf_counter()
            values, _ = teacher_topk(teacher, inputs, labels, k, run_device)
            values.cpu()  # waits for an accelerator
            elapsed = time.perf_counter() - start
    finally:
        teacher.train(was_training)
    return elapsed / n


def _shared_tmp_dir(out_dir: Path, state: Any) -> Path:
    """A fresh temp dir beside ``out_dir`` (same filesystem, so the final rename is atomic)."""
    # Not mkdtemp: its 0700 mode would survive the rename and hide the cache from other users.
    name = Path(broadcast(str(out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.partial"))))
    if state.is_main_process:
        name.mkdir(parents=True)
    state.wait_for_everyone()
    return name


def _merge_manifest(
    tmp: Path, world: int, meta: CacheMeta, blocks: np.ndarray, spec: PartSpec, vocab: int
) -> CacheManifest:
    """The manifest over every rank's part (read from the part.json each rank left); for
    format 2 the codec tables are written here, once."""
    parts = []
    for rank in range(world):
        part_json = tmp / f"part-{rank:05d}" / "part.json"
        parts.append(PartInfo.from_dict(json.loads(part_json.read_text())))
        part_json.unlink()
    files = {}
    if spec.tables is not None:
        (tmp / CODEC_DIR).mkdir()
        for name, array in spec.tables.to_files().items():
            np.save(tmp / CODEC_DIR / f"{name}.npy", array)
            files[f"{CODEC_DIR}/{name}"] = file_info(tmp / CODEC_DIR / f"{name}.npy")
    return CacheManifest(
        meta=meta,
        vocab_size=vocab,
        n_blocks=len(blocks),
        n_targets=sum(p.n_targets for p in parts),
        blocks_sha256=blocks_digest(blocks),
        blocks_dtype=str(blocks.dtype),
        index_dtype=str(spec.index_dtype),
        masking=spec.masking,
        parts=tuple(parts),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        lineage_version=_lineage_version(),
        format_version=spec.format_version,
        codec=None if spec.codec is None else spec.codec.to_dict(),
        files=files,
    )


def _publish(tmp: Path, out_dir: Path, manifest: CacheManifest, overwrite: bool) -> None:
    """Write the manifest last, then rename the finished temp dir into place."""
    (tmp / MANIFEST).write_text(manifest.to_json())
    old = None
    if overwrite and out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

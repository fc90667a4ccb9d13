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
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lineage.corpora.batches import IGNORE_INDEX, mlm_mask
from lineage.distributed import broadcast, process_state
from lineage.errors import ConflictError, LineageError
from lineage.files import sha256_file
from lineage.inherit.cache import (
    ARRAYS,
    MANIFEST,
    CacheManifest,
    CacheMeta,
    FileInfo,
    MaskSpec,
    PartInfo,
    _read_manifest,
)

if TYPE_CHECKING:  # transformers is slow to import and only named in annotations here
    from transformers import PreTrainedModel

_FP16_MAX = float(np.finfo(np.float16).max)
_HASH_ROWS_BYTES = 1 << 24  # read blocks 16 MiB at a time when hashing a memory-mapped shard


# ---------------------------------------------------------------- pure helpers


def index_dtype(n: int) -> np.dtype:
    """Smallest unsigned dtype holding every value in ``0 .. n - 1`` (uint16 up to 65,536)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def block_generator(seed: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, block index): masks do not depend on batching or rank."""
    mixed = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def block_targets(
    blocks: np.ndarray, start: int, objective: str, masking: MaskSpec | None
) -> tuple[Tensor, Tensor]:
    """The teacher's inputs and the labels for blocks ``start .. start + b - 1`` of a shard.

    blocks: [b, T] unsigned -> (inputs [b, T] long, labels [b, T] long, ``IGNORE_INDEX`` off
    target). Causal: inputs are the blocks, labels the next tokens. MLM: each block is masked
    by ``mlm_mask`` with ``block_generator(masking.seed, start + i)``.
    """
    tokens = torch.from_numpy(np.asarray(blocks, dtype=np.int64))
    if objective == "clm":
        labels = torch.full_like(tokens, IGNORE_INDEX)
        labels[:, :-1] = tokens[:, 1:]
        return tokens, labels
    if masking is None:
        raise LineageError("MLM caches need a mask token id and vocabulary size")
    special = torch.tensor(masking.special_ids, dtype=torch.long)
    inputs, labels = torch.empty_like(tokens), torch.empty_like(tokens)
    for i in range(len(tokens)):
        inputs[i : i + 1], labels[i : i + 1] = mlm_mask(
            tokens[i : i + 1],
            block_generator(masking.seed, start + i),
            mask_token_id=masking.mask_token_id,
            vocab_size=masking.vocab_size,
            special_ids=special,
            probability=masking.probability,
        )
    return inputs, labels


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


def teacher_topk(
    teacher: torch.nn.Module,
    input_ids: Tensor,
    labels: Tensor,
    k: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k teacher logits at the target positions, left on ``device`` (no host sync).

    input_ids, labels: [B, T] -> (logits [N, k] float32 descending, indices [N, k] long),
    N = (labels != IGNORE_INDEX).sum(), rows in row-major order of the targets. The backbone
    runs under ``autocast_dtype`` (default: bf16 on CUDA, none elsewhere); the output head and
    the top-k selection always run in float32 (``TargetLogits(fp32_head=True)``).
    """
    from lineage.models.modeling import TargetLogits  # transformers: slow import, used here only

    if autocast_dtype is None and device.type == "cuda":
        autocast_dtype = torch.bfloat16
    wrapped = TargetLogits(cast("PreTrainedModel", teacher), fp32_head=True)
    # Target rows are found on the host, so selecting them on the GPU needs no sync.
    rows = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
    ):
        hidden = wrapped.hidden(input_ids.to(device, non_blocking=True), None)  # [B, T, d]
        flat, rows = hidden.reshape(-1, hidden.shape[-1]), rows.to(device)  # [B·T, d], [N]
        if 2 * len(rows) > len(flat):  # causal: nearly every row; copying [N, V] would cost more
            values, indices = wrapped.project(flat).topk(k, dim=-1)
            values, indices = values.index_select(0, rows), indices.index_select(0, rows)
        else:  # MLM: ~15 % of rows; select them first
            values, indices = wrapped.project(flat.index_select(0, rows)).topk(k, dim=-1)
    return values.float(), indices


# ---------------------------------------------------------------- writing


class _NpyWriter:
    """Appends rows to a .npy file; the final shape goes into the header on close (numpy pads
    the header so the first axis can grow in place), so no count pass is needed."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), row_shape, 0
        self.fh = path.open("wb")
        np.lib.format.write_array_header_1_0(self.fh, self._header(0))
        self.data_start = self.fh.tell()

    def _header(self, rows: int) -> dict:
        descr = np.lib.format.dtype_to_descr(self.dtype)
        return {"descr": descr, "fortran_order": False, "shape": (rows, *self.row_shape)}

    def append(self, rows: np.ndarray) -> None:
        assert rows.shape[1:] == self.row_shape, (self.path, rows.shape, self.row_shape)
        self.fh.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.rows += len(rows)

    def __enter__(self) -> _NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.fh.closed:
            self.fh.seek(0)
            np.lib.format.write_array_header_1_0(self.fh, self._header(self.rows))
            assert self.fh.tell() == self.data_start, f"{self.path}: header grew"
            self.fh.close()


@dataclass(frozen=True)
class _BuildSpec:
    objective: str
    top_k: int
    masking: MaskSpec | None
    index_dtype: np.dtype
    batch_size: int
    device: torch.device
    progress: bool


def _write_batch(out: dict[str, _NpyWriter], batch: tuple[Tensor, Tensor, Any], total: int) -> int:
    """Append one batch (inputs, labels, teacher_topk's result); returns the target count so far."""
    inputs, labels, topk = batch
    values, indices = (t.cpu() for t in topk)
    target = labels != IGNORE_INDEX  # [b, T]
    ends = total + np.cumsum(target.sum(1).numpy())  # [b]
    out["inputs"].append(inputs.numpy())
    out["offsets"].append(ends)
    out["positions"].append(target.nonzero()[:, 1].numpy())
    out["labels"].append(labels[target].numpy())
    out["topk_indices"].append(indices.numpy())
    # fp16 overflows to inf past ±65504; a clamped logit still ranks and softmaxes sensibly.
    out["topk_logits"].append(values.clamp(-_FP16_MAX, _FP16_MAX).half().numpy())
    return int(ends[-1]) if len(ends) else total


def _build_part(
    teacher: torch.nn.Module,
    blocks: np.ndarray,
    part_dir: Path,
    span: tuple[int, int],
    spec: _BuildSpec,
) -> PartInfo:
    """Run the teacher over blocks ``span`` and write them as one part; returns its PartInfo."""
    start, end = span
    block_size = blocks.shape[1]
    layout = {
        "inputs": (spec.index_dtype, (block_size,)),
        "offsets": (np.dtype(np.int64), ()),
        "positions": (index_dtype(block_size), ()),
        "labels": (spec.index_dtype, ()),
        "topk_indices": (spec.index_dtype, (spec.top_k,)),
        "topk_logits": (np.dtype(np.float16), (spec.top_k,)),
    }
    part_dir.mkdir()
    total = 0
    with ExitStack() as stack:
        out = {
            name: stack.enter_context(_NpyWriter(part_dir / f"{name}.npy", dtype, shape))
            for name, (dtype, shape) in layout.items()
        }
        out["offsets"].append(np.zeros(1, np.int64))
        pending = None
        batches = range(start, end, spec.batch_size)
        desc = f"teacher top-{spec.top_k} cache"
        for s in tqdm(batches, desc=desc, disable=not spec.progress, unit="batch"):
            inputs, labels = block_targets(
                blocks[s : min(s + spec.batch_size, end)], s, spec.objective, spec.masking
            )
            launched = teacher_topk(teacher, inputs, labels, spec.top_k, spec.device)
            # Write the previous batch while the accelerator runs this one.
            if pending is not None:
                total = _write_batch(out, pending, total)
            pending = (inputs, labels, launched)
        if pending is not None:
            total = _write_batch(out, pending, total)
    files = {name: _file_info(part_dir / f"{name}.npy") for name in ARRAYS}
    return PartInfo(part_dir.name, start, end, total, files)


def _file_info(path: Path) -> FileInfo:
    return FileInfo(sha256=sha256_file(path), bytes=path.stat().st_size)


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
) -> CacheManifest:
    """Run ``teacher`` once over ``blocks`` [n, T] and write its top-K logits to ``out_dir``.

    Under ``accelerate launch`` every rank builds one contiguous part and the main process writes
    the manifest; single-process it is one part. The cache appears atomically (built in a temp
    dir beside ``out_dir``, then renamed); a failed build leaves nothing. ``vocab_size`` is the
    range of MLM's random replacement tokens (default: the teacher's vocabulary). The teacher is
    moved to ``device`` (default: this rank's) and run in eval mode, bf16 autocast on CUDA.
    """
    state = process_state()  # CPU ranks on gloo (else each would build the whole cache alone)
    _check_blocks(blocks)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConflictError(f"{out_dir} already exists (pass overwrite=True to rebuild)")
    vocab = int(teacher.config.vocab_size)
    k = vocab if top_k == "full" else int(top_k)
    if not 1 <= k <= vocab:
        raise LineageError(f"top_k must be in 1..{vocab} (the vocabulary size), not {top_k}")
    masking = None
    if objective == "mlm":
        if mask_token_id is None:
            raise LineageError("an MLM cache needs mask_token_id")
        masking = MaskSpec(
            int(mask_token_id),
            vocab_size or vocab,
            tuple(int(i) for i in special_ids),
            mask_probability,
            mask_seed,
        )
    full_meta = _complete_meta(meta, teacher, k, objective, blocks.shape[1])
    run_device = torch.device(device) if device is not None else state.device
    spec = _BuildSpec(
        objective, k, masking, index_dtype(vocab), batch_size, run_device,
        progress and state.is_main_process,
    )  # fmt: skip
    tmp = _shared_tmp_dir(out_dir, state)
    was_training = teacher.training
    teacher.eval().to(run_device)
    try:
        span = _part_span(len(blocks), state.num_processes, state.process_index)
        part_dir = tmp / f"part-{state.process_index:05d}"
        part = _build_part(teacher, blocks, part_dir, span, spec)
        (part_dir / "part.json").write_text(json.dumps(asdict(part)))
        state.wait_for_everyone()
        if state.is_main_process:
            manifest = _merge_manifest(tmp, state.num_processes, full_meta, blocks, spec, vocab)
            _publish(tmp, out_dir, manifest, overwrite)
        state.wait_for_everyone()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        teacher.train(was_training)
    return _read_manifest(out_dir)


def _shared_tmp_dir(out_dir: Path, state: Any) -> Path:
    """A fresh temp dir beside ``out_dir`` (same filesystem, so the final rename is atomic)."""
    # Not mkdtemp: its 0700 mode would survive the rename and hide the cache from other users.
    name = Path(broadcast(str(out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.partial"))))
    if state.is_main_process:
        name.mkdir(parents=True)
    state.wait_for_everyone()
    return name


def _merge_manifest(
    tmp: Path, world: int, meta: CacheMeta, blocks: np.ndarray, spec: _BuildSpec, vocab: int
) -> CacheManifest:
    """The manifest over every rank's part (read from the part.json each rank left)."""
    parts = []
    for rank in range(world):
        part_json = tmp / f"part-{rank:05d}" / "part.json"
        parts.append(PartInfo.from_dict(json.loads(part_json.read_text())))
        part_json.unlink()
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

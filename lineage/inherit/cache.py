"""Offline teacher top-K logit cache (papers/001 §3.1): run the teacher once, keep K logits.

A cache is a directory of plain ``.npy`` arrays plus a JSON manifest, so it can live on shared or
object storage and serve every student that shares the teacher's tokenizer::

    manifest.json               what it was built for, and every file's sha256 and size
    part-00000/                 one part per rank that built it (one when single-process)
        inputs.npy       [m, T]    token ids the teacher saw (MLM: masked; causal: the blocks)
        offsets.npy      [m + 1]   int64 CSR row starts of each block's targets
        positions.npy    [N]       position of each target in its block, row-major
        labels.npy       [N]       the target token at each of those positions
        topk_indices.npy [N, K]    token ids, smallest unsigned dtype that fits the vocabulary
        topk_logits.npy  [N, K]    fp16 raw logits, descending (τ is applied at training time)

Causal caches store their blocks as ``inputs`` too, rather than checking a separate blocks array
against a digest: the cache is then self-contained (a moved or re-tokenised shard cannot pair
the wrong tokens with the logits) for about 2 bytes a token, small beside the K·4 bytes every
target costs. Positions and labels are stored for both objectives for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from torch import Tensor
from tqdm.auto import tqdm

from lineage.corpora.batches import IGNORE_INDEX, Batch, mlm_mask
from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.files import sha256_file

if TYPE_CHECKING:  # transformers is slow to import and only named in annotations here
    from transformers import PreTrainedModel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("inputs", "offsets", "positions", "labels", "topk_indices", "topk_logits")
_FP16_MAX = float(np.finfo(np.float16).max)
_HASH_ROWS_BYTES = 1 << 24  # read blocks 16 MiB at a time when hashing a memory-mapped shard


@dataclass(frozen=True)
class CacheMeta:
    """What a cache was computed for. As ``expect`` in ``open_cache``, ``None`` fields are not
    checked; in ``build_cache`` the last three come from the arguments (``None`` = take them)."""

    teacher_name: str | None = None  # registry name of the teacher
    teacher_digest: str | None = None  # teacher weights' sha256 (None in build: weights_digest)
    tokenizer_fingerprint: str | None = None  # modelinfo.tokenizer_fingerprint
    top_k: int | None = None  # logits kept per target (the vocabulary size for "full")
    objective: str | None = None  # "mlm" | "clm"
    block_size: int | None = None  # tokens per block, T

    def __post_init__(self) -> None:
        if self.objective not in (None, "mlm", "clm"):
            raise LineageError(f"objective must be 'mlm' or 'clm', not {self.objective!r}")
        if self.top_k is not None and self.top_k < 1:
            raise LineageError(f"top_k must be at least 1, not {self.top_k}")
        if self.block_size is not None and self.block_size < 2:
            raise LineageError(f"block_size must be at least 2, not {self.block_size}")

    def mismatches(self, actual: CacheMeta) -> list[str]:
        """'field: expected X, cache has Y' for every field set here on which ``actual`` differs."""
        out = []
        for f in fields(self):
            want, got = getattr(self, f.name), getattr(actual, f.name)
            if want is not None and want != got:
                out.append(f"{f.name}: expected {want!r}, cache has {got!r}")
        return out


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class PartInfo:
    """One rank's slice of the cache: blocks ``block_start .. block_end`` of the shard."""

    dir: str
    block_start: int
    block_end: int
    n_targets: int
    files: dict[str, FileInfo]

    @classmethod
    def from_dict(cls, d: dict) -> PartInfo:
        return cls(**{**d, "files": {k: FileInfo(**v) for k, v in d["files"].items()}})


@dataclass(frozen=True)
class MaskSpec:
    """BERT masking of a cache, fixed at build time (teacher predictions depend on the mask)."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()
    probability: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class CacheManifest:
    """The manifest.json of a cache: identity, masking, digests, and its parts."""

    meta: CacheMeta  # every field set
    vocab_size: int
    n_blocks: int
    n_targets: int
    blocks_sha256: str  # blocks_digest of the shard the cache was built on
    blocks_dtype: str
    index_dtype: str  # dtype of inputs, labels and topk_indices
    masking: MaskSpec | None  # None for causal caches
    parts: tuple[PartInfo, ...]
    created_at: str
    lineage_version: str
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CacheManifest:
        d = json.loads(text)
        d["meta"] = CacheMeta(**d["meta"])
        if d["masking"] is not None:
            d["masking"] = MaskSpec(
                **{**d["masking"], "special_ids": tuple(d["masking"]["special_ids"])}
            )
        d["parts"] = tuple(PartInfo.from_dict(p) for p in d["parts"])
        return cls(**d)


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
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def teacher_topk(
    teacher: torch.nn.Module, input_ids: Tensor, labels: Tensor, k: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Top-k teacher logits at the target positions, left on ``device`` (no host sync).

    input_ids, labels: [B, T] -> (logits [N, k] float32 descending, indices [N, k] long),
    N = (labels != IGNORE_INDEX).sum(), rows in row-major order of the targets.
    """
    # Target rows are found on the host, so selecting them on the GPU needs no sync.
    rows = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
    ):
        logits = teacher(input_ids=input_ids.to(device, non_blocking=True)).logits  # [B, T, V]
    flat, rows = logits.reshape(-1, logits.shape[-1]), rows.to(device)  # [B·T, V], [N]
    if 2 * len(rows) > len(flat):  # causal: nearly every row; copying [N, V] would cost more
        values, indices = flat.topk(k, dim=-1)
        values, indices = values.index_select(0, rows), indices.index_select(0, rows)
    else:  # MLM: ~15 % of rows; select them first
        values, indices = flat.index_select(0, rows).topk(k, dim=-1)
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
    state = PartialState(cpu=not torch.cuda.is_available())  # else CPU ranks run as one each
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


def _shared_tmp_dir(out_dir: Path, state: PartialState) -> Path:
    """A fresh temp dir beside ``out_dir`` (same filesystem, so the final rename is atomic)."""
    # Not mkdtemp: its 0700 mode would survive the rename and hide the cache from other users.
    name = [str(out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.partial"))]
    broadcast_object_list(name)
    if state.is_main_process:
        Path(name[0]).mkdir(parents=True)
    state.wait_for_everyone()
    return Path(name[0])


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


# ---------------------------------------------------------------- reading


def _read_manifest(path: Path) -> CacheManifest:
    if not path.is_dir():
        raise NotFoundError(f"logit cache {path} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise NotFoundError(f"{path} is not a logit cache: no {MANIFEST}")
    try:
        manifest = CacheManifest.from_json(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise LineageError(f"{manifest_path}: not a valid cache manifest ({exc})") from exc
    if manifest.format_version > FORMAT_VERSION:
        raise LineageError(
            f"{manifest_path}: format version {manifest.format_version} is newer than this "
            f"lineage reads ({FORMAT_VERSION})"
        )
    return manifest


def _load_checked(path: Path, info: FileInfo, verify: bool) -> np.ndarray:
    if not path.is_file():
        raise LineageError(f"{path}: missing from the cache")
    size = path.stat().st_size
    if size != info.bytes:
        raise LineageError(f"{path}: {size} bytes, manifest says {info.bytes} (truncated?)")
    if verify and sha256_file(path) != info.sha256:
        raise LineageError(f"{path}: sha256 differs from the manifest (corrupted)")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise LineageError(f"{path}: unreadable ({exc})") from exc


@dataclass(frozen=True)
class _Part:
    block_start: int
    arrays: dict[str, np.ndarray]


def _open_part(root: Path, part: PartInfo, manifest: CacheManifest, verify: bool) -> _Part:
    arrays = {
        name: _load_checked(root / part.dir / f"{name}.npy", part.files[name], verify)
        for name in ARRAYS
    }
    m, n, k = part.block_end - part.block_start, part.n_targets, manifest.meta.top_k
    shapes = [(m, manifest.meta.block_size), (m + 1,), (n,), (n,), (n, k), (n, k)]
    for name, shape in zip(ARRAYS, shapes, strict=True):
        if arrays[name].shape != shape:
            file = root / part.dir / f"{name}.npy"
            raise LineageError(f"{file}: shape {arrays[name].shape}, manifest implies {shape}")
    offsets = arrays["offsets"]
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
        raise LineageError(f"{root / part.dir / 'offsets.npy'}: not CSR row starts of {n} rows")
    return _Part(part.block_start, arrays)


def open_cache(path: Path, *, expect: CacheMeta | None = None, verify: bool = True) -> LogitCache:
    """Open (memory-map) a cache; refuse one built for something other than ``expect``.

    Sizes and shapes are always checked; ``verify`` also re-hashes every file (streaming).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    if expect is not None:
        diffs = expect.mismatches(manifest.meta)
        if diffs:
            raise ConflictError(
                f"logit cache {path} was built for another setup: " + "; ".join(diffs)
            )
    parts = [_open_part(path, p, manifest, verify) for p in manifest.parts]
    return LogitCache(path, manifest, parts)


class LogitCache:
    """An opened cache: memory-mapped parts, addressed by the shard's block index."""

    def __init__(self, path: Path, manifest: CacheManifest, parts: list[_Part]) -> None:
        self.path, self.manifest, self._parts = path, manifest, parts
        self._starts = np.array([p.block_start for p in parts], dtype=np.int64)

    @property
    def meta(self) -> CacheMeta:
        return self.manifest.meta

    def __len__(self) -> int:
        return self.manifest.n_blocks

    def block(self, index: int) -> dict[str, np.ndarray]:
        """One block's cached rows: inputs [T], positions/labels [n_i], topk_* [n_i, K]."""
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for a cache of {len(self)} blocks")
        part = self._parts[int(np.searchsorted(self._starts, index, side="right")) - 1]
        local = index - part.block_start
        a = part.arrays
        r0, r1 = int(a["offsets"][local]), int(a["offsets"][local + 1])
        rows = {name: a[name][r0:r1] for name in ARRAYS[2:]}  # positions, labels, topk_*
        return {"inputs": a["inputs"][local], **rows}

    def shard(self, name: str, teacher_name: str | None = None) -> CachedShard:
        """A ``ShardSource`` over this cache; ``teacher_name`` must be the cache's teacher."""
        cached = self.meta.teacher_name
        if teacher_name is not None and teacher_name != cached:
            raise ConflictError(f"cache {self.path} holds teacher {cached!r}, not {teacher_name!r}")
        return CachedShard(name=name, teacher=cached, cache=self)


@dataclass
class CachedShard:
    """``ShardSource`` whose batches carry the cached inputs, labels and teacher top-K rows."""

    name: str
    teacher: str | None
    cache: LogitCache

    def __len__(self) -> int:
        return len(self.cache)

    def batch(self, indices: Sequence[int], generator: torch.Generator | None = None) -> Batch:
        """Blocks ``indices`` as a Batch; ``generator`` is unused (the cache fixed the masks).

        -> input_ids/labels [B, T] long; topk_indices [N, K] long, topk_logits [N, K] float32,
        rows in row-major order of ``labels != IGNORE_INDEX``.
        """
        blocks = [self.cache.block(int(i)) for i in indices]
        block_size = int(self.cache.meta.block_size or 0)
        top_k = int(self.cache.meta.top_k or 0)
        labels = torch.full((len(blocks), block_size), IGNORE_INDEX, dtype=torch.long)
        for b, rows in enumerate(blocks):
            positions = torch.from_numpy(rows["positions"].astype(np.int64))
            labels[b, positions] = torch.from_numpy(rows["labels"].astype(np.int64))

        def stack(key: str, dtype: type, shape: tuple[int, ...]) -> Tensor:
            parts = [rows[key] for rows in blocks]
            array = np.concatenate(parts) if parts else np.zeros(0)
            return torch.from_numpy(np.asarray(array, dtype=dtype).reshape(shape))

        return Batch(
            input_ids=stack("inputs", np.int64, (len(blocks), block_size)),
            labels=labels,
            shard=self.name,
            teacher=self.teacher,
            topk_indices=stack("topk_indices", np.int64, (-1, top_k)),
            topk_logits=stack("topk_logits", np.float32, (-1, top_k)),
        )

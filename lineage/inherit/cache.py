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

This module is the format and the reader (``open_cache``); ``lineage.inherit.cache_build``
writes caches (``build_cache``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lineage.corpora.batches import IGNORE_INDEX, Batch
from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.files import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("inputs", "offsets", "positions", "labels", "topk_indices", "topk_logits")


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

    def batch(self, indices: Sequence[int], generator: object = None) -> Batch:
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

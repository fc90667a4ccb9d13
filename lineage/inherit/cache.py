"""Offline teacher top-K logit cache (papers/001 §3.1): run the teacher once, keep K logits.

A cache is a directory of plain ``.npy`` arrays plus a JSON manifest, so it can live on shared or
object storage and serve every student that shares the teacher's tokenizer. Format 2 (the
default) codes the top-K rows in a few bits each (``lineage.inherit.codec``)::

    manifest.json               what it was built for, the codec, every file's sha256 and size
    codec/                      format 2: the codec's tables (lineage.inherit.codec_tables)
        ranked.npy       [R]       token ids by rank (teacher's predictions, then text
                                   frequency), up to where the rest is the other ids in order
        succ_lengths.npy [R or 0]  uint8 successor-list length of each ranked token
        succ_tokens.npy  [S]       the lists, in rank order (empty when the codec uses none)
    part-00000/                 one part per rank that built it (one when single-process)
        inputs.npy       [m, T]    token ids the teacher saw (MLM: masked; causal: the blocks)
        offsets.npy      [m + 1]   int64 CSR row starts of each block's targets
        positions.npy    [N]       MLM (and format 1): position of each target in its block
        labels.npy       [N]       MLM (and format 1): the target token at each of them
        topk_bytes.npy   [m + 1]   format 2: int64 byte offsets of each block in topk_codes
        topk_codes.npy   [L]       format 2: uint8, the blocks' coded top-K rows
        topk_indices.npy [N, K]    format 1: token ids, smallest unsigned dtype that fits
        topk_logits.npy  [N, K]    format 1: fp16 raw logits, descending

Causal caches store their blocks as ``inputs`` too, rather than checking a separate blocks array
against a digest: the cache is then self-contained (a moved or re-tokenised shard cannot pair
the wrong tokens with the logits) for 2 bytes a token. Their targets are every position but the
last and their labels the next input, so format 2 stores neither; MLM caches store the masks
they were built with (positions, labels), as the teacher's predictions depend on them. An MLM
cache may hold several mask draws of every block (``MaskSpec.draws``; RoBERTa duplicated its
data with different masks): draw d of block i is row d·n_blocks + i of the parts, and a
student reads draw ``epoch mod draws`` (``CachedShard.batch``), so over epochs its targets move
as with dynamic masking while matching the teacher's exactly.

A cache of K serves any student asking for k ≤ K: the first k entries of each row are the
teacher's top-k (``LogitCache.shard(..., top_k=k)``).

This module is the format and the reader (``open_cache``); ``lineage.inherit.cache_build``
writes caches (``build_cache``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from lineage.corpora.batches import IGNORE_INDEX, Batch, causal_targets
from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.files import sha256_file
from lineage.inherit.codec import CodecSpec, TopKDecoder
from lineage.inherit.codec_tables import TABLE_FILES, IndexTables, row_context

FORMAT_VERSION = 2  # the newest format this lineage reads and, by default, writes
MANIFEST = "manifest.json"
ARRAYS = ("inputs", "offsets", "positions", "labels", "topk_indices", "topk_logits")  # format 1
CODEC_DIR = "codec"


def part_arrays(format_version: int, objective: str) -> tuple[str, ...]:
    """The arrays of every part of a cache of this format and objective."""
    if format_version == 1:
        return ARRAYS
    masks = ("positions", "labels") if objective == "mlm" else ()
    return ("inputs", "offsets", *masks, "topk_bytes", "topk_codes")


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
    draws: int = 1  # masks per block; the trainer uses draw ``epoch mod draws`` (older: 1)


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
    codec: dict | None = None  # format 2: CodecSpec.to_dict()
    files: dict[str, FileInfo] = field(default_factory=dict)  # format 2: codec/ tables
    # A cache of the shard's first n_blocks only (cache build --max-blocks/--data-fraction):
    # the whole shard's block count; None when the cache covers the whole shard.
    shard_blocks: int | None = None

    @property
    def partial(self) -> bool:
        return self.shard_blocks is not None and self.shard_blocks > self.n_blocks

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
        d["files"] = {k: FileInfo(**v) for k, v in d.get("files", {}).items()}
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
    if manifest.format_version < 1 or (manifest.format_version >= 2) != bool(manifest.codec):
        raise LineageError(
            f"{manifest_path}: format {manifest.format_version} and its codec disagree"
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
        # A plain ndarray view of the mapping: slicing it skips np.memmap's per-call overhead.
        return np.asarray(np.load(path, mmap_mode="r"))
    except (ValueError, OSError, EOFError) as exc:
        raise LineageError(f"{path}: unreadable ({exc})") from exc


@dataclass(frozen=True)
class _Part:
    block_start: int
    arrays: dict[str, np.ndarray]


def _csr_ok(starts: np.ndarray, total: int) -> bool:
    return bool(starts[0] == 0 and starts[-1] == total and np.all(np.diff(starts) >= 0))


def _open_part(root: Path, part: PartInfo, manifest: CacheManifest, verify: bool) -> _Part:
    meta = manifest.meta
    names = part_arrays(manifest.format_version, str(meta.objective))
    folder = root / part.dir
    arrays = {
        name: _load_checked(folder / f"{name}.npy", part.files[name], verify) for name in names
    }
    m, n, k = part.block_end - part.block_start, part.n_targets, meta.top_k
    shapes = {
        "inputs": (m, meta.block_size),
        "offsets": (m + 1,),
        "positions": (n,),
        "labels": (n,),
        "topk_indices": (n, k),
        "topk_logits": (n, k),
        "topk_bytes": (m + 1,),
        "topk_codes": arrays["topk_codes"].shape[:1] if "topk_codes" in arrays else None,
    }
    for name in names:
        if arrays[name].shape != shapes[name]:
            file = folder / f"{name}.npy"
            raise LineageError(
                f"{file}: shape {arrays[name].shape}, manifest implies {shapes[name]}"
            )
    if not _csr_ok(arrays["offsets"], n):
        raise LineageError(f"{folder / 'offsets.npy'}: not CSR row starts of {n} rows")
    if "topk_bytes" in arrays and not _csr_ok(arrays["topk_bytes"], len(arrays["topk_codes"])):
        raise LineageError(f"{folder / 'topk_bytes.npy'}: not block starts in topk_codes")
    if "positions" not in arrays:  # causal format 2: every position but the last is a target
        per_block = int(meta.block_size or 0) - 1
        if not np.array_equal(arrays["offsets"], np.arange(m + 1) * per_block):
            raise LineageError(f"{folder / 'offsets.npy'}: a causal block has {per_block} targets")
    return _Part(part.block_start, arrays)


def _open_decoder(root: Path, manifest: CacheManifest, verify: bool) -> TopKDecoder | None:
    """Format 2: the codec and its tables, checked against the manifest; None for format 1."""
    if manifest.format_version == 1:
        return None
    assert manifest.codec is not None
    arrays = {}
    for name in TABLE_FILES:
        info = manifest.files.get(f"{CODEC_DIR}/{name}")
        if info is None:
            raise LineageError(f"{root / MANIFEST}: no entry for {CODEC_DIR}/{name}")
        arrays[name] = np.asarray(_load_checked(root / CODEC_DIR / f"{name}.npy", info, verify))
    try:
        spec = CodecSpec.from_dict(manifest.codec)
        tables = IndexTables.from_files(arrays, manifest.vocab_size)
        if spec.top_k != manifest.meta.top_k or tables.vocab_size != manifest.vocab_size:
            raise LineageError("the codec's K or vocabulary differs from the cache's")
        return TopKDecoder(spec, tables)
    except (LineageError, KeyError, TypeError, ValueError) as exc:
        raise LineageError(f"{root}: the cache's codec is unusable ({exc})") from exc


def _covers(parts: Sequence[PartInfo], rows: int) -> bool:
    """Whether the parts hold rows 0 .. rows - 1 in order, each once."""
    edge = 0
    for part in parts:
        if part.block_start != edge or part.block_end < edge:
            return False
        edge = part.block_end
    return edge == rows


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
    draws = 1 if manifest.masking is None else manifest.masking.draws
    if draws < 1 or not _covers(manifest.parts, manifest.n_blocks * draws):
        raise LineageError(
            f"{path / MANIFEST}: its parts do not cover {manifest.n_blocks} blocks x {draws} "
            "mask draw(s) in order"
        )
    parts = [_open_part(path, p, manifest, verify) for p in manifest.parts]
    return LogitCache(path, manifest, parts, _open_decoder(path, manifest, verify))


class LogitCache:
    """An opened cache: memory-mapped parts, addressed by the shard's block index."""

    def __init__(
        self,
        path: Path,
        manifest: CacheManifest,
        parts: list[_Part],
        decoder: TopKDecoder | None = None,
    ) -> None:
        self.path, self.manifest, self._parts, self.decoder = path, manifest, parts, decoder
        self._starts = np.array([p.block_start for p in parts], dtype=np.int64)

    @property
    def meta(self) -> CacheMeta:
        return self.manifest.meta

    @property
    def format_version(self) -> int:
        return self.manifest.format_version

    def __len__(self) -> int:
        return self.manifest.n_blocks

    @property
    def draws(self) -> int:
        """Mask draws per block (MLM; 1 for causal caches and caches built before draws)."""
        masking = self.manifest.masking
        return 1 if masking is None else masking.draws

    def block(self, index: int, draw: int = 0) -> dict[str, np.ndarray]:
        """One block's cached rows under mask ``draw``: inputs [T], positions/labels [n_i];
        format 1: topk_indices and topk_logits [n_i, K]; format 2: topk_codes (its bytes).
        Draw d of block i is the cache's row d·n_blocks + i."""
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for a cache of {len(self)} blocks")
        if not 0 <= draw < self.draws:
            raise IndexError(f"mask draw {draw} out of range for a cache of {self.draws} draws")
        row = draw * len(self) + index
        part = self._parts[int(np.searchsorted(self._starts, row, side="right")) - 1]
        local = row - part.block_start
        a = part.arrays
        out = {"inputs": a["inputs"][local]}
        r0, r1 = int(a["offsets"][local]), int(a["offsets"][local + 1])
        if "positions" in a:
            out |= {"positions": a["positions"][r0:r1], "labels": a["labels"][r0:r1]}
        else:  # causal format 2: targets are every position but the last, labels the next input
            out |= {"positions": np.arange(len(out["inputs"]) - 1), "labels": out["inputs"][1:]}
        if "topk_codes" in a:
            b0, b1 = int(a["topk_bytes"][local]), int(a["topk_bytes"][local + 1])
            return out | {"topk_codes": a["topk_codes"][b0:b1]}
        return out | {name: a[name][r0:r1] for name in ("topk_indices", "topk_logits")}

    def shard(
        self, name: str, teacher_name: str | None = None, top_k: int | None = None
    ) -> CachedShard:
        """A ``ShardSource`` over this cache, serving the first ``top_k`` entries of every row
        (default: all K); ``teacher_name`` must be the cache's teacher."""
        cached, k = self.meta.teacher_name, int(self.meta.top_k or 0)
        if teacher_name is not None and teacher_name != cached:
            raise ConflictError(f"cache {self.path} holds teacher {cached!r}, not {teacher_name!r}")
        if top_k is not None and not 1 <= top_k <= k:
            raise ConflictError(f"cache {self.path} holds the top {k}, it cannot serve K = {top_k}")
        return CachedShard(name=name, teacher=cached, cache=self, top_k=top_k or k)


@dataclass
class CachedShard:
    """``ShardSource`` whose batches carry the cached inputs, labels and teacher top-K rows."""

    name: str
    teacher: str | None
    cache: LogitCache
    top_k: int  # entries served per row: the first top_k of the cache's K

    def __len__(self) -> int:
        return len(self.cache)

    def batch(
        self, indices: Sequence[int], generator: object = None, epochs: Sequence[int] | None = None
    ) -> Batch:
        """Blocks ``indices`` as a Batch; ``generator`` is unused (the cache fixed the masks);
        block i is served under mask draw ``epochs[i] mod draws`` (draw 0 without ``epochs``),
        its inputs and targets exactly those the teacher saw.

        -> input_ids/labels [B, T] long; the teacher's rows in row-major order of
        ``labels != IGNORE_INDEX``: format 1 as topk_indices [N, k] long and topk_logits [N, k]
        float32, format 2 as topk_coded (decoded on the training device to the same).
        """
        draws = self.cache.draws
        picked = [0] * len(indices) if epochs is None else [int(e) % draws for e in epochs]
        blocks = [self.cache.block(int(i), d) for i, d in zip(indices, picked, strict=True)]
        block_size = int(self.cache.meta.block_size or 0)
        inputs = _stack([rows["inputs"] for rows in blocks], np.int64).reshape(-1, block_size)
        input_ids = torch.from_numpy(inputs)
        if self.cache.meta.objective == "clm" and self.cache.format_version >= 2:
            labels = causal_targets(input_ids)
        else:
            labels = torch.full((len(blocks), block_size), IGNORE_INDEX, dtype=torch.long)
            for b, rows in enumerate(blocks):
                positions = torch.from_numpy(rows["positions"].astype(np.int64))
                labels[b, positions] = torch.from_numpy(rows["labels"].astype(np.int64))
        batch = Batch(input_ids=input_ids, labels=labels, shard=self.name, teacher=self.teacher)
        k = self.top_k
        if self.cache.decoder is not None:
            counts = np.array([len(rows["positions"]) for rows in blocks], dtype=np.int64)
            target = (labels != IGNORE_INDEX).numpy()
            context = row_context(inputs, target, str(self.cache.meta.objective))
            codes = [np.asarray(rows["topk_codes"]) for rows in blocks]
            batch.topk_coded = self.cache.decoder.prepare(codes, counts, context, k)
            return batch
        width = int(self.cache.meta.top_k or 0)
        indices_ = _stack([rows["topk_indices"] for rows in blocks], np.int64).reshape(-1, width)
        logits = _stack([rows["topk_logits"] for rows in blocks], np.float32).reshape(-1, width)
        batch.topk_indices = torch.from_numpy(np.ascontiguousarray(indices_[:, :k]))
        batch.topk_logits = torch.from_numpy(np.ascontiguousarray(logits[:, :k]))
        return batch


def _stack(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.asarray(np.concatenate(parts) if parts else np.zeros(0), dtype=dtype)

"""Training data: token blocks, objectives' targets, and the batch every training step consumes."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from lineage.errors import LineageError
from lineage.files import sha256_file

if TYPE_CHECKING:  # keeps `import lineage.corpora.batches` free of transformers
    from lineage.corpora.tokenizer import TokenizerInfo


class CodedTopK(Protocol):
    """A teacher's top-K rows kept coded until the training device (teacher cache format v2)."""

    def to(self, device: torch.device | str) -> CodedTopK:
        """The same rows on ``device``."""
        ...

    def decode(self) -> tuple[Tensor, Tensor]:
        """(indices [N, K] long, logits [N, K] float32) on the rows' device."""
        ...


@dataclass
class Batch:
    """One training step's input; one shard (so at most one teacher) per batch.

    ``labels`` are aligned with the student's logits: ``logits[b, t]`` predicts
    ``labels[b, t]`` (for causal LM the caller has already shifted: ``labels[b, t] =
    input_ids[b, t + 1]``, last position ``-100``). Target positions are ``labels != -100``
    in row-major order; cached teacher top-K rows follow that same order.
    """

    input_ids: Tensor  # [B, T] long
    labels: Tensor  # [B, T] long, -100 where there is no target
    shard: str = ""
    teacher: str | None = None  # registry name of the teacher for this shard, None = self-learning
    topk_indices: Tensor | None = None  # [N, K] long, N = (labels != -100).sum()
    topk_logits: Tensor | None = None  # [N, K] float (fp16 in the cache)
    attention_mask: Tensor | None = None  # [B, T]; None when blocks are packed full
    topk_coded: CodedTopK | None = None  # the top-K rows still coded (cache v2), or None

    def to(self, device: torch.device | str) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            shard=self.shard,
            teacher=self.teacher,
            topk_indices=move(self.topk_indices),
            topk_logits=move(self.topk_logits),
            attention_mask=move(self.attention_mask),
            topk_coded=None if self.topk_coded is None else self.topk_coded.to(device),
        )

    @property
    def n_targets(self) -> int:
        return int((self.labels != -100).sum())

    def teacher_topk(self) -> tuple[Tensor, Tensor] | None:
        """The cached teacher's (indices [N, K] long, logits [N, K] float), decoded where the
        batch is if coded; None without cached rows."""
        if self.topk_coded is not None:
            return self.topk_coded.decode()
        if self.topk_indices is not None and self.topk_logits is not None:
            return self.topk_indices, self.topk_logits
        return None


IGNORE_INDEX = -100


def causal_targets(input_ids: Tensor) -> Tensor:
    """Next-token labels aligned with the logits: ``labels[:, t] = input_ids[:, t + 1]``.

    input_ids: [B, T] -> labels: [B, T], last position ``IGNORE_INDEX``.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def mlm_mask(
    input_ids: Tensor,
    generator: torch.Generator,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Tensor | None = None,
    probability: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """BERT masking: pick ``probability`` of the non-special positions as targets; of those,
    80 % become the mask token, 10 % a random token, 10 % stay. Deterministic given ``generator``.

    input_ids: [B, T] -> (masked inputs [B, T], labels [B, T] with ``IGNORE_INDEX`` off target).
    """
    shape = input_ids.shape
    chosen = torch.rand(shape, generator=generator) < probability
    if special_ids is not None and special_ids.numel():
        chosen &= ~torch.isin(input_ids, special_ids)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    draw = torch.rand(shape, generator=generator)
    random_tokens = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    masked = input_ids.clone()
    masked[chosen & (draw < 0.8)] = mask_token_id
    replace = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[replace] = random_tokens[replace]
    return masked, labels


Masking = torch.Generator | Sequence[torch.Generator]  # one for a batch, or one per block


class ShardSource(Protocol):
    """Where the sampler draws a shard's batches from: plain token blocks or a teacher cache."""

    name: str
    teacher: str | None

    def __len__(self) -> int:
        """Number of blocks in the shard."""
        ...

    def batch(
        self, indices: Sequence[int], generator: Masking, epochs: Sequence[int] | None = None
    ) -> Batch:
        """The batch made of these block indices (``generator`` drives dynamic masking: one
        generator for the batch, or one per block; ``epochs``: the sampler's epoch of each
        block, which picks a cached MLM teacher's mask draw)."""
        ...


# --- token blocks on disk -------------------------------------------------------------------


@dataclass(frozen=True)
class BlocksInfo:
    """What :func:`tokenize_to_blocks` wrote."""

    path: Path
    blocks: int  # rows of the array
    block_size: int  # tokens per row
    tokens: int  # tokens in the blocks (blocks * block_size); the dropped tail is not counted
    documents: int  # non-empty documents read
    dtype: str  # numpy dtype name, e.g. "uint16"
    digest: str  # sha256 of the .npy file


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids in [0, vocab_size)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} ids does not fit uint32")


def _batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        if text and not text.isspace():
            chunk.append(text)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def tokenize_to_blocks(
    texts: Iterable[str],
    tokenizer: Any,
    block_size: int,
    out_path: Path,
    *,
    batch_docs: int = 256,
) -> BlocksInfo:
    """Tokenise a stream of documents into fixed-length blocks saved as ``out_path`` (.npy).

    Each document is followed by the separator (``</s>``/EOS, or ``[SEP]`` for a tokenizer
    without EOS: `lineage.corpora.tokenizer.separator_id`) and the stream is cut every
    ``block_size`` tokens; the final partial block is dropped. Memory stays O(batch_docs):
    full blocks go to a temporary raw file, and the .npy is assembled at the end, then renamed
    into place. ``tokenizer`` is a fast Hugging Face tokenizer. Returns [blocks, block_size]
    counts and the file's sha256.
    """
    if block_size < 2:
        raise LineageError("block_size must be >= 2")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LineageError("tokenize_to_blocks needs a fast (Rust-backed) tokenizer")
    from lineage.corpora.tokenizer import separator_id  # transformers: only when tokenising

    eos = separator_id(tokenizer)
    dtype = token_dtype(len(tokenizer))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw = out_path.with_name(f".{out_path.name}.raw-{uuid.uuid4().hex[:8]}")
    tail = np.empty(0, dtype=dtype)
    n_blocks = n_docs = 0
    try:
        with raw.open("wb") as fh:
            for docs in _batched(texts, batch_docs):
                encoded = backend.encode_batch(docs, add_special_tokens=False)
                n_docs += len(docs)
                pieces = [tail]
                for enc in encoded:
                    pieces.append(np.asarray(enc.ids, dtype=dtype))
                    pieces.append(np.asarray([eos], dtype=dtype))
                stream = np.concatenate(pieces)
                full = len(stream) // block_size * block_size
                fh.write(stream[:full].tobytes())
                n_blocks += full // block_size
                tail = stream[full:]
        _raw_to_npy(raw, out_path, dtype, (n_blocks, block_size))
    finally:
        raw.unlink(missing_ok=True)
    return BlocksInfo(
        path=out_path,
        blocks=n_blocks,
        block_size=block_size,
        tokens=n_blocks * block_size,
        documents=n_docs,
        dtype=dtype.name,
        digest=sha256_file(out_path),
    )


def _raw_to_npy(raw: Path, out_path: Path, dtype: np.dtype, shape: tuple[int, int]) -> None:
    """Prefix the raw row-major bytes with a .npy header; write to a temp file, then rename."""
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as dst, raw.open("rb") as src:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
            np.lib.format.write_array_header_1_0(dst, {**header, "shape": shape})
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def load_blocks(path: Path) -> np.ndarray:
    """The [blocks, block_size] token array of ``path``, memory-mapped read-only."""
    try:
        blocks = np.load(Path(path), mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise LineageError(f"{path}: not a readable token-block file ({exc})") from exc
    if blocks.ndim != 2 or blocks.dtype.kind != "u":
        raise LineageError(
            f"{path}: expected a 2-D unsigned array, got {blocks.dtype}{blocks.shape}"
        )
    return blocks


# --- shards and the mixture sampler ---------------------------------------------------------


class BlockShard:
    """A shard of plain token blocks: MLM batches are masked dynamically, causal ones shifted.

    ``tokenizer`` is a :class:`lineage.corpora.tokenizer.TokenizerInfo` (mask id, vocabulary size
    and special ids). ``teacher`` names an online teacher for this shard (no cache), or None.
    """

    def __init__(
        self,
        name: str,
        blocks: np.ndarray,
        objective: str,
        tokenizer: TokenizerInfo,
        teacher: str | None = None,
        mask_probability: float = 0.15,
    ) -> None:
        if objective not in ("mlm", "clm"):
            raise LineageError(f"objective must be 'mlm' or 'clm', got {objective!r}")
        if objective == "mlm" and tokenizer.mask_id is None:
            raise LineageError("a masked-LM shard needs a tokenizer with a mask token")
        if blocks.ndim != 2 or len(blocks) == 0:
            raise LineageError(f"shard {name!r}: needs a non-empty [blocks, block_size] array")
        self.name = name
        self.blocks = blocks
        self.objective = objective
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.mask_probability = mask_probability
        self._special = torch.tensor(tokenizer.special_ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.blocks)

    def batch(
        self, indices: Sequence[int], generator: Masking, epochs: Sequence[int] | None = None
    ) -> Batch:
        """Blocks ``indices`` as a batch: input_ids/labels [len(indices), block_size]. MLM
        masks come from ``generator``, or block i's from ``generator[i]`` given one per block
        (dynamic masking: ``epochs`` is not needed)."""
        ids = torch.from_numpy(self.blocks[np.asarray(indices, dtype=np.int64)].astype(np.int64))
        if self.objective == "clm":
            return Batch(
                input_ids=ids, labels=causal_targets(ids), shard=self.name, teacher=self.teacher
            )
        if isinstance(generator, torch.Generator):
            masked, labels = self._mask(ids, generator)
        else:
            if len(generator) != len(ids):
                raise LineageError(f"{len(generator)} mask generators for {len(ids)} blocks")
            pairs = [self._mask(ids[i : i + 1], g) for i, g in enumerate(generator)]
            masked = torch.cat([m for m, _ in pairs]) if pairs else ids.clone()
            labels = torch.cat([lab for _, lab in pairs]) if pairs else torch.full_like(ids, -100)
        return Batch(input_ids=masked, labels=labels, shard=self.name, teacher=self.teacher)

    def _mask(self, ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        assert self.tokenizer.mask_id is not None
        return mlm_mask(
            ids,
            generator,
            mask_token_id=self.tokenizer.mask_id,
            vocab_size=self.tokenizer.vocab_size,
            special_ids=self._special,
            probability=self.mask_probability,
        )


def _mix(*parts: int | str) -> int:
    """A 63-bit seed from integers (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class MixtureSampler:
    """An infinite, deterministic, exactly resumable stream of batches from several shards.

    Batch ``i`` comes from one shard, drawn with probability ∝ ``weights`` (default: shard
    sizes) by a generator seeded from ``(seed, i)``; its blocks are the next ``batch_size`` of
    that shard's current epoch permutation (seeded from ``(seed, shard, epoch)``), continuing
    into the next epoch at the end. Every rank draws the same shard and a different slice
    (rank r takes slots r·B … (r+1)·B − 1 of each world_size·B group). The s-th block of the
    stream (counted over all ranks) is masked by a generator seeded from ``(seed, s)``, so W
    ranks × B blocks, or B blocks accumulated W times, see exactly the data of one process ×
    W·B blocks (with one shard; with several, each batch still comes from one shard). The whole
    state is ``i``, ``s`` and each shard's (epoch, position): :meth:`state_dict` is small JSON
    and resuming is exact.
    """

    def __init__(
        self,
        shards: Sequence[ShardSource],
        *,
        batch_size: int,
        seed: int,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not shards:
            raise LineageError("the sampler needs at least one shard")
        names = [s.name for s in shards]
        if len(set(names)) != len(names):
            raise LineageError(f"shard names must be unique, got {names}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise LineageError("need batch_size >= 1 and 0 <= rank < world_size")
        raw = [float(len(s)) for s in shards] if weights is None else [float(w) for w in weights]
        if len(raw) != len(shards) or any(w < 0 or not np.isfinite(w) for w in raw):
            raise LineageError("weights: one finite, non-negative number per shard")
        if sum(raw) <= 0:
            raise LineageError("weights must not all be zero")
        self.shards = list(shards)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.probabilities = np.asarray(raw) / sum(raw)
        self.index = 0  # batches drawn so far
        self.samples = 0  # blocks drawn so far, over all ranks
        self._epoch = [0] * len(shards)
        self._pos = [0] * len(shards)
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}  # shard -> (epoch, permutation)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        choice = np.random.default_rng(_mix(self.seed, "shard", self.index))
        k = int(choice.choice(len(self.shards), p=self.probabilities))
        group, epochs = self._take(k, self.batch_size * self.world_size)
        first = self.rank * self.batch_size
        mine = group[first : first + self.batch_size]
        generators = [
            torch.Generator().manual_seed(_mix(self.seed, "mask", self.samples + first + j))
            for j in range(len(mine))
        ]
        self.index += 1
        self.samples += len(group)
        return self.shards[k].batch(mine, generators, epochs[first : first + self.batch_size])

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(k)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng(_mix(self.seed, "perm", self.shards[k].name, epoch))
            cached = (epoch, rng.permutation(len(self.shards[k])))
            self._perm_cache[k] = cached
        return cached[1]

    def _take(self, k: int, n: int) -> tuple[list[int], list[int]]:
        """The next ``n`` block indices of shard ``k``, crossing epoch boundaries, and the
        epoch each was drawn in."""
        out: list[int] = []
        epochs: list[int] = []
        while len(out) < n:
            perm = self._permutation(k, self._epoch[k])
            part = perm[self._pos[k] : self._pos[k] + n - len(out)]
            out.extend(int(i) for i in part)
            epochs.extend([self._epoch[k]] * len(part))
            self._pos[k] += len(part)
            if self._pos[k] >= len(perm):
                self._epoch[k] += 1
                self._pos[k] = 0
        return out, epochs

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of the stream (same on every rank)."""
        return {
            "index": self.index,
            "samples": self.samples,
            "seed": self.seed,
            "shards": {
                s.name: {"epoch": e, "position": p, "size": len(s)}
                for s, e, p in zip(self.shards, self._epoch, self._pos, strict=True)
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; the shards and seed must be the same."""
        shards = state["shards"]
        if set(shards) != {s.name for s in self.shards} or state["seed"] != self.seed:
            raise LineageError(
                "sampler state does not match these shards/seed: "
                f"saved {sorted(shards)} seed {state['seed']}"
            )
        for k, shard in enumerate(self.shards):
            saved = shards[shard.name]
            if saved["size"] != len(shard):
                raise LineageError(
                    f"shard {shard.name!r} has {len(shard)} blocks, the saved state {saved['size']}"
                )
            self._epoch[k] = int(saved["epoch"])
            self._pos[k] = int(saved["position"])
        self.index = int(state["index"])
        # Saved before "samples" was kept: every batch then had world_size · batch_size blocks.
        self.samples = int(state.get("samples", self.index * self.world_size * self.batch_size))

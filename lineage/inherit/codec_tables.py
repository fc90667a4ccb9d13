"""How cache format v2 turns token ids into small integers: frequency ranks and successor lists.

A teacher's top-K ids are not uniform over the vocabulary: they are mostly tokens it predicts
often, frequent tokens, and tokens that often follow the current one. So a token t in the row
of context token a (the token the prediction is conditioned on most directly, ``row_context``)
gets the code

    place of t in a's successor list                  if t is on it,
    length of a's list + rank of t                    otherwise,

where the ranking puts first the tokens the teacher predicted most in a calibration sample,
then the rest by frequency in the cached text, and the lists come from that text's bigrams
(``index_tables``). Small codes are then frequent, and a class code (``codec_bits``) stores
them in few bits. Both maps are plain arrays saved beside the cache; decoding is one gather.

Codec 2 (``topk-classes-v2``; codec 1 is ``topk-classes``) also reorders: a run of entries
with equal coded values (gap 0; at K = 64, 84 % of the gaps past rank 31 are 0) is stored in
increasing code order, and each entry after the run's first stores its code's difference to
the previous one, minus 1 (``sort_ties``; ``untie_codes`` undoes it). The loss sees only the
(index, value) pairs, so the order inside a run is free. Measured (``bench_cache.py``, V ≈ 33k,
K = 64): the index codes fell from 83 to 62 bytes per token of text, the layout unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lineage.errors import LineageError

TABLE_FILES = ("ranked", "succ_lengths", "succ_tokens")  # the compact form saved in a cache
MAX_SUCCESSORS = 255  # list lengths are saved as uint8


@dataclass(frozen=True)
class IndexTables:
    """token_of_rank: [V] token ids by rank; succ_offsets: [V + 1] CSR starts by token id; the
    successors of token a, most frequent first, are
    ``succ_tokens[succ_offsets[a] : succ_offsets[a + 1]]``."""

    token_of_rank: np.ndarray
    succ_offsets: np.ndarray
    succ_tokens: np.ndarray
    rank_of_token: np.ndarray = field(init=False, repr=False)
    keys: np.ndarray = field(init=False, repr=False)  # sorted a·V + t of every listed pair
    places: np.ndarray = field(init=False, repr=False)  # each key's place in its list

    def __post_init__(self) -> None:
        self.check()
        v = len(self.token_of_rank)
        rank = np.empty(v, dtype=np.int64)
        rank[np.asarray(self.token_of_rank, dtype=np.int64)] = np.arange(v)
        off = np.asarray(self.succ_offsets, dtype=np.int64)
        owner = np.repeat(np.arange(v, dtype=np.int64), np.diff(off))
        keys = owner * v + np.asarray(self.succ_tokens, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        object.__setattr__(self, "rank_of_token", rank)
        object.__setattr__(self, "keys", keys[order])
        object.__setattr__(self, "places", (np.arange(len(keys)) - off[owner])[order])

    def check(self) -> None:
        """Refuse tables that are not a ranking plus well-formed CSR lists (a bad cache)."""
        v = len(self.token_of_rank)
        off = np.asarray(self.succ_offsets, dtype=np.int64)
        ranking = np.array_equal(np.sort(np.asarray(self.token_of_rank, np.int64)), np.arange(v))
        csr = (
            off.shape == (v + 1,)
            and off[0] == 0
            and off[-1] == len(self.succ_tokens)
            and bool(np.all(np.diff(off) >= 0))
        )
        in_range = len(self.succ_tokens) == 0 or int(np.max(self.succ_tokens)) < v
        if not (ranking and csr and in_range):
            raise LineageError("cache codec tables are malformed (not a ranking and CSR lists)")

    @property
    def vocab_size(self) -> int:
        return len(self.token_of_rank)

    @property
    def max_list(self) -> int:
        return int(np.diff(np.asarray(self.succ_offsets, np.int64)).max(initial=0))

    @property
    def capacity_needed(self) -> int:
        """Codes run from 0 to the longest list's length + V − 1."""
        return self.max_list + self.vocab_size

    def truncated(self, max_successors: int) -> IndexTables:
        """The same ranks with every list cut to its first ``max_successors`` entries."""
        off = np.asarray(self.succ_offsets, dtype=np.int64)
        lengths = np.diff(off)
        place = np.arange(len(self.succ_tokens)) - np.repeat(off[:-1], lengths)
        cut = np.minimum(lengths, max_successors)
        offsets = np.concatenate([[0], np.cumsum(cut)])
        return IndexTables(self.token_of_rank, offsets, self.succ_tokens[place < max_successors])

    def to_files(self) -> dict[str, np.ndarray]:
        """The compact form: ``ranked``, the ranking up to where the rest is just the remaining
        ids in increasing order (for a small shard, the tokens it holds or the teacher
        predicted); ``succ_lengths`` (uint8) and ``succ_tokens``, the lists of the ranked
        tokens in rank order (both empty without lists)."""
        rank = np.asarray(self.token_of_rank, dtype=np.int64)
        descents = np.nonzero(np.diff(rank) < 0)[0]
        n_ranked = int(descents[-1]) + 1 if len(descents) else 0  # an increasing tail follows
        lengths = np.diff(np.asarray(self.succ_offsets, dtype=np.int64))
        if np.any(lengths > 0):  # every token with a list keeps a rank of its own
            n_ranked = max(n_ranked, int(self.rank_of_token[lengths > 0].max()) + 1)
        ranked = rank[:n_ranked]
        if len(self.succ_tokens) == 0:
            lists = {"succ_lengths": np.zeros(0, np.uint8), "succ_tokens": self.succ_tokens}
            return {"ranked": ranked.astype(self.succ_tokens.dtype), **lists}
        off = np.asarray(self.succ_offsets, dtype=np.int64)
        order = _runs(off[ranked], lengths[ranked])  # the lists, in rank order
        return {
            "ranked": ranked.astype(self.succ_tokens.dtype),
            "succ_lengths": lengths[ranked].astype(np.uint8),
            "succ_tokens": self.succ_tokens[order],
        }

    @classmethod
    def from_files(cls, arrays: dict[str, np.ndarray], vocab_size: int) -> IndexTables:
        """The tables back from ``to_files``'s arrays; malformed ones raise LineageError."""
        ranked = np.asarray(arrays["ranked"], dtype=np.int64)
        lengths = np.asarray(arrays["succ_lengths"], dtype=np.int64)
        tokens = np.asarray(arrays["succ_tokens"])
        if (
            len(np.unique(ranked)) != len(ranked)
            or (len(ranked) and (ranked.min() < 0 or ranked.max() >= vocab_size))
            or len(lengths) not in (0, len(ranked))
            or int(lengths.sum()) != len(tokens)
        ):
            raise LineageError("cache codec tables are malformed (ranking or list lengths)")
        rest = np.setdiff1d(np.arange(vocab_size), ranked)
        token_of_rank = np.concatenate([ranked, rest]).astype(tokens.dtype)
        by_id = np.zeros(vocab_size, dtype=np.int64)
        if len(lengths):
            by_id[ranked] = lengths
        offsets = np.concatenate([[0], np.cumsum(by_id)])
        listed = tokens[:0]
        if len(lengths):
            starts = np.cumsum(lengths) - lengths  # of each ranked token's list in ``tokens``
            by_token = np.argsort(ranked, kind="stable")  # the CSR order: by id
            listed = tokens[_runs(starts[by_token], lengths[by_token])]
        return cls(token_of_rank, offsets, listed.astype(tokens.dtype))


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the runs ``starts[i] .. starts[i] + lengths[i] - 1``, one after another."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def index_tables(
    tokens: np.ndarray,
    vocab_size: int,
    max_successors: int,
    predicted: np.ndarray | None = None,
    min_count: int = 2,
) -> IndexTables:
    """Tables from a token stream [n] (blocks' rows concatenated) and, optionally, token ids a
    teacher ``predicted`` (any shape): ranks by how often each token was predicted, then by
    its count in the text, then by id; per token up to ``max_successors`` tokens seen after it
    at least ``min_count`` times, most frequent first (ties by id; pairs across rows count)."""
    if not 0 <= max_successors <= MAX_SUCCESSORS:
        raise LineageError(f"max_successors must be in 0..{MAX_SUCCESSORS}, not {max_successors}")
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    counts = np.bincount(tokens, minlength=vocab_size)
    if len(counts) > vocab_size:
        raise LineageError(f"token id {len(counts) - 1} is outside the vocabulary ({vocab_size})")
    hits = np.zeros(vocab_size, dtype=np.int64)
    if predicted is not None:
        hits = np.bincount(np.asarray(predicted, np.int64).reshape(-1), minlength=vocab_size)
    token_of_rank = np.lexsort((np.arange(vocab_size), -counts, -hits[:vocab_size]))
    pairs, n = np.unique(tokens[:-1] * vocab_size + tokens[1:], return_counts=True)
    keep = n >= min_count
    a, b, n = pairs[keep] // vocab_size, pairs[keep] % vocab_size, n[keep]
    order = np.lexsort((b, -n, a))  # by context, then count descending, then id
    a, b = a[order], b[order]
    place = np.arange(len(a)) - np.searchsorted(a, a)
    a, b = a[place < max_successors], b[place < max_successors]
    offsets = np.zeros(vocab_size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(a, minlength=vocab_size))
    dtype = token_dtype(vocab_size)
    return IndexTables(token_of_rank.astype(dtype), offsets, b.astype(dtype))


def index_codes(tables: IndexTables, context: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Codes [N, K] int64 of token ids ``indices`` [N, K] given each row's ``context`` [N]."""
    v = tables.vocab_size
    off = np.asarray(tables.succ_offsets, dtype=np.int64)
    ctx = np.asarray(context, dtype=np.int64)
    idx = np.asarray(indices, dtype=np.int64)
    unlisted = (off[ctx + 1] - off[ctx])[:, None] + tables.rank_of_token[idx]
    if len(tables.keys) == 0:
        return unlisted
    query = ctx[:, None] * v + idx
    at = np.searchsorted(tables.keys, query).clip(max=len(tables.keys) - 1)
    return np.where(tables.keys[at] == query, tables.places[at], unlisted)


def row_context(inputs: np.ndarray, target: np.ndarray, objective: str) -> np.ndarray:
    """The context token of every target row: inputs [B, T], target [B, T] bool -> [N], rows in
    row-major order of ``target``. Causal: the input at the position (its prediction is of the
    next token); MLM: the input just before it (the position itself is mostly ``<mask>``)."""
    b, t = np.nonzero(target)
    if objective == "mlm":
        t = np.maximum(t - 1, 0)
    return np.asarray(inputs)[b, t]


def sort_ties(codes: Tensor, gaps: Tensor) -> Tensor:
    """Codec 2's stored index codes: codes [N, K] int64 (distinct in a row), gaps [N, K − 1]
    -> [N, K] int64. A run of entries with equal coded values (gap 0) is put in increasing
    code order (the loss sees only the (index, value) pairs, never their order), and each
    entry after a run's first stores ``code − previous code − 1``: small where the coarse
    tail ties many tokens."""
    n, k = codes.shape
    cont = torch.zeros((n, k), dtype=torch.bool)
    cont[:, 1:] = gaps == 0
    run = torch.cumsum(~cont, 1)
    ordered = torch.sort((run << 32) | codes, dim=1).values & 0xFFFFFFFF
    stored = ordered.clone()
    stored[:, 1:] -= torch.where(cont[:, 1:], ordered[:, :-1] + 1, 0)
    return stored


def untie_codes(stored: Tensor, gaps: Tensor) -> Tensor:
    """``sort_ties`` undone on a row prefix: stored [n, k], gaps [n, k − 1] -> codes [n, k],
    same dtype: a run's codes are its first one plus the running sum of (stored + 1)."""
    n, k = stored.shape
    if k == 1:
        return stored
    cont = torch.zeros((n, k), dtype=torch.bool, device=stored.device)
    cont[:, 1:] = gaps == 0
    step = stored.long() + cont  # int64: a row's running sum may pass 2^31
    total = torch.cumsum(step, 1)
    place = torch.arange(k, device=stored.device).expand(n, k)
    start = torch.where(cont, 0, place).cummax(1).values  # the first entry of each one's run
    return (total - torch.gather(total - step, 1, start)).to(stored.dtype)


def canonical_rows(indices: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Rows [N, K] reordered by value (descending), then index: the order-free form in which
    two caches of the same teacher agree whatever order they keep tied entries in."""
    key = torch.argsort(indices, dim=1, stable=True)
    by_index = (indices.gather(1, key), logits.gather(1, key))
    order = torch.argsort(by_index[1], dim=1, descending=True, stable=True)
    return by_index[0].gather(1, order), by_index[1].gather(1, order)

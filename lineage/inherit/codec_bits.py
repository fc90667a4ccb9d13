"""Bit-level pieces of cache format v2: packing fields into bytes, reading them back in torch,
the two codes of small integers (fitted to a sample): class codes (one selector per value)
and width codes (one selector per group of values), and the value grid that turns a row's
logits into such integers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lineage.errors import LineageError

MAX_FIELD_BITS = 25  # read_bits gathers 4 bytes: shift (≤ 7) + width must fit in 32 bits


def pack_bits(positions: Tensor, values: Tensor, widths: Tensor, n_bytes: int) -> Tensor:
    """uint8 [n_bytes]: ``values[i]`` written LSB-first at bit ``positions[i]``, ``widths[i]``
    bits wide. Fields must not overlap; widths ≤ MAX_FIELD_BITS; values < 2^width.

    positions, values, widths: [M] int64.
    """
    out = torch.zeros(n_bytes + 4, dtype=torch.int64, device=positions.device)
    if positions.numel():
        shifted = values << (positions & 7)  # ≤ 32 bits
        first = positions >> 3
        # Fields occupy disjoint bits, so adding their bytes never carries: sum = OR.
        for k in range(4):
            out.index_add_(0, first + k, (shifted >> (8 * k)) & 0xFF)
    if bool((out[n_bytes:] != 0).any()):
        raise ValueError("pack_bits: a field ends past n_bytes")
    return out[:n_bytes].to(torch.uint8)


def byte_words(stream: np.ndarray) -> np.ndarray:
    """int32 [L + 1]: the 4-byte little-endian word starting at every byte of ``stream`` (uint8
    [L]; bytes past its end read as 0), so a field is read with one gather (``read_bits``). The
    extra word is for a zero-width field that starts right at the end."""
    b = np.concatenate([stream, np.zeros(4, np.uint8)]).astype(np.uint32)
    words = b[:-3] | (b[1:-2] << 8) | (b[2:-1] << 16) | (b[3:] << 24)
    return words.view(np.int32)


def read_bits(words: Tensor, positions: Tensor, masks: Tensor | int) -> Tensor:
    """Fields of ≤ MAX_FIELD_BITS bits at bit ``positions`` (int32, any shape) of a stream given
    as ``byte_words``, each ANDed with ``masks`` (2^width − 1, broadcast), as int32."""
    word = words.index_select(0, (positions >> 3).reshape(-1)).view(positions.shape)
    # An arithmetic shift smears the sign bit into the top ``shift`` bits; shift + width ≤ 32
    # keeps them above the mask.
    return (word >> (positions & 7)) & masks


@dataclass(frozen=True)
class ClassCode:
    """Non-negative integers as (selector, payload): class c holds 2^widths[c] consecutive
    integers starting where class c − 1 ends; the selector is ``log2(len(widths))`` bits."""

    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.widths)
        if n < 1 or n & (n - 1):
            raise LineageError(f"a class code needs a power-of-two number of classes, got {n}")
        if any(not 0 <= w <= MAX_FIELD_BITS for w in self.widths):
            raise LineageError(f"class widths must be in 0..{MAX_FIELD_BITS}: {self.widths}")

    @property
    def selector_bits(self) -> int:
        return len(self.widths).bit_length() - 1

    @property
    def bases(self) -> tuple[int, ...]:
        """First integer of every class."""
        return tuple(int(b) for b in np.cumsum([0, *(1 << w for w in self.widths)])[:-1])

    @property
    def capacity(self) -> int:
        """Integers 0 .. capacity − 1 are encodable."""
        return sum(1 << w for w in self.widths)

    def split(self, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """values (int64, each < capacity) -> (selectors, payloads, payload widths), same shape."""
        bases = torch.tensor(self.bases, dtype=torch.int64, device=values.device)
        widths = torch.tensor(self.widths, dtype=torch.int64, device=values.device)
        sel = torch.searchsorted(bases, values.contiguous(), right=True) - 1
        return sel, values - bases[sel], widths[sel]

    def bits(self, hist: np.ndarray) -> int:
        """Total bits (selectors + payloads) to code a histogram ``hist[v]`` = count of v."""
        total, start = 0, 0
        for w in self.widths:
            total += (self.selector_bits + w) * int(np.sum(hist[start : start + (1 << w)]))
            start += 1 << w
        return total

    @classmethod
    def fit(
        cls, hist: np.ndarray, need: int, selector_bits: tuple[int, ...] = (1, 2, 3)
    ) -> ClassCode:
        """The code with fewest bits on ``hist`` (counts of 0, 1, …) whose capacity covers
        ``need`` integers, over the given selector widths."""
        counts = np.zeros(max(int(need), len(hist), 1), dtype=np.float64)
        counts[: len(hist)] = hist
        codes = [_fit_classes(counts, 1 << s) for s in selector_bits]
        return min(codes, key=lambda code: code.bits(counts))


def _fit_classes(counts: np.ndarray, n_classes: int) -> ClassCode:
    """Exactly ``n_classes`` classes covering ``len(counts)`` integers with the fewest payload
    bits: dynamic programme over class boundaries (best[b]: fewest bits for integers < b)."""
    need = len(counts)
    cum = np.concatenate([[0.0], np.cumsum(counts)])  # cum[b] = count of integers < b
    max_w = min(MAX_FIELD_BITS, max(need - 1, 1).bit_length())
    best = np.full(need + 1, np.inf)
    best[0] = 0.0
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n_classes):
        new = np.full(need + 1, np.inf)
        width, source = np.zeros(need + 1, int), np.zeros(need + 1, int)
        for w in range(max_w + 1):
            size = 1 << w
            if size < need:  # boundaries b -> b + size below the cap, one to one
                cand = best[: need + 1 - size] + w * (cum[size:] - cum[: need + 1 - size])
                better = cand < new[size:]
                new[size:][better] = cand[better]
                width[size:][better], source[size:][better] = w, np.nonzero(better)[0]
            lo = max(need - size, 0)  # boundaries this class carries to the cap or past it
            cand = best[lo:] + w * (cum[need] - cum[lo:])
            j = int(np.argmin(cand))
            if cand[j] < new[need]:
                new[need], width[need], source[need] = cand[j], w, lo + j
        steps.append((width, source))
        best = new
    widths, b = [], need
    for width, source in reversed(steps):
        widths.append(int(width[b]))
        b = int(source[b])
    assert b == 0, "class boundaries must start at 0"
    return ClassCode(tuple(reversed(widths)))


@dataclass(frozen=True)
class WidthCode:
    """Groups of non-negative integers sharing one selector (frame of reference): class c
    stores every value of a group in widths[c] bits; a group takes the first class wide enough
    for its largest value. Cheaper than one selector per value where values are mostly 0 or 1
    (the gaps between a row's many small tail probabilities)."""

    widths: tuple[int, ...]  # increasing; a power-of-two count

    def __post_init__(self) -> None:
        n = len(self.widths)
        if n < 1 or n & (n - 1):
            raise LineageError(f"a width code needs a power-of-two number of classes, got {n}")
        if list(self.widths) != sorted(set(self.widths)) or not self.widths[0] >= 0:
            raise LineageError(f"width code classes must increase: {self.widths}")
        if self.widths[-1] > MAX_FIELD_BITS:
            raise LineageError(f"class widths must be at most {MAX_FIELD_BITS}: {self.widths}")

    @property
    def selector_bits(self) -> int:
        return len(self.widths).bit_length() - 1

    @property
    def capacity(self) -> int:
        return 1 << self.widths[-1]

    def classes(self, group_max: Tensor) -> Tensor:
        """The class of groups whose largest values are ``group_max`` (int64, < capacity)."""
        caps = torch.tensor([1 << w for w in self.widths], device=group_max.device)
        return torch.searchsorted(caps, group_max.contiguous(), right=True)

    def bits(self, group_max: np.ndarray, sizes: np.ndarray) -> int:
        """Total bits of groups with these largest values and sizes (numpy, same shape)."""
        caps = np.array([1 << w for w in self.widths])
        width = np.asarray(self.widths)[np.searchsorted(caps, group_max, side="right")]
        return int(np.sum(self.selector_bits + sizes * width))

    @classmethod
    def fit(cls, group_max: np.ndarray, sizes: np.ndarray, top: int) -> WidthCode:
        """The code with fewest bits on these groups whose widest class is ``top`` bits (every
        value below 2^top stays encodable): all 2-, 4- and 8-class choices of widths."""
        options = [
            cls((*rest, top))
            for s in (1, 2, 3)
            for rest in itertools.combinations(range(top), (1 << s) - 1)
        ]
        return min(options, key=lambda code: code.bits(group_max, sizes))


# ---------------------------------------------------------------- values


def quantise_gaps(logits: Tensor, step: float, max_gap: int) -> Tensor:
    """Integer gaps of rows on a ``step`` grid: [N, K] descending -> [N, K − 1] int64.

    q_i = round((z_1 − z_i) / step) is each entry's grid value; the gaps follow it, except that
    a gap above ``max_gap`` is clamped and the rest carried into the next gaps (only entries
    ≥ max_gap·step nats below the top are affected).
    """
    target = torch.round((logits[:, :1].double() - logits.double()) / step).long()  # [N, K]
    gaps = target.diff(dim=1).clamp_(min=0)
    if gaps.numel() == 0 or int(gaps.max()) <= max_gap:
        return gaps
    decoded = torch.zeros_like(target[:, 0])
    for i in range(gaps.shape[1]):
        gaps[:, i] = (target[:, i + 1] - decoded).clamp(0, max_gap)
        decoded += gaps[:, i]
    return gaps


def gaps_to_logits(gaps: Tensor, step: float) -> Tensor:
    """[N, K − 1] integer gaps -> [N, K] float32 logits 0, −step·q_2, …, −step·q_K."""
    out = torch.empty((gaps.shape[0], gaps.shape[1] + 1), dtype=torch.float32, device=gaps.device)
    out[:, 0] = 0.0
    torch.cumsum(gaps, 1, dtype=torch.float32, out=out[:, 1:])
    return out.mul_(-step)

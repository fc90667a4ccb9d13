"""Cache format v2's codec for teacher top-K rows: a few bits per entry, decoded in torch.

A cached row is a target position's K most probable token ids (descending) and their values.
v2 stores each row as integers, bit-packed:

* **values**: ``d_i = z_1 − z_i`` (≥ 0, non-decreasing; z the logits, or equally the
  log-probabilities at τ = 1) rounded to a grid of ``step`` nats; the K − 1 integer gaps
  ``q_i − q_{i−1}`` are stored. The cumulative values are rounded, not the gaps, so no entry
  moves by more than ``step / 2``, and KL(exact top-K ‖ decoded) ≤ step²/8. Decoding gives
  ``−step · q_i`` as the row's logits: the KI loss renormalises over the K entries at τ and
  ``softmax((z − c) / τ) = softmax(z / τ)`` for any per-row constant c, so the teacher
  distribution at every τ is the exact one up to the rounding. The mass outside the top K is
  not stored: the loss renormalises over the K entries and never uses it.
* **indices**: codes from ``lineage.inherit.codec_tables`` (successor-list place or frequency
  rank given the row's context token): small for the tokens teachers put in their top K.
  Codec 2 (``topk-classes-v2``; codec 1, ``topk-classes``, is still read) stores a run of
  equal coded values in code order, as differences (``codec_tables.sort_ties``).
* index codes use class codes (``lineage.inherit.codec_bits``), one for the first ``head``
  slots of a row and one for the rest (the top slots are more predictable); gaps use a width
  code, one selector per group of ``gap_group`` gaps (tail gaps are mostly 0 or 1). All are
  fitted to a calibration sample (the build's first batch); every value up to a code's
  capacity stays encodable, whatever the sample missed.

Layout of one block (byte-aligned; a part's blocks are one byte stream)::

    [selectors of every row: K index selectors, then the gap groups' selectors]  fixed width
    [payloads of every row: K index payloads, then K − 1 gap payloads]           variable width

so every selector's place is known, a row's payload width is the sum of its selectors' class
widths, and a batch of blocks decodes with a few gathers and cumulative sums — no loop over
rows or entries — on whatever device the batch was moved to (``CodedRows.decode``). A student
may keep only the first k ≤ K entries of every row: the top-k of the same teacher, up to ties
(codec 2: where a run of equal coded values crosses the cut, the entries kept may be other
tokens of that value, at most one grid step from the exact k-th).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lineage.errors import LineageError
from lineage.inherit.codec_bits import (
    MAX_FIELD_BITS,
    ClassCode,
    WidthCode,
    byte_words,
    gaps_to_logits,
    pack_bits,
    quantise_gaps,
    read_bits,
)
from lineage.inherit.codec_tables import IndexTables, index_codes, sort_ties, untie_codes

CODEC_NAME = "topk-classes-v2"  # the codec this lineage writes
CODEC_VERSIONS = {"topk-classes": 1, CODEC_NAME: 2}  # every codec it reads
_CPU_CHUNK_FIELDS = 1 << 18  # fields decoded at once on CPU: int32 work tensors of 1 MiB
_CHUNK_FIELDS = 1 << 24  # elsewhere (a GPU): one chunk for any realistic batch
DEFAULT_STEP = 0.15  # nats: mean KL to the exact top-K about step²/24 ≈ 1e-3 at most
VALUE_RANGE = 30.0  # nats below the top entry that gaps still resolve (e^−30 ≈ 1e-13)


@dataclass(frozen=True)
class CodecSpec:
    """The codec's parameters, as recorded in the cache manifest."""

    top_k: int
    step: float  # value grid in nats
    head: int  # index slots coded with head_code; the other top_k − head with tail_code
    head_code: ClassCode
    tail_code: ClassCode
    gap_group: int  # consecutive gaps sharing one selector of gap_code
    gap_code: WidthCode
    max_successors: int  # successor-list length the tables were cut to (0: ranks only)
    name: str = CODEC_NAME

    def __post_init__(self) -> None:
        if self.name not in CODEC_VERSIONS:
            known = ", ".join(CODEC_VERSIONS)
            raise LineageError(f"unknown top-K codec {self.name!r} (this reads {known})")
        if self.top_k < 1 or not self.step > 0 or not 1 <= self.head <= self.top_k:
            raise LineageError(f"codec needs 1 <= head <= top_k and step > 0: {self.to_dict()}")
        if self.gap_group < 1:
            raise LineageError(f"codec needs gap_group >= 1, got {self.gap_group}")

    @property
    def sorts_ties(self) -> bool:
        """Codec 2: entries of equal coded value are in index-code order, and each one after
        the first of its run stores its code's difference to the previous one, minus 1."""
        return CODEC_VERSIONS[self.name] >= 2

    @property
    def n_groups(self) -> int:
        return -(-(self.top_k - 1) // self.gap_group)

    def selector_widths(self) -> list[int]:
        """Bits of every selector of a row: K index selectors, then one per gap group."""
        k, h = self.top_k, self.head
        index = [self.head_code.selector_bits] * h + [self.tail_code.selector_bits] * (k - h)
        return index + [self.gap_code.selector_bits] * self.n_groups

    @property
    def row_selector_bits(self) -> int:
        return sum(self.selector_widths())

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": CODEC_VERSIONS[self.name],
            "top_k": self.top_k,
            "step": self.step,
            "head": self.head,
            "head_widths": list(self.head_code.widths),
            "tail_widths": list(self.tail_code.widths),
            "gap_group": self.gap_group,
            "gap_widths": list(self.gap_code.widths),
            "max_successors": self.max_successors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CodecSpec:
        def ints(key: str) -> tuple[int, ...]:
            return tuple(int(w) for w in d[key])

        return cls(
            top_k=int(d["top_k"]),
            step=float(d["step"]),
            head=int(d["head"]),
            head_code=ClassCode(ints("head_widths")),
            tail_code=ClassCode(ints("tail_widths")),
            gap_group=int(d["gap_group"]),
            gap_code=WidthCode(ints("gap_widths")),
            max_successors=int(d["max_successors"]),
            name=str(d["name"]),
        )


# ---------------------------------------------------------------- fitting


def _fit_index_codes(codes: np.ndarray, need: int) -> tuple[int, ClassCode, ClassCode, int]:
    """(head, head code, tail code, bits) fewest bits on ``codes`` [N, K] over head splits."""
    k = codes.shape[1]
    best: tuple[int, ClassCode, ClassCode, int] | None = None
    for head in [k, *(h for h in (1, 2, 4, 8, 16, 32) if h < k)]:
        hist = np.bincount(codes[:, :head].reshape(-1))
        head_code = ClassCode.fit(hist, need)
        bits = head_code.bits(hist)
        tail_code = head_code
        if head < k:
            tail_hist = np.bincount(codes[:, head:].reshape(-1))
            tail_code = ClassCode.fit(tail_hist, need)
            bits += tail_code.bits(tail_hist)
        if best is None or bits < best[3]:
            best = (head, head_code, tail_code, bits)
    assert best is not None
    return best


def _group_max(gaps: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest value and size of every group of ``group`` consecutive gaps: [N, K − 1] ->
    ([N, G], [G])."""
    n, m = gaps.shape
    padded = np.zeros((n, -(-m // group) * group), dtype=np.int64)
    padded[:, :m] = gaps
    sizes = np.minimum(group, m - np.arange(0, m, group))
    return padded.reshape(n, -1, group).max(axis=2), sizes


def fit_codec(
    tables: IndexTables,
    context: np.ndarray,
    indices: np.ndarray,
    logits: np.ndarray,
    *,
    step: float = DEFAULT_STEP,
    name: str = CODEC_NAME,
) -> tuple[IndexTables, CodecSpec]:
    """Tables and codes fitted to a calibration sample: context [N], indices and logits [N, K].
    The successor lists are kept or dropped (ranks only), whichever codes the sample's indices
    in fewer bits (a teacher that mostly predicts frequent tokens gains nothing from them, and
    lists lengthen the other codes); the head split and the gap grouping likewise. ``name``:
    the codec (CODEC_VERSIONS; older ones for tests and comparisons)."""
    k = indices.shape[1]
    top = max(int(np.ceil(VALUE_RANGE / step)), 1).bit_length()  # gaps up to 2^top − 1 steps
    gaps = quantise_gaps(torch.as_tensor(np.asarray(logits, np.float64)), step, (1 << top) - 1)
    best = None
    for candidate in dict.fromkeys([tables.max_list, 0]):  # with lists, then without
        cut = tables if candidate == tables.max_list else tables.truncated(candidate)
        codes = index_codes(cut, context, indices)
        if CODEC_VERSIONS.get(name, 0) >= 2:
            codes = sort_ties(torch.from_numpy(codes), gaps).numpy()
        fitted = _fit_index_codes(codes, cut.capacity_needed)
        if best is None or fitted[3] < best[1][3]:
            best = (cut, fitted)
    assert best is not None
    chosen, (head, head_code, tail_code, _) = best
    fits = []
    for group in dict.fromkeys(min(g, max(k - 1, 1)) for g in (1, 2, 3, 4, 6, 8)):
        group_max, sizes = _group_max(gaps.numpy(), group)
        code = WidthCode.fit(group_max, np.broadcast_to(sizes, group_max.shape), top)
        fits.append((code.bits(group_max, np.broadcast_to(sizes, group_max.shape)), group, code))
    _, group, gap_code = min(fits, key=lambda f: f[0])
    spec = CodecSpec(
        k, float(step), head, head_code, tail_code, group, gap_code, chosen.max_list, name
    )
    return chosen, spec


# ---------------------------------------------------------------- encoding


def _field_positions(
    spec: CodecSpec, rows: Tensor, widths: Tensor, sel_off: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Bit positions [N, F] of every selector and payload of blocks with ``rows`` [B] rows each,
    laid out back to back and byte-aligned, given the payload ``widths`` [N, F]; and the bytes
    of every block [B]."""
    n = widths.shape[0]
    block_of_row = torch.repeat_interleave(torch.arange(len(rows)), rows, output_size=n)
    first_row = torch.cumsum(rows, 0) - rows  # [B]
    before = torch.zeros(n + 1, dtype=torch.int64)  # payload bits of earlier rows
    torch.cumsum(widths.sum(1), 0, out=before[1:])
    block_bits = rows * spec.row_selector_bits + before[first_row + rows] - before[first_row]
    block_bytes = (block_bits + 7) // 8
    block_bit = (torch.cumsum(block_bytes, 0) - block_bytes) * 8
    row_in_block = torch.arange(n) - first_row[block_of_row]
    row_bit = block_bit[block_of_row]
    sel_pos = (row_bit + row_in_block * spec.row_selector_bits)[:, None] + sel_off
    payload_base = block_bit + rows * spec.row_selector_bits - before[first_row]  # [B]
    row_start = payload_base[block_of_row] + before[:-1]
    return sel_pos, row_start[:, None] + torch.cumsum(widths, 1) - widths, block_bytes


def _split_rows(spec: CodecSpec, codes: Tensor, gaps: Tensor) -> tuple[Tensor, ...]:
    """Selectors [N, S], payloads [N, P] and payload widths [N, P] of coded rows."""
    h, group = spec.head, spec.gap_group
    parts = [spec.head_code.split(codes[:, :h]), spec.tail_code.split(codes[:, h:])]
    i_sel, i_pay, i_w = (torch.cat([a, b], dim=1) for a, b in zip(*parts, strict=True))
    m = gaps.shape[1]
    padded = torch.zeros((gaps.shape[0], spec.n_groups * group), dtype=torch.int64)
    padded[:, :m] = gaps
    g_sel = spec.gap_code.classes(padded.view(len(gaps), -1, group).amax(dim=2))  # [N, G]
    widths = torch.tensor(spec.gap_code.widths)[g_sel].repeat_interleave(group, dim=1)[:, :m]
    sel = torch.cat([i_sel, g_sel], dim=1)
    return sel, torch.cat([i_pay, gaps], dim=1), torch.cat([i_w, widths], dim=1)


def encode_rows(
    spec: CodecSpec,
    tables: IndexTables,
    rows_per_block: np.ndarray,
    context: np.ndarray,
    indices: np.ndarray,
    logits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Code the rows of consecutive blocks: rows_per_block [B]; context [N]; indices, logits
    [N, K] (descending logits, or anything differing from them by a constant per row).
    Returns (byte stream uint8 [L], bytes per block [B]); blocks start on byte boundaries."""
    n, k = int(np.sum(rows_per_block)), spec.top_k
    if indices.shape != (n, k) or logits.shape != (n, k) or context.shape != (n,):
        raise ValueError(f"rows: indices {indices.shape}, logits {logits.shape}, {n} x {k}")
    codes = torch.from_numpy(index_codes(tables, context, indices))
    capacity = min(spec.head_code.capacity, spec.tail_code.capacity)
    if n and int(codes.max()) >= capacity:
        raise LineageError("an index code exceeds the codec's capacity (tables and spec disagree)")
    gaps = quantise_gaps(torch.as_tensor(logits), spec.step, spec.gap_code.capacity - 1)
    if spec.sorts_ties:
        codes = sort_ties(codes, gaps)
    sel, pay, widths = _split_rows(spec, codes, gaps)
    sel_w = torch.tensor(spec.selector_widths())
    sel_off = torch.cumsum(sel_w, 0) - sel_w
    rows = torch.as_tensor(np.asarray(rows_per_block, dtype=np.int64))
    sel_pos, pay_pos, block_bytes = _field_positions(spec, rows, widths, sel_off)
    stream = pack_bits(
        torch.cat([sel_pos.reshape(-1), pay_pos.reshape(-1)]),
        torch.cat([sel.reshape(-1), pay.reshape(-1)]),
        torch.cat([sel_w.expand_as(sel).reshape(-1), widths.reshape(-1)]),
        int(block_bytes.sum()),
    )
    return stream.numpy(), block_bytes.numpy()


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _Layout:
    """A row's selectors (K indices, then the gap groups) and payloads (K indices, then K − 1
    gaps) as int32 tensors on one device; selectors are read in words of ≤ MAX_FIELD_BITS
    bits, several per read."""

    sel_mask: Tensor  # [S] 2^selector width − 1
    chunk_start: Tensor  # [Ch] bit offsets of the selector words of a row
    chunk_mask: Tensor  # [Ch]
    chunk_of_sel: Tensor  # [S] the word holding each selector
    shift: Tensor  # [S] the selector's offset inside its word
    payload_sel: Tensor  # [P] the selector that gives each payload its class
    payload_off: Tensor  # [P] offset of the payload's code in the *_flat tables
    widths_flat: Tensor  # [3·C] payload width of each (code, class)
    masks_flat: Tensor  # [3·C] 2^width − 1
    bases_flat: Tensor  # [3·C] first value of each (code, class)


def _layout(spec: CodecSpec, device: torch.device) -> _Layout:
    k, h, group = spec.top_k, spec.head, spec.gap_group
    sel_w = np.array(spec.selector_widths())
    sel_off = np.cumsum(sel_w) - sel_w
    codes: tuple[ClassCode | WidthCode, ...] = (spec.head_code, spec.tail_code, spec.gap_code)
    n_cls = max(len(c.widths) for c in codes)
    widths, bases = np.zeros((3, n_cls), np.int64), np.zeros((3, n_cls), np.int64)
    for g, code in enumerate(codes):
        widths[g, : len(code.widths)] = code.widths
        if isinstance(code, ClassCode):
            bases[g, : len(code.widths)] = code.bases
    starts, chunk_of_sel = [0], []
    for off, w in zip(sel_off, sel_w, strict=True):  # a new word when this one is full
        if off + w - starts[-1] > MAX_FIELD_BITS:
            starts.append(int(off))
        chunk_of_sel.append(len(starts) - 1)
    ends = np.array([*starts[1:], int(sel_off[-1] + sel_w[-1])])
    gap_sel = k + np.arange(k - 1) // group
    code_of = [0] * h + [1] * (k - h) + [2] * (k - 1)

    def t(a: object) -> Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int32), device=device)

    return _Layout(
        sel_mask=t((1 << sel_w) - 1),
        chunk_start=t(starts),
        chunk_mask=t((1 << (ends - np.asarray(starts))) - 1),
        chunk_of_sel=t(chunk_of_sel),
        shift=t(sel_off - np.asarray(starts)[chunk_of_sel]),
        payload_sel=t(np.concatenate([np.arange(k), gap_sel])),
        payload_off=t(np.asarray(code_of) * n_cls),
        widths_flat=t(widths.reshape(-1)),
        masks_flat=t((1 << widths.reshape(-1)) - 1),
        bases_flat=t(bases.reshape(-1)),
    )


def chunk_bounds(block_starts: tuple[int, ...], n_rows: int, per_chunk: int) -> list[int]:
    """Row boundaries [0, …, n_rows] at block starts, each chunk at most ``per_chunk`` rows
    unless one block alone is longer."""
    bounds, previous = [0], 0
    for end in (*block_starts[1:], n_rows):
        if end - bounds[-1] > per_chunk and previous > bounds[-1]:
            bounds.append(previous)
        previous = end
    return [*bounds, n_rows] if n_rows > bounds[-1] or n_rows == 0 else bounds


@dataclass(frozen=True)
class CodedRows:
    """One batch's coded top-K rows: assembled on the host, decoded where they are moved.

    words: int32 [L + 1], ``byte_words`` of the blocks' bytes back to back (4 bytes moved per coded
    byte: still far fewer than the K·12 bytes per row of plain rows); rows: int32 [5, N], per
    row: bit of its selectors, bit where its block's payloads start, index of its block's first
    row, start and length of its context token's successor list.
    """

    words: Tensor
    rows: Tensor
    decoder: TopKDecoder
    k: int  # entries kept per row (≤ the codec's K)
    block_starts: tuple[int, ...]  # first row of every block: where decoding may be chunked

    @property
    def n_rows(self) -> int:
        return int(self.rows.shape[1])

    def to(self, device: torch.device | str) -> CodedRows:
        words = self.words.to(device, non_blocking=True)
        rows = self.rows.to(device, non_blocking=True)
        return CodedRows(words, rows, self.decoder, self.k, self.block_starts)

    def decode(self) -> tuple[Tensor, Tensor]:
        """(indices [N, k] long, logits [N, k] float32), on the device of the rows, in chunks
        of whole blocks (on CPU about 2^18 fields: a training batch in one or two chunks, as
        each chunk's ~40 small tensor operations cost more than the arithmetic)."""
        budget = _CPU_CHUNK_FIELDS if self.words.device.type == "cpu" else _CHUNK_FIELDS
        per_chunk = max(1, budget // (2 * self.decoder.spec.top_k - 1))
        bounds = chunk_bounds(self.block_starts, self.n_rows, per_chunk)
        parts = [
            self.decoder.decode(self.words, self.rows[:, lo:hi], self.k, lo)
            for lo, hi in itertools.pairwise(bounds)
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class TopKDecoder:
    """Decodes coded rows on the device of the stream; the tables go there once.

    The host does the per-row bookkeeping that needs no payload (``prepare``: numpy on [N]);
    the device reads selectors and payloads and maps codes to tokens in about 40 tensor
    operations per batch whatever its size, in int32 (one batch's stream stays below 2^31 bits,
    256 MiB): half the memory traffic of int64, which these gathers are bound by.
    """

    def __init__(self, spec: CodecSpec, tables: IndexTables) -> None:
        if tables.capacity_needed > min(spec.head_code.capacity, spec.tail_code.capacity):
            raise LineageError("codec tables need more index codes than the codec's classes hold")
        self.spec, self.tables = spec, tables
        self._offsets = np.asarray(tables.succ_offsets, dtype=np.int64)
        self._on: dict[torch.device, tuple[_Layout, Tensor, int]] = {}

    def _device_tables(self, device: torch.device) -> tuple[_Layout, Tensor, int]:
        """The layout, and one token table: the successor lists, then the ranking (a listed
        code c of a row is at succ_start + c, an unlisted one at S + c − succ_len)."""
        if device not in self._on:
            t = self.tables
            table = np.concatenate([t.succ_tokens, t.token_of_rank]).astype(np.int32)
            layout = _layout(self.spec, device)
            self._on[device] = (layout, torch.from_numpy(table).to(device), len(t.succ_tokens))
        return self._on[device]

    def prepare(
        self, blocks: list[np.ndarray], rows: np.ndarray, context: np.ndarray, k: int | None = None
    ) -> CodedRows:
        """CodedRows of whole blocks: their byte strings, rows per block [B], the rows' context
        tokens [N]; the first ``k`` ≤ K entries of each row are kept (default all K)."""
        spec = self.spec
        k = spec.top_k if k is None else int(k)
        if not 1 <= k <= spec.top_k:
            raise LineageError(f"k must be in 1..{spec.top_k} (the cache's K), not {k}")
        sizes = np.array([len(b) for b in blocks], dtype=np.int64)
        stream = np.concatenate([np.zeros(0, np.uint8), *blocks])
        if len(stream) >= 1 << 28:
            raise LineageError("a batch's coded rows must stay below 256 MiB (int32 bit offsets)")
        rows = np.asarray(rows, dtype=np.int64)
        block_bit = (np.cumsum(sizes) - sizes) * 8
        first = np.cumsum(rows) - rows
        block_of_row = np.repeat(np.arange(len(rows)), rows)
        in_block = np.arange(len(block_of_row)) - first[block_of_row]
        ctx = np.asarray(context, dtype=np.int64)
        start = self._offsets[ctx]
        per_row = np.stack(
            [
                block_bit[block_of_row] + in_block * spec.row_selector_bits,
                (block_bit + rows * spec.row_selector_bits)[block_of_row],
                first[block_of_row],
                start,
                self._offsets[ctx + 1] - start,
            ]
        )
        words = torch.from_numpy(byte_words(stream))
        block_starts = tuple(int(r) for r in first)
        return CodedRows(words, torch.from_numpy(per_row.astype(np.int32)), self, k, block_starts)

    def decode(self, words: Tensor, rows: Tensor, k: int, first: int = 0) -> tuple[Tensor, Tensor]:
        """See ``CodedRows``: words, rows [5, n] -> indices [n, k] long, logits [n, k] float32.
        ``rows`` are whole blocks starting at row ``first`` of the batch."""
        kk, i32, dev = self.spec.top_k, torch.int32, words.device
        lay, table, n_listed = self._device_tables(dev)
        row_sel, row_base, row_first, succ_start, succ_len = rows.unbind(0)
        n, f = row_sel.shape[0], 2 * kk - 1
        chunks = read_bits(words, row_sel[:, None] + lay.chunk_start, lay.chunk_mask)  # [N, Ch]
        sel = (chunks.index_select(1, lay.chunk_of_sel) >> lay.shift) & lay.sel_mask  # [N, S]
        flat = (sel.index_select(1, lay.payload_sel) + lay.payload_off).view(-1)  # [N·P]
        widths = lay.widths_flat.index_select(0, flat).view(n, f)
        ends = torch.cumsum(widths, 1, dtype=i32)  # payload ends inside the row
        before = torch.zeros(n + 1, dtype=i32, device=dev)  # payload bits of earlier rows
        torch.cumsum(ends[:, -1], 0, dtype=i32, out=before[1:])
        row_start = row_base + before[:-1] - before.index_select(0, row_first - first)  # [N]
        if k < kk:  # read only the fields kept: the first k indices and k − 1 gaps
            cols = torch.cat([torch.arange(k), torch.arange(kk, kk + k - 1)]).to(dev)
            flat, widths, ends = (
                flat.view(n, f)[:, cols].reshape(-1),
                widths[:, cols],
                ends[:, cols],
            )
        masks = lay.masks_flat.index_select(0, flat).view(n, 2 * k - 1)
        values = lay.bases_flat.index_select(0, flat).view(n, 2 * k - 1)
        values += read_bits(words, row_start[:, None] + ends - widths, masks)
        codes, gaps = values[:, :k], values[:, k:]
        if self.spec.sorts_ties:
            codes = untie_codes(codes, gaps)
        listed = codes < succ_len[:, None]
        offset = torch.where(listed, succ_start[:, None], (n_listed - succ_len)[:, None])
        tokens = table.index_select(0, (codes + offset).view(-1))
        return tokens.view(n, k).long(), gaps_to_logits(gaps, self.spec.step)

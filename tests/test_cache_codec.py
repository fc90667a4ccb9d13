"""Cache format v2's top-K codec: bit I/O, class codes, value grid, index tables, round trips."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lineage.errors import LineageError
from lineage.inherit import codec
from lineage.inherit.codec import (
    CodecSpec,
    TopKDecoder,
    chunk_bounds,
    encode_rows,
    fit_codec,
    gaps_to_logits,
    quantise_gaps,
)
from lineage.inherit.codec_bits import ClassCode, WidthCode, byte_words, pack_bits, read_bits
from lineage.inherit.codec_tables import (
    IndexTables,
    canonical_rows,
    index_codes,
    index_tables,
    row_context,
    sort_ties,
    untie_codes,
)
from lineage.inherit.losses import ki_loss


def test_pack_and_read_bits_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    widths = torch.randint(0, 26, (500,), generator=g)
    values = torch.randint(0, 1 << 25, (500,), generator=g) & ((1 << widths) - 1)
    positions = torch.cumsum(widths, 0) - widths + 3  # back to back, from bit 3
    n_bytes = int((positions[-1] + widths[-1] + 7) // 8)
    buf = pack_bits(positions, values, widths, n_bytes)
    words = torch.from_numpy(byte_words(buf.numpy()))
    got = read_bits(words, positions.int(), ((1 << widths) - 1).int())
    assert torch.equal(got.long(), values)
    assert buf[0] & 0b111 == 0  # the 3 bits before the first field are untouched
    # A zero-width field may start right at the end (a row's last gaps of 0): it reads as 0.
    end = torch.tensor([8 * n_bytes], dtype=torch.int32)
    assert read_bits(words, end, torch.zeros(1, dtype=torch.int32)).tolist() == [0]


def test_pack_bits_refuses_a_field_past_the_end() -> None:
    with pytest.raises(ValueError, match="past n_bytes"):
        pack_bits(torch.tensor([6]), torch.tensor([0b111]), torch.tensor([3]), 1)


def test_class_code_split_and_capacity() -> None:
    code = ClassCode((0, 1, 3, 5))
    assert code.selector_bits == 2 and code.bases == (0, 1, 3, 11) and code.capacity == 43
    values = torch.arange(43)
    sel, payload, widths = code.split(values)
    bases = torch.tensor(code.bases)
    assert torch.equal(bases[sel] + payload, values)
    assert bool((payload < (1 << widths)).all())
    with pytest.raises(LineageError, match="power-of-two"):
        ClassCode((1, 2, 3))


def _brute_force_bits(counts: np.ndarray, n_classes: int) -> int:
    best = None
    for widths in itertools.product(range(len(counts).bit_length() + 1), repeat=n_classes):
        code = ClassCode(widths)
        if code.capacity >= len(counts):
            bits = code.bits(counts)
            best = bits if best is None else min(best, bits)
    assert best is not None
    return best


def test_class_code_fit_is_optimal_on_small_histograms() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = rng.zipf(1.5, 12).clip(max=50)
        for s in (1, 2):
            code = ClassCode.fit(counts, len(counts), selector_bits=(s,))
            assert code.capacity >= len(counts)
            assert code.bits(counts) == _brute_force_bits(counts, 1 << s)


def test_class_code_fit_covers_need_and_beats_fixed_width() -> None:
    counts = np.bincount(np.random.default_rng(1).zipf(1.3, 20000).clip(max=4999))
    code = ClassCode.fit(counts, 5000)
    assert code.capacity >= 5000
    assert code.bits(counts) < 13 * counts.sum()  # ceil(log2 5000) = 13 bits each


def test_gaps_keep_every_value_within_half_a_step() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 16, generator=g).mul(3).sort(dim=1, descending=True).values
    for step in (0.05, 0.15, 0.4):
        gaps = quantise_gaps(z, step, max_gap=1 << 20)
        assert gaps.shape == (200, 15) and bool((gaps >= 0).all())
        decoded = gaps_to_logits(gaps, step)
        assert bool(((z - z[:, :1]) - decoded).abs().max() <= step / 2 + 1e-6)


def test_gaps_clamp_and_catch_up() -> None:
    z = torch.tensor([[0.0, -10.0, -10.1, -10.2]])
    gaps = quantise_gaps(z, 1.0, max_gap=4)
    assert gaps.tolist() == [[4, 4, 2]]  # 10 nats in steps of at most 4, then on the grid
    assert gaps_to_logits(gaps, 1.0).tolist() == [[0.0, -4.0, -8.0, -10.0]]


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_log_probabilities_and_shifted_logits_teach_like_raw_logits(tau: float) -> None:
    """softmax((z − c)/τ) = softmax(z/τ): stored log-probabilities at τ = 1, or logits minus
    the top one, give ki_loss the same teacher distribution at every τ."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(12, 40, generator=g), torch.randn(12, 40, generator=g) * 3
    labels = torch.randint(40, (12,), generator=g)
    values, indices = teacher.topk(8, dim=-1)
    shifts = {
        "raw": values,
        "log-probs": values - teacher.logsumexp(-1, keepdim=True),
        "minus top": values - values[:, :1],
    }
    losses = {}
    for name, v in shifts.items():
        s = student.clone().requires_grad_(True)
        out = ki_loss(
            s, labels, alpha=0.7, temperature=tau, teacher_topk_indices=indices,
            teacher_topk_logits=v,
        )  # fmt: skip
        out.total.backward()
        losses[name] = (out.total.detach(), s.grad)
    for name in ("log-probs", "minus top"):
        torch.testing.assert_close(losses[name][0], losses["raw"][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(losses[name][1], losses["raw"][1], rtol=1e-5, atol=1e-7)


def test_index_tables_rank_by_frequency_and_list_successors() -> None:
    tokens = np.array([3, 1, 3, 1, 3, 2, 3, 1, 0, 3, 2, 3, 1])
    t = index_tables(tokens, vocab_size=5, max_successors=1, min_count=2)
    t.check()
    assert t.token_of_rank.tolist() == [3, 1, 2, 0, 4]  # ties by id; 4 never seen
    # After 3: 1 four times, 2 twice -> only 1 (max 1); after 1: 3 twice; after 2: 3 twice.
    lists = {a: t.succ_tokens[t.succ_offsets[a] : t.succ_offsets[a + 1]].tolist() for a in range(5)}
    assert lists == {0: [], 1: [3], 2: [3], 3: [1], 4: []}
    codes = index_codes(t, np.array([3, 3, 0]), np.array([[1, 2], [3, 4], [3, 1]]))
    # ctx 3 (list [1]): 1 -> 0; 2 -> 1 + rank 2; 3 -> 1 + rank 0; 4 -> 1 + 4; ctx 0: ranks.
    assert codes.tolist() == [[0, 3], [1, 5], [0, 1]]


def test_index_tables_refuse_tokens_outside_the_vocabulary() -> None:
    with pytest.raises(LineageError, match="outside the vocabulary"):
        index_tables(np.array([0, 7]), vocab_size=5, max_successors=4)
    with pytest.raises(LineageError, match="malformed"):
        IndexTables(np.array([0, 0, 1]), np.array([0, 0, 0, 0]), np.zeros(0, np.uint16))
    with pytest.raises(LineageError, match="malformed"):  # a list points past the vocabulary
        IndexTables(np.array([0, 1, 2]), np.array([0, 1, 1, 1]), np.array([3], np.uint16))


def test_truncated_tables_keep_the_head_of_every_list() -> None:
    tokens = np.array([0, 1, 0, 1, 0, 2, 0, 2, 0, 3, 0, 3, 1, 2, 1, 2])
    t = index_tables(tokens, vocab_size=4, max_successors=8, min_count=2)
    cut = t.truncated(1)
    lists = {
        a: cut.succ_tokens[cut.succ_offsets[a] : cut.succ_offsets[a + 1]].tolist() for a in range(4)
    }
    assert lists == {0: [1], 1: [0], 2: [0], 3: []}  # ties (0 -> 1, 2, 3; 1 -> 0, 2) by id
    assert t.max_list == 3 and cut.max_list == 1 and t.truncated(0).max_list == 0
    assert np.array_equal(cut.token_of_rank, t.token_of_rank)


def test_row_context_is_the_input_at_causal_targets_and_before_mlm_ones() -> None:
    inputs = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    target = np.array([[True, True, True, False], [True, False, False, True]])
    assert row_context(inputs, target, "clm").tolist() == [10, 11, 12, 20, 23]
    assert row_context(inputs, target, "mlm").tolist() == [10, 10, 11, 20, 22]


def test_fit_codec_keeps_successor_lists_only_where_they_pay() -> None:
    """Rows that follow the context token code shorter with lists; rows that ignore it
    (a teacher predicting frequent tokens) code shorter with ranks only."""
    rng = np.random.default_rng(0)
    vocab = 400
    corpus = rng.integers(0, vocab, 20000)
    corpus[1::2] = (corpus[::2] * 7 + 1) % vocab  # every even token predicts the next one
    tables = index_tables(corpus, vocab, max_successors=16)
    context = corpus[0:2000:2]
    following = np.stack([(context * 7 + 1) % vocab, rng.integers(0, vocab, len(context))], 1)
    logits = np.array([[0.0, -1.0]]).repeat(len(context), 0)
    kept, spec = fit_codec(tables, context, following, logits)
    assert spec.max_successors == kept.max_list > 0
    frequent = np.argsort(-np.bincount(corpus, minlength=vocab))[:2][None].repeat(len(context), 0)
    ranks, spec = fit_codec(tables, context, frequent, logits)
    assert spec.max_successors == ranks.max_list == 0


def _teacher_rows(n_rows: int, vocab: int, k: int, seed: int):
    """Rows like a teacher's: frequent tokens more likely, descending log-probabilities."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)
    weights /= weights.sum()
    context = rng.choice(vocab, n_rows, p=weights)
    indices = np.stack([rng.choice(vocab, k, replace=False, p=weights) for _ in range(n_rows)])
    logits = np.sort(rng.normal(size=(n_rows, k)) * 2, axis=1)[:, ::-1].copy()
    return context, indices, logits


@pytest.mark.parametrize("vocab", [300, 70_000])
def test_rows_round_trip_through_blocks_in_any_order(vocab: int) -> None:
    k, rows = 8, np.array([5, 0, 7, 3, 12])  # an MLM-like block with no targets
    context, indices, logits = _teacher_rows(int(rows.sum()), vocab, k, seed=vocab)
    corpus = np.random.default_rng(0).choice(
        vocab, 5000, p=1 / np.arange(1, vocab + 1) / np.sum(1 / np.arange(1, vocab + 1))
    )
    tables = index_tables(corpus, vocab, max_successors=16, min_count=1)
    tables, spec = fit_codec(tables, context, indices, logits, step=0.1)
    stream, sizes = encode_rows(spec, tables, rows, context, indices, logits)
    assert sizes.sum() == len(stream) and sizes[1] == 0
    starts = np.cumsum(sizes) - sizes
    blocks = [stream[s : s + n] for s, n in zip(starts, sizes, strict=True)]
    decoder = TopKDecoder(spec, tables)
    first = np.cumsum(rows) - rows
    order = [3, 0, 1, 4, 2]
    pick = np.concatenate([np.arange(first[b], first[b] + rows[b]) for b in order])
    coded = decoder.prepare([blocks[b] for b in order], rows[order], context[pick])
    all_i, all_v = coded.decode()
    # Codec 2 keeps tied entries (equal coded values) in code order: equal up to that order.
    got, want = canonical_rows(all_i, all_v), torch.from_numpy(indices[pick]).long()
    assert torch.equal(got[0], canonical_rows(want, all_v)[0])
    assert not torch.equal(all_i, want)  # the rows have ties, and some were reordered
    for keep in (k, 3, 1):
        got_i, got_v = decoder.prepare(
            [blocks[b] for b in order], rows[order], context[pick], keep
        ).decode()
        assert got_i.dtype == torch.int64 and got_v.dtype == torch.float32
        assert torch.equal(got_i, all_i[:, :keep]) and torch.equal(got_v, all_v[:, :keep])
        want_v = logits[pick, :keep] - logits[pick, :1]
        assert np.abs(got_v.numpy() - want_v).max() <= 0.05 + 1e-5
    with pytest.raises(LineageError, match="k must be in"):
        decoder.prepare(blocks, rows, context, k + 1)


def test_chunk_bounds_cut_at_block_starts() -> None:
    assert chunk_bounds((0, 5, 5, 12, 15), 27, 10) == [0, 5, 15, 27]  # 12 rows: one block
    assert chunk_bounds((0, 3, 6, 9), 12, 100) == [0, 12]
    assert chunk_bounds((), 0, 10) == [0, 0]  # an empty batch is one (empty) chunk


def test_chunked_decoding_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.array([9, 4, 0, 11, 6, 8])
    context, indices, logits = _teacher_rows(int(rows.sum()), 500, 6, seed=1)
    tables = index_tables(np.arange(500).repeat(2), 500, max_successors=8, min_count=1)
    tables, spec = fit_codec(tables, context, indices, logits)
    stream, sizes = encode_rows(spec, tables, rows, context, indices, logits)
    blocks = np.split(stream, np.cumsum(sizes)[:-1])
    coded = TopKDecoder(spec, tables).prepare(blocks, rows, context)
    whole = coded.decode()
    monkeypatch.setattr(codec, "_CPU_CHUNK_FIELDS", 11 * 12)  # 12 rows per chunk at K = 6
    chunked = coded.decode()
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))
    exact = torch.from_numpy(indices).long()
    assert torch.equal(canonical_rows(*whole)[0], canonical_rows(exact, whole[1])[0])


def test_codec_spec_json_round_trip() -> None:
    spec = CodecSpec(
        10, 0.15, 4, ClassCode((1, 1, 2, 2, 3, 5, 7, 11)), ClassCode((3, 5, 8, 11)), 3,
        WidthCode((0, 1, 3, 8)), 64,
    )  # fmt: skip
    assert CodecSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(LineageError, match="unknown top-K codec"):
        CodecSpec.from_dict({**spec.to_dict(), "name": "zstd"})


def test_distortion_is_within_the_grid_bound() -> None:
    """KL(exact top-K ‖ decoded) ≤ step²/8: every log-probability moves by ≤ step/2."""
    context, indices, logits = _teacher_rows(400, 500, 10, seed=3)
    tables = index_tables(np.arange(500).repeat(3), 500, max_successors=4, min_count=1)
    step = 0.15
    tables, spec = fit_codec(tables, context, indices, logits, step=step)
    stream, _ = encode_rows(spec, tables, np.array([400]), context, indices, logits)
    _, got = TopKDecoder(spec, tables).prepare([stream], np.array([400]), context).decode()
    p = torch.from_numpy(logits).double().log_softmax(1)
    q = got.double().log_softmax(1)
    kl = (p.exp() * (p - q)).sum(1)
    assert float(kl.max()) <= step**2 / 8 and float(kl.mean()) > 0


def test_sorted_ties_round_trip_on_any_prefix() -> None:
    """Codec 2 sorts runs of equal values (gap 0) by code and stores differences: undone on
    every prefix, whatever the runs."""
    g = torch.Generator().manual_seed(0)
    n, k = 300, 12
    codes = torch.stack([torch.randperm(5000, generator=g)[:k] for _ in range(n)])
    gaps = torch.randint(0, 3, (n, k - 1), generator=g) * torch.randint(
        0, 2, (n, k - 1), generator=g
    )
    stored = sort_ties(codes, gaps)
    assert bool((stored >= 0).all()) and bool((stored <= codes.max()).all())
    run = torch.cat([torch.zeros(n, 1, dtype=torch.long), (gaps != 0).long().cumsum(1)], 1)
    back = untie_codes(stored.int(), gaps.int())
    assert back.dtype == torch.int32
    for row in range(n):  # the same codes per run, each run in increasing order
        for r in run[row].unique():
            got, want = back[row][run[row] == r], codes[row][run[row] == r]
            assert torch.equal(got.long(), want.sort().values)
    for keep in (1, 5, k):
        assert torch.equal(
            untie_codes(stored[:, :keep], gaps[:, : keep - 1]), back[:, :keep].long()
        )
    assert stored.float().mean() < codes.float().mean()  # ties made the stored codes smaller


def test_codec_names_are_versions() -> None:
    spec = CodecSpec(
        10, 0.15, 4, ClassCode((1, 1, 2, 2, 3, 5, 7, 11)), ClassCode((3, 5, 8, 11)), 3,
        WidthCode((0, 1, 3, 8)), 64,
    )  # fmt: skip
    assert spec.sorts_ties and spec.to_dict()["name"] == "topk-classes-v2"
    assert spec.to_dict()["version"] == 2
    old = CodecSpec.from_dict({**spec.to_dict(), "name": "topk-classes"})
    assert not old.sorts_ties and old.to_dict()["version"] == 1

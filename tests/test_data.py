"""Token blocks on disk, shards, and the deterministic, resumable mixture sampler."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from lineage.corpora.batches import (
    IGNORE_INDEX,
    BlockShard,
    MixtureSampler,
    causal_targets,
    load_blocks,
    mlm_mask,
    token_dtype,
    tokenize_to_blocks,
)
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer, train_tokenizer
from lineage.errors import LineageError

VOCABULARY = "alpha beta gamma delta protein cell graph kernel the of and model data"
WORDS = VOCABULARY.split()
INFO = TokenizerInfo(vocab_size=300, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 50))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(corpus(100), out, vocab_size=300)
    return load_tokenizer(out)


def blocks_array(n: int, t: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(5, 300, size=(n, t), dtype=np.uint16)


def test_token_dtype_is_smallest_fitting() -> None:
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_tokenize_to_blocks_matches_reference(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    texts = [*corpus(300, seed=1), "", "   "]  # blank documents are skipped
    info = tokenize_to_blocks(iter(texts), tokenizer, 16, tmp_path / "b.npy", batch_docs=7)
    stream: list[int] = []
    for text in texts[:300]:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [2]
    n = len(stream) // 16
    want = np.asarray(stream[: n * 16]).reshape(n, 16)
    got = load_blocks(tmp_path / "b.npy")
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    assert (info.blocks, info.block_size, info.tokens, info.documents) == (n, 16, n * 16, 300)
    assert info.digest == hashlib.sha256((tmp_path / "b.npy").read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy"]  # no temporaries left


def test_load_blocks_refuses_other_files(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.zeros((2, 3), dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name in ("f.npy", "junk.npy"):
        with pytest.raises(LineageError):
            load_blocks(tmp_path / name)


def test_block_shard_causal_and_masked() -> None:
    blocks = blocks_array(10)
    blocks[:, 0] = 2  # a document separator: never a masking target
    causal = BlockShard("c", blocks, "clm", INFO).batch([3, 1], torch.Generator())
    assert torch.equal(causal.input_ids, torch.from_numpy(blocks[[3, 1]].astype(np.int64)))
    assert torch.equal(causal.labels, causal_targets(causal.input_ids))
    shard = BlockShard("m", blocks, "mlm", INFO, teacher="t")
    a = shard.batch(list(range(10)), torch.Generator().manual_seed(5))
    b = shard.batch(list(range(10)), torch.Generator().manual_seed(5))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert a.teacher == "t" and a.shard == "m"
    original = torch.from_numpy(blocks.astype(np.int64))
    target = a.labels != IGNORE_INDEX
    assert torch.equal(a.labels[target], original[target])
    assert not target[:, 0].any()
    assert torch.equal(a.input_ids[~target], original[~target])  # non-targets untouched


def test_mlm_mask_rates() -> None:
    ids = torch.randint(5, 300, (200, 100), generator=torch.Generator().manual_seed(0))
    masked, labels = mlm_mask(
        ids, torch.Generator().manual_seed(1), mask_token_id=4, vocab_size=300
    )
    target = labels != IGNORE_INDEX
    assert abs(target.float().mean().item() - 0.15) < 0.01
    as_mask = (masked[target] == 4).float().mean().item()
    kept = (masked[target] == ids[target]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02


def _draw(sampler: MixtureSampler, n: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(b.shard, b.input_ids, b.labels) for b in (next(sampler) for _ in range(n))]


def _same(a: list, b: list) -> bool:  # type: ignore[type-arg]
    return all(
        x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
        for x, y in zip(a, b, strict=True)
    )


def _shards(objective: str = "mlm") -> list[BlockShard]:
    return [
        BlockShard("a", blocks_array(30, seed=1), objective, INFO),
        BlockShard("b", blocks_array(10, seed=2), objective, INFO),
    ]


def test_sampler_is_deterministic_and_resumes_exactly() -> None:
    first = _draw(MixtureSampler(_shards(), batch_size=4, seed=7), 25)
    assert _same(first, _draw(MixtureSampler(_shards(), batch_size=4, seed=7), 25))
    assert not _same(first, _draw(MixtureSampler(_shards(), batch_size=4, seed=8), 25))
    sampler = MixtureSampler(_shards(), batch_size=4, seed=7)
    _draw(sampler, 11)
    state = sampler.state_dict()
    resumed = MixtureSampler(_shards(), batch_size=4, seed=7)
    resumed.load_state_dict(state)
    assert _same(_draw(resumed, 14), first[11:])
    with pytest.raises(LineageError, match="does not match"):
        MixtureSampler(_shards()[:1], batch_size=4, seed=7).load_state_dict(state)


def test_sampler_epochs_cover_every_block_once() -> None:
    shard = BlockShard("a", np.arange(60, dtype=np.uint16).reshape(20, 3) + 5, "clm", INFO)
    sampler = MixtureSampler([shard], batch_size=3, seed=0)
    seen = torch.cat([next(sampler).input_ids[:, 0] for _ in range(20)])  # 60 = 3 epochs
    for epoch in range(3):
        assert sorted(seen[epoch * 20 : (epoch + 1) * 20].tolist()) == list(range(5, 65, 3))
    assert not torch.equal(seen[:20], seen[20:40])  # a new permutation each epoch


def test_sampler_weights() -> None:
    draws = Counter(b.shard for b in _draw_many(weights=[3, 1]))
    assert abs(draws["a"] / 2000 - 0.75) < 0.03
    draws = Counter(b.shard for b in _draw_many(weights=None))  # by size: 30 vs 10
    assert abs(draws["a"] / 2000 - 0.75) < 0.03
    assert Counter(b.shard for b in _draw_many(weights=[0, 1]))["a"] == 0
    with pytest.raises(LineageError):
        MixtureSampler(_shards(), batch_size=4, seed=0, weights=[1])
    with pytest.raises(LineageError):
        MixtureSampler(_shards(), batch_size=4, seed=0, weights=[0, 0])


def _draw_many(weights: list[float] | None) -> list:  # type: ignore[type-arg]
    sampler = MixtureSampler(_shards("clm"), batch_size=1, seed=0, weights=weights)
    return [next(sampler) for _ in range(2000)]


def test_ranks_get_disjoint_slices_of_the_same_shard() -> None:
    single = MixtureSampler(_shards("clm"), batch_size=8, seed=3)
    ranks = [
        MixtureSampler(_shards("clm"), batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)
    ]
    for _ in range(12):
        whole = next(single)
        parts = [next(s) for s in ranks]
        assert parts[0].shard == parts[1].shard == whole.shard
        assert torch.equal(torch.cat([p.input_ids for p in parts]), whole.input_ids)


def test_masks_follow_the_stream_not_the_batching() -> None:
    """2 ranks x 4 blocks, 4 blocks drawn twice and 8 blocks at once mask the same blocks the
    same way (MLM), so data parallelism and gradient accumulation see one process's data."""
    shard = [BlockShard("a", blocks_array(30, seed=1), "mlm", INFO)]
    single = MixtureSampler(shard, batch_size=8, seed=3)
    ranks = [MixtureSampler(shard, batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    halves = MixtureSampler(shard, batch_size=4, seed=3)
    for _ in range(5):
        whole = next(single)
        for parts in ([next(s) for s in ranks], [next(halves), next(halves)]):
            assert torch.equal(torch.cat([p.input_ids for p in parts]), whole.input_ids)
            assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    assert (whole.labels != IGNORE_INDEX).any()


def test_a_sampler_state_saved_before_samples_were_counted_still_resumes() -> None:
    sampler = MixtureSampler(_shards(), batch_size=4, seed=7)
    _draw(sampler, 6)
    state = sampler.state_dict()
    expected = _draw(sampler, 5)
    old = {k: v for k, v in state.items() if k != "samples"}
    resumed = MixtureSampler(_shards(), batch_size=4, seed=7)
    resumed.load_state_dict(old)
    assert resumed.samples == 24 and _same(_draw(resumed, 5), expected)

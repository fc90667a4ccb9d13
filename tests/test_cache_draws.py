"""Several mask draws per block in an MLM teacher cache (issue 16, fix 1): over epochs the
student's targets move as with dynamic masking, and they are always the teacher's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cache import (
    MASK_ID,
    N_BLOCKS,
    SPECIAL,
    V,
    assert_topk_matches,
    build_mlm,
    make_blocks,
    roberta,
)

from lineage.corpora.batches import IGNORE_INDEX, Batch, BlockShard, MixtureSampler
from lineage.corpora.tokenizer import TokenizerInfo
from lineage.errors import LineageError
from lineage.inherit.cache import CachedShard, open_cache
from lineage.inherit.cache_parts import block_targets

DRAWS = 4


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def drawn(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    teacher, out = roberta(), tmp_path_factory.mktemp("draws") / "cache"
    build_mlm(
        teacher, make_blocks(), out, batch_size=3, format_version=request.param,
        mask_draws=DRAWS, mask_seed=7,
    )  # fmt: skip
    return out, teacher


class Recording:
    """A ShardSource passing batches through, remembering which blocks came at which epoch."""

    def __init__(self, inner: CachedShard | BlockShard, epochs: bool = True) -> None:
        self.inner, self.name, self.teacher = inner, inner.name, inner.teacher
        self.epochs = epochs  # False: hide the epochs, so a cache serves draw 0 (the old way)
        self.calls: list[tuple[list[int], list[int] | None, Batch]] = []

    def __len__(self) -> int:
        return len(self.inner)

    def batch(
        self, indices: Sequence[int], generator: object, epochs: Sequence[int] | None = None
    ) -> Batch:
        epochs = epochs if self.epochs else None
        out = self.inner.batch(indices, generator, epochs)  # type: ignore[arg-type]
        self.calls.append((list(indices), None if epochs is None else list(epochs), out))
        return out


def ever_targets(source: Recording, epochs: int) -> float:
    """Share of (block, position) pairs that were a target at least once in ``epochs``."""
    sampler = MixtureSampler([source], batch_size=2, seed=3)  # type: ignore[list-item]
    for _ in range(epochs * N_BLOCKS // 2):
        next(sampler)
    seen = np.zeros((N_BLOCKS, make_blocks().shape[1]), dtype=bool)
    for indices, _, batch in source.calls:
        seen[indices] |= (batch.labels != IGNORE_INDEX).numpy()
    return float(seen.mean())


def test_the_manifest_records_the_draws_and_each_draw_is_its_own_mask(drawn) -> None:
    out, _ = drawn
    cache = open_cache(out)
    assert cache.draws == DRAWS and len(cache) == N_BLOCKS
    blocks = make_blocks()
    for d in range(DRAWS):
        rows = np.arange(N_BLOCKS) + d * N_BLOCKS
        _, labels = block_targets(
            blocks[rows % N_BLOCKS], d * N_BLOCKS, "mlm", cache.manifest.masking
        )
        for i in range(N_BLOCKS):
            got = cache.block(i, d)
            want = (labels[i] != IGNORE_INDEX).nonzero().squeeze(1).numpy()
            assert np.array_equal(got["positions"].astype(np.int64), want)
            assert np.array_equal(got["labels"], blocks[i][want])
    masks = {
        tuple((i, int(p)) for i in range(N_BLOCKS) for p in cache.block(i, d)["positions"])
        for d in range(DRAWS)
    }
    assert len(masks) == DRAWS  # four different masks of the shard
    with pytest.raises(IndexError):
        cache.block(0, DRAWS)


def test_over_epochs_targets_move_like_dynamic_masking_and_match_the_teacher(drawn) -> None:
    """Fails with one draw per block: then the share of tokens ever a target stays at the mask
    rate (~15 %) however many epochs run, where dynamic masking reaches 1 - 0.85^4 ≈ 48 %."""
    out, teacher = drawn
    cache = open_cache(out)
    source = Recording(cache.shard("general", "teacher-a"))
    cached_share = ever_targets(source, DRAWS)
    info = TokenizerInfo(vocab_size=V, pad_id=0, eos_id=2, mask_id=MASK_ID, special_ids=SPECIAL)
    dynamic = Recording(BlockShard("general", make_blocks(), "mlm", info))
    dynamic_share = ever_targets(dynamic, DRAWS)
    assert cached_share > 0.35 and abs(cached_share - dynamic_share) < 0.1
    frozen = Recording(cache.shard("general", "teacher-a"), epochs=False)
    assert ever_targets(frozen, DRAWS) < 0.25  # draw 0 every epoch: the old behaviour
    for indices, epochs, batch in source.calls:  # the student's targets are the teacher's
        assert epochs is not None
        target = batch.labels != IGNORE_INDEX
        for row, (i, e) in enumerate(zip(indices, epochs, strict=True)):
            rows = cache.block(i, e % DRAWS)
            assert np.array_equal(target[row].nonzero().squeeze(1).numpy(), rows["positions"])
            assert np.array_equal(batch.input_ids[row].numpy(), rows["inputs"])
    indices, _, batch = source.calls[-1]
    with torch.no_grad():
        fresh = teacher(input_ids=batch.input_ids).logits[batch.labels != IGNORE_INDEX]
    assert_topk_matches(batch, fresh, int(cache.meta.top_k or 0))  # the teacher on these inputs


def test_causal_caches_refuse_several_draws(tmp_path: Path) -> None:
    from test_cache import build_clm, gpt2

    with pytest.raises(LineageError, match="mask draws are for MLM"):
        build_clm(gpt2(), make_blocks(), tmp_path / "c", mask_draws=2)
    assert not (tmp_path / "c").exists()

"""benchmarks/bench_mlm_plateau.py: the probes of the tiny-MLM diagnosis measure what they say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from lineage.corpora.tokenizer import TokenizerInfo

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def plateau() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_mlm_plateau", BENCH / "bench_mlm_plateau.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mlm_plateau"] = module
    spec.loader.exec_module(module)
    return module


INFO = TokenizerInfo(vocab_size=40, pad_id=1, eos_id=2, mask_id=3, special_ids=(0, 1, 2, 3))


def test_shuffling_keeps_the_targets_and_the_bag_of_words(plateau: ModuleType) -> None:
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(4, 40, (6, 32), generator=gen)
    labels = torch.full_like(inputs, -100)
    labels[:, ::5] = inputs[:, ::5]
    inputs[:, ::5] = INFO.mask_id
    shuffled = plateau.shuffled_context(inputs, labels)
    assert torch.equal(shuffled[labels != -100], inputs[labels != -100])  # targets stay masked
    for row, out in zip(inputs, shuffled, strict=True):
        assert sorted(row.tolist()) == sorted(out.tolist())  # the same bag of tokens
    assert not torch.equal(shuffled, inputs)  # and another order


def test_count_models_see_what_neighbours_tell(plateau: ModuleType) -> None:
    """On text where each token fixes the next, the bigrams are far below the unigram."""
    rng = np.random.default_rng(0)
    starts = rng.integers(4, 40, size=200)
    train = np.stack([(s + np.arange(32)) % 36 + 4 for s in starts])  # x_{t+1} = x_t + 1 (mod)
    valid = np.stack([(s + np.arange(32)) % 36 + 4 for s in rng.integers(4, 40, size=16)])
    ce = plateau.count_models(train, valid, INFO)
    assert ce["unigram"] > 3.0  # ~log 36: every token about as frequent
    assert ce["two-sided bigram"] < ce["left bigram"] < ce["unigram"] - 1.5


@pytest.mark.slow
def test_the_quick_run_and_exact_self_distillation(plateau: ModuleType, tmp_path: Path) -> None:
    """End to end through run_training. A masked LM taught by itself at α = 1 keeps its
    perplexity when its targets are exact, online or from a cache of every logit: the cached
    MLM targets line up with the student's masks."""
    result = plateau.main(["--quick", "--json", str(tmp_path / "plateau.json")])
    assert result["targets"] > 0 and result["init"]["ordered"] > result["trained"]["ordered"]
    curves = result["self_distillation"]
    exact = [curves["online (full distribution)"], curves[f"cache K = V = {300}"]]
    for curve in exact:
        start = curve[0][1]
        assert all(abs(ppl / start - 1) < 0.03 for _, ppl in curve), curve
    assert set(result["gradient_rms_at_init"]) == set(plateau.GROUPS)

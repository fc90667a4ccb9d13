"""Perplexity: fixed masks, batching-independent, matches references and limiting cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from lineage.corpora.tokenizer import TokenizerInfo
from lineage.errors import LineageError
from lineage.models.evaluation import evaluate, fixed_mlm_targets
from lineage.models.modeling import build_config

INFO = TokenizerInfo(vocab_size=300, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))


def tiny(family: str, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = build_config(family, "tiny", 300, 32)
    auto = AutoModelForMaskedLM if family in ("roberta", "bert") else AutoModelForCausalLM
    return auto.from_config(config)


BLOCKS = np.random.default_rng(0).integers(5, 300, size=(10, 32), dtype=np.uint16)


@pytest.mark.parametrize(("family", "objective"), [("roberta", "mlm"), ("gpt2", "clm")])
def test_deterministic_and_independent_of_batching(family: str, objective: str) -> None:
    model = tiny(family).train()
    runs = [
        evaluate(model, BLOCKS, objective=objective, batch_size=b, tokenizer=INFO)
        for b in (3, 3, 10)
    ]
    assert runs[0] == runs[1]
    assert runs[0].n_tokens == runs[2].n_tokens
    assert math.isclose(runs[0].loss, runs[2].loss, rel_tol=1e-5)
    assert math.isfinite(runs[0].ppl) and math.isclose(runs[0].ppl, math.exp(runs[0].loss))
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    other = evaluate(model, BLOCKS, objective=objective, batch_size=3, tokenizer=INFO, mask_seed=9)
    if objective == "mlm":  # another mask seed scores other positions
        assert other.loss != runs[0].loss
    else:  # causal perplexity has nothing random in it
        assert other == runs[0]


def test_causal_matches_hugging_face_loss() -> None:
    model = tiny("llama").eval()
    ids = torch.from_numpy(BLOCKS.astype(np.int64))
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss.item()  # HF shifts internally
    got = evaluate(model, BLOCKS, objective="clm", batch_size=4)
    assert got.n_tokens == 10 * 31
    assert math.isclose(got.loss, want, rel_tol=1e-5)


def test_mlm_scores_only_the_fixed_masked_positions() -> None:
    model = tiny("bert").eval()
    inputs, labels = fixed_mlm_targets(BLOCKS, 0, INFO, 1234)
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
    want = F.cross_entropy(logits.view(-1, 300), labels.view(-1), ignore_index=-100)
    got = evaluate(model, BLOCKS, objective="mlm", batch_size=4, tokenizer=INFO)
    assert got.n_tokens == int((labels != -100).sum()) > 0
    assert math.isclose(got.loss, want.item(), rel_tol=1e-5)
    # Masks depend on the block's index only: a suffix gets the same masks as in the whole.
    tail_inputs, _ = fixed_mlm_targets(BLOCKS[4:], 4, INFO, 1234)
    assert torch.equal(tail_inputs, inputs[4:])


@pytest.mark.parametrize(("family", "objective"), [("roberta", "mlm"), ("gpt2", "clm")])
def test_uniform_prediction_has_vocabulary_size_perplexity(family: str, objective: str) -> None:
    model = tiny(family)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # tied: logits are all equal
        bias = getattr(model.get_output_embeddings(), "bias", None)
        if bias is not None:
            bias.zero_()
    result = evaluate(model, BLOCKS, objective=objective, batch_size=5, tokenizer=INFO)
    assert math.isclose(result.ppl, 300, rel_tol=1e-5)


def test_refusals() -> None:
    model = tiny("gpt2")
    with pytest.raises(LineageError, match="mask"):
        evaluate(model, BLOCKS, objective="mlm", batch_size=2)
    with pytest.raises(LineageError, match="vocabulary mismatch"):
        evaluate(model, BLOCKS + 300, objective="clm", batch_size=2)
    with pytest.raises(LineageError, match="no blocks"):
        evaluate(model, BLOCKS, objective="clm", batch_size=2, max_blocks=0)

"""Held-out perplexity: token perplexity for causal LMs, masked pseudo-perplexity for MLMs.

MLM numbers use a FIXED mask per block (seeded from ``mask_seed`` and the block's index, not
from the batch), so two models, two runs, or two batch sizes score exactly the same targets
and their perplexities compare directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from lineage.corpora.batches import (
    IGNORE_INDEX,
    causal_targets,
    mlm_mask,
)
from lineage.corpora.tokenizer import TokenizerInfo
from lineage.errors import LineageError
from lineage.models.modeling import TargetLogits, check_vocab
from lineage.registry.entities import EvalProtocol


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy (nats) over the target tokens
    ppl: float  # exp(loss)
    n_tokens: int  # target tokens scored
    # Per block scored: summed cross-entropy and target count (paired comparisons of two models
    # on the same targets: lineage.inherit.schedules.paired_gap).
    block_losses: tuple[float, ...] = field(default=(), repr=False)
    block_targets: tuple[int, ...] = field(default=(), repr=False)
    protocol: EvalProtocol | None = None  # the blocks scored (registry evaluations record it)


DEFAULT_MASK_SEED = 1234


def protocol_of(
    blocks: np.ndarray, objective: str = "clm", mask_seed: int = DEFAULT_MASK_SEED
) -> EvalProtocol:
    """The protocol of an evaluation on ``blocks`` [n, T]: n, T and the sha256 of the token ids
    (as int64; MLM: and the mask seed, which fixes the targets). Two perplexities compare only
    under the same protocol."""
    ids = np.ascontiguousarray(blocks, dtype=np.int64)
    h = hashlib.sha256(ids.data)
    if objective == "mlm":
        h.update(f"mlm-mask-seed-{mask_seed}".encode())
    return EvalProtocol(int(ids.shape[0]), int(ids.shape[1]), h.hexdigest())


def fixed_mlm_targets(
    blocks: np.ndarray, start: int, tokenizer: TokenizerInfo, mask_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked inputs and labels for ``blocks`` (rows ``start`` … of the eval set).

    blocks: [b, T] -> (inputs [b, T], labels [b, T]); row i is masked by a generator seeded
    from (mask_seed, start + i) alone, so the mask does not depend on batching.
    """
    assert tokenizer.mask_id is not None
    ids = torch.from_numpy(np.asarray(blocks, dtype=np.int64))
    special = torch.tensor(tokenizer.special_ids, dtype=torch.long)
    inputs, labels = torch.empty_like(ids), torch.empty_like(ids)
    for i in range(ids.shape[0]):
        gen = torch.Generator().manual_seed(mask_seed * 1_000_003 + start + i)
        inputs[i : i + 1], labels[i : i + 1] = mlm_mask(
            ids[i : i + 1],
            gen,
            mask_token_id=tokenizer.mask_id,
            vocab_size=tokenizer.vocab_size,
            special_ids=special,
        )
    return inputs, labels


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    blocks: np.ndarray,
    *,
    objective: str,
    batch_size: int,
    tokenizer: TokenizerInfo | None = None,
    mask_seed: int = DEFAULT_MASK_SEED,
    device: torch.device | str | None = None,
    max_blocks: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Perplexity of a Hugging Face LM on ``blocks`` [n, T] (the first ``max_blocks`` rows).

    ``tokenizer`` (mask id, specials) is required for ``objective="mlm"``. ``device`` defaults
    to the model's. ``model`` may be a :class:`TargetLogits` wrapper — the root module a sharded
    (FSDP) model must be called through. Gradients are off; the model's train/eval mode is
    restored afterwards.
    The loss is the token-weighted mean, computed in float32.
    """
    if objective not in ("mlm", "clm"):
        raise LineageError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    if objective == "mlm" and (tokenizer is None or tokenizer.mask_id is None):
        raise LineageError("MLM evaluation needs the tokenizer's mask token id")
    if batch_size < 1:
        raise LineageError("batch_size must be >= 1")
    blocks = blocks[:max_blocks] if max_blocks is not None else blocks
    if len(blocks) == 0:
        raise LineageError("no blocks to evaluate on")
    # A DDP wrapper: score its module (no gradient sync needed).
    model = cast(nn.Module, model.module if hasattr(model, "module") else model)
    head = model if isinstance(model, TargetLogits) else TargetLogits(cast(PreTrainedModel, model))
    lm = cast(PreTrainedModel, head.lm)
    check_vocab(lm, int(np.max(blocks)) + 1, "the evaluation data")
    device = torch.device(device) if device is not None else _model_device(lm)
    was_training = lm.training
    lm.eval()
    sums: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        for start in range(0, len(blocks), batch_size):
            chunk = blocks[start : start + batch_size]
            if objective == "mlm":
                assert tokenizer is not None
                inputs, labels = fixed_mlm_targets(chunk, start, tokenizer, mask_seed)
            else:
                inputs = torch.from_numpy(np.asarray(chunk, dtype=np.int64))
                labels = causal_targets(inputs)
            inputs, labels = inputs.to(device), labels.to(device)
            with autocast:
                logits = head(inputs, None, labels)  # [N, V]
            target = labels != IGNORE_INDEX  # [b, T]
            loss = F.cross_entropy(logits.float(), labels[target], reduction="none")  # [N]
            rows = target.nonzero()[:, 0]  # [N] block of each target, row-major like the logits
            sums.append(torch.zeros(len(chunk), device=device).index_add_(0, rows, loss).cpu())
            counts.append(target.sum(1).cpu())
    finally:
        lm.train(was_training)
    block_losses = torch.cat(sums).double()
    block_targets = torch.cat(counts)
    count = int(block_targets.sum())
    if count == 0:
        raise LineageError("the evaluation blocks hold no prediction targets")
    mean = float(block_losses.sum()) / count
    return EvalResult(
        loss=mean,
        ppl=math.exp(mean),
        n_tokens=count,
        block_losses=tuple(block_losses.tolist()),
        block_targets=tuple(block_targets.tolist()),
        protocol=protocol_of(blocks, objective, mask_seed),
    )

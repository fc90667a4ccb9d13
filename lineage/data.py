"""Training data: token blocks, objectives' targets, and the batch every training step consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


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
        )

    @property
    def n_targets(self) -> int:
        return int((self.labels != -100).sum())


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


class ShardSource(Protocol):
    """Where the sampler draws a shard's batches from: plain token blocks or a teacher cache."""

    name: str
    teacher: str | None

    def __len__(self) -> int:
        """Number of blocks in the shard."""
        ...

    def batch(self, indices: Sequence[int], generator: torch.Generator) -> Batch:
        """The batch made of these block indices (``generator`` drives dynamic masking)."""
        ...

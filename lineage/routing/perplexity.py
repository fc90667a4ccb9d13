"""Perplexities measured for the router (``Router.from_workspace(ws, measure=True)``): a
candidate's perplexity on a sample of a shard's documents."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineage.corpora.batches import load_blocks, tokenize_to_blocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.models.evaluation import evaluate
from lineage.models.modeling import load_model

if TYPE_CHECKING:
    from lineage.routing.scoring import CandidateInfo


class PerplexityMeter:
    """``measure=True``: a model's perplexity on a sample of a shard's documents.

    Uses ``lineage.corpora.batches.tokenize_to_blocks`` and ``lineage.models.evaluation.evaluate``
    (fixed MLM masks, so models compare on the same targets); models stay loaded between shards.
    Returns None when the sample is shorter than one block. Perplexities compare only between
    models that share a tokenizer and an objective, which plans enforce.
    """

    def __init__(
        self,
        *,
        block_size: int = 128,
        max_blocks: int = 16,
        batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        self.block_size, self.max_blocks = block_size, max_blocks
        self.batch_size, self.device = batch_size, device
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _load(self, model: CandidateInfo) -> tuple[Any, Any]:
        if model.name not in self._loaded:
            path = Path(model.path)
            self._loaded[model.name] = (load_model(path, device=self.device), load_tokenizer(path))
        return self._loaded[model.name]

    def _blocks(self, model: CandidateInfo, docs: Sequence[str]) -> np.ndarray | None:
        """The sample as the model sees it: [n, block] token ids (None: shorter than a block)."""
        lm, tok = self._load(model)
        config = lm.config
        positions = getattr(config, "max_position_embeddings", None) or config.n_positions
        if config.model_type in ("roberta", "xlm-roberta", "camembert"):
            positions -= 2  # RoBERTa's position ids start after the padding index
        with tempfile.TemporaryDirectory() as tmp:
            info = tokenize_to_blocks(
                docs, tok, min(self.block_size, positions), Path(tmp) / "sample.npy"
            )
            if info.blocks == 0:
                return None
            return np.array(load_blocks(info.path)[: self.max_blocks])  # out of the mmap

    def unigram(self, model: CandidateInfo, docs: Sequence[str]) -> float | None:
        """The sample's unigram perplexity under ``model``'s tokenizer: token frequencies of the
        same blocks, add-one smoothed over the vocabulary. A teacher that cannot beat it knows
        less about the shard than counting tokens does."""
        blocks = self._blocks(model, docs)
        if blocks is None:
            return None
        vocab = len(self._load(model)[1])
        counts = np.bincount(blocks.reshape(-1).astype(np.int64), minlength=vocab) + 1.0
        logp = np.log(counts / counts.sum())
        return float(np.exp(-logp[blocks.reshape(-1)].mean()))

    def __call__(self, model: CandidateInfo, docs: Sequence[str]) -> float | None:
        blocks = self._blocks(model, docs)
        if blocks is None:
            return None
        lm, tok = self._load(model)
        result = evaluate(
            lm,
            blocks,
            objective=model.objective,
            batch_size=self.batch_size,
            tokenizer=TokenizerInfo.of(tok),
        )
        return result.ppl

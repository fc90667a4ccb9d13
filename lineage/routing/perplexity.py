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
from lineage.errors import NotFoundError
from lineage.models.evaluation import evaluate, protocol_of
from lineage.models.modeling import load_model
from lineage.registry.modelinfo import read_config

if TYPE_CHECKING:
    from lineage.registry.store import Registry
    from lineage.routing.scoring import CandidateInfo


class PerplexityMeter:
    """``measure=True``: a model's perplexity on a sample of a shard's documents.

    Uses ``lineage.corpora.batches.tokenize_to_blocks`` and ``lineage.models.evaluation.evaluate``
    (fixed MLM masks, so models compare on the same targets); models stay loaded between shards.
    Returns None when the sample is shorter than one block. Perplexities compare only between
    models that share a tokenizer and an objective, which plans enforce. With a ``registry``,
    measurements are cached there as evaluations with their protocol (the sample's blocks, their
    size and digest, ``protocol_of``) under the shard's domain, and a model already measured on
    the same blocks is not measured again.
    """

    def __init__(
        self,
        *,
        block_size: int = 128,
        max_blocks: int = 16,
        batch_size: int = 8,
        device: str | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.block_size, self.max_blocks = block_size, max_blocks
        self.batch_size, self.device = batch_size, device
        self.registry = registry
        self._models: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self.measured = 0  # models run on a sample (not answered from the registry)

    def _tokenizer(self, model: CandidateInfo) -> Any:
        if model.name not in self._tokenizers:
            if not Path(model.path).is_dir():
                raise NotFoundError(f"model {model.name!r}: {model.path} does not exist")
            self._tokenizers[model.name] = load_tokenizer(Path(model.path))
        return self._tokenizers[model.name]

    def _model(self, model: CandidateInfo) -> Any:
        """The weights, loaded on first use only (a cached measurement needs none)."""
        if model.name not in self._models:
            self._models[model.name] = load_model(Path(model.path), device=self.device)
        return self._models[model.name]

    def _blocks(self, model: CandidateInfo, docs: Sequence[str]) -> np.ndarray | None:
        """The sample as the model sees it: [n, block] token ids (None: shorter than a block)."""
        config = read_config(Path(model.path))
        positions = config.get("max_position_embeddings") or config.get("n_positions")
        positions = int(positions or self.block_size)
        if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            positions -= 2  # RoBERTa's position ids start after the padding index
        with tempfile.TemporaryDirectory() as tmp:
            info = tokenize_to_blocks(
                docs, self._tokenizer(model), min(self.block_size, positions),
                Path(tmp) / "sample.npy",
            )  # fmt: skip
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
        vocab = len(self._tokenizer(model))
        counts = np.bincount(blocks.reshape(-1).astype(np.int64), minlength=vocab) + 1.0
        logp = np.log(counts / counts.sum())
        return float(np.exp(-logp[blocks.reshape(-1)].mean()))

    def __call__(
        self, model: CandidateInfo, docs: Sequence[str], domain: str | None = None
    ) -> float | None:
        blocks = self._blocks(model, docs)
        if blocks is None:
            return None
        protocol = protocol_of(blocks, model.objective)
        if self.registry is not None:
            known = [
                e for e in self.registry.evaluations(model=model.name) if e.protocol == protocol
            ]
            if known:
                return known[-1].ppl
        result = evaluate(
            self._model(model),
            blocks,
            objective=model.objective,
            batch_size=self.batch_size,
            tokenizer=TokenizerInfo.of(self._tokenizer(model)),
        )
        self.measured += 1
        if self.registry is not None and domain is not None:
            self.registry.add_evaluation(
                model.name,
                domain,
                loss=result.loss,
                ppl=result.ppl,
                n_tokens=result.n_tokens,
                protocol=result.protocol,
            )
        return result.ppl

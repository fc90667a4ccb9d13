"""Builds the format-1 cache fixtures; run at commit 2abaf3b (the v1 API, ``lineage.cache``)."""

from pathlib import Path

import numpy as np
import torch
from lineage.cache import CacheMeta, build_cache  # type: ignore[import-not-found]
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

V, T = 300, 16
blocks = np.random.default_rng(0).integers(5, V, (6, T)).astype(np.uint16)
out = Path("tests/data")
meta = CacheMeta(teacher_name="v1-teacher", tokenizer_fingerprint="v1-fixture")
torch.manual_seed(0)
gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=T))
build_cache(
    gpt2.eval(), blocks, out / "v1-cache-clm", objective="clm", meta=meta, top_k=10,
    batch_size=4, progress=False,
)  # fmt: skip
torch.manual_seed(0)
config = RobertaConfig(
    vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=T + 2,
)  # fmt: skip
roberta = RobertaForMaskedLM(config)
build_cache(
    roberta.eval(), blocks, out / "v1-cache-mlm", objective="mlm", meta=meta, top_k=10,
    batch_size=4, progress=False, mask_token_id=4, special_ids=(0, 1, 2, 3),
)  # fmt: skip
np.save(out / "v1-cache-blocks.npy", blocks)

"""Builds the format-2 cache fixture of codec 1 ("topk-classes", ties in teacher order); run at
commit c78cec6 (before codec 2 sorted tied entries by index), from the repository root."""

from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lineage.inherit.cache import CacheMeta, open_cache
from lineage.inherit.cache_build import build_cache

V, T = 300, 16
blocks = np.load("tests/data/v1-cache-blocks.npy")  # [6, 16], the v1 fixtures' blocks
out = Path("tests/data/v2-cache-clm")
meta = CacheMeta(teacher_name="v2-teacher", tokenizer_fingerprint="v2-fixture")
torch.manual_seed(0)
gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=T))
with torch.no_grad():  # a peaked teacher: steps of the value grid apart, not all ties
    gpt2.lm_head.weight.mul_(40.0)
build_cache(
    gpt2.eval(), blocks, out, objective="clm", meta=meta, top_k=10, batch_size=4,
    progress=False, format_version=2,
)  # fmt: skip
indices, logits = open_cache(out).shard("fixture").batch(range(6)).teacher_topk()
np.save("tests/data/v2-cache-clm-decoded-indices.npy", indices.numpy().astype(np.uint16))
np.save("tests/data/v2-cache-clm-decoded-logits.npy", logits.numpy())

"""Builds the v1 cache fixtures with lineage at 2abaf3b (before cache format v2)."""
import numpy as np, torch
from pathlib import Path
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM
from lineage.cache import CacheMeta, build_cache
V, T = 300, 16
blocks = np.random.default_rng(0).integers(5, V, (6, T)).astype(np.uint16)
out = Path("tests/data")
torch.manual_seed(0)
gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=T)).eval()
meta = CacheMeta(teacher_name="v1-teacher", tokenizer_fingerprint="v1-fixture")
build_cache(gpt2, blocks, out / "v1-cache-clm", objective="clm", meta=meta, top_k=10, batch_size=4, progress=False)
torch.manual_seed(0)
roberta = RobertaForMaskedLM(RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=T + 2)).eval()
build_cache(roberta, blocks, out / "v1-cache-mlm", objective="mlm", meta=meta, top_k=10, batch_size=4, progress=False, mask_token_id=4, special_ids=(0, 1, 2, 3))
np.save(out / "v1-cache-blocks.npy", blocks)

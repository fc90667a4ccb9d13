"""Teacher top-K logit cache: bytes per token for several K, and build throughput relative to a
plain teacher forward pass over the same blocks (papers/001 §3.1: the cache must cost little
beyond the one teacher pass it saves every later student from).

    .venv/bin/python benchmarks/bench_cache.py [--quick]

Prints sizes (bytes per token of text, and per target) and the throughput ratio
``forward-only time / build time`` (1.0 = the top-K selection and the writes are free).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

from lineage.inherit.cache import CacheMeta
from lineage.inherit.cache_build import build_cache, weights_digest

META = CacheMeta(teacher_name="bench-teacher", tokenizer_fingerprint="bench")
MASK_ID, SPECIAL = 4, (0, 1, 2, 3)


def teacher(objective: str, vocab: int, width: int, layers: int, block: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if objective == "clm":
        cfg = GPT2Config(
            vocab_size=vocab, n_embd=width, n_layer=layers, n_head=4, n_positions=block,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return GPT2LMHeadModel(cfg).eval()
    cfg = RobertaConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * width,
        max_position_embeddings=block + 2,
    )
    return RobertaForMaskedLM(cfg).eval()


def blocks(n: int, block: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(5, vocab, (n, block)).astype(np.uint16)


def build(
    model: torch.nn.Module, data: np.ndarray, out: Path, objective: str, k: int | str, bs: int
):
    """build_cache with the teacher digest given, as the registry would (timed apart below)."""
    meta = replace(META, teacher_digest="0" * 64)
    extra = {"mask_token_id": MASK_ID, "special_ids": SPECIAL} if objective == "mlm" else {}
    return build_cache(
        model, data, out, objective=objective, meta=meta, top_k=k, batch_size=bs, progress=False,
        **extra,
    )  # fmt: skip


def cache_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sizes(root: Path, vocab: int) -> None:
    """Bytes per token of text (and per target) for K = 1, 10, 100 and the full vocabulary."""
    print(f"cache size, tiny teacher (vocab {vocab}, 2 layers, width 64), 32 blocks x 128 tokens")
    print(f"{'objective':>9} {'K':>6} {'bytes/token':>12} {'bytes/target':>13}")
    for objective in ("clm", "mlm"):
        model, data = teacher(objective, vocab, 64, 2, 128), blocks(32, 128, vocab)
        for k in (1, 10, 100, "full"):
            out = root / f"size-{objective}-{k}"
            manifest = build(model, data, out, objective, k, 16)
            total = cache_bytes(out)
            print(
                f"{objective:>9} {k!s:>6} {total / data.size:12.2f} "
                f"{total / manifest.n_targets:13.2f}"
            )
    print("(a full fp16 distribution over a 50,265-token vocabulary would be 100,530 bytes/target)")


def plain_forward(model: torch.nn.Module, data: np.ndarray, bs: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(data), bs):
            model(input_ids=torch.from_numpy(data[s : s + bs].astype(np.int64))).logits.sum()
    return time.perf_counter() - start


class Timed(torch.nn.Module):
    """The teacher with a stopwatch on its forward: how much of a build is the forward itself."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.seconds = inner, inner.config, 0.0

    def forward(self, **kw: torch.Tensor) -> object:
        start = time.perf_counter()
        out = self.inner(**kw)
        self.seconds += time.perf_counter() - start
        return out


def throughput(root: Path, quick: bool) -> None:
    """Build throughput relative to the forward, for a narrow and a BERT-base-wide teacher.

    Two ratios: a separate plain forward pass over the blocks / the build (best of 3 each; the
    2-core machine is shared, so noisy), and the teacher-forward share of one build's own time
    (same run, so steadier). Top-K costs O(V) a target whatever the width, the LM head O(d·V).
    """
    vocab, layers, block, bs = 32000, 4, 128, 8
    n = 16 if quick else 48
    print(f"\nbuild throughput: vocab {vocab}, {layers} layers, {n} blocks x {block} tokens,")
    print(f"batch {bs}, K=10, 1 CPU thread; best of 3 (target ratio >= 0.9)")
    for width in (256, 768):
        for objective in ("clm", "mlm"):
            model = Timed(teacher(objective, vocab, width, layers, block))
            data = blocks(n, block, vocab)
            plain_forward(model, data[:bs], bs)  # warm-up
            start = time.perf_counter()
            weights_digest(model)
            digest_s = time.perf_counter() - start
            fwd, built, share = [], [], []
            for rep in range(3):
                fwd.append(plain_forward(model, data, bs))
                model.seconds, start = 0.0, time.perf_counter()
                build(model, data, root / f"tp-{objective}-{width}-{rep}", objective, 10, bs)
                built.append(time.perf_counter() - start)
                share.append(model.seconds / built[-1])
            print(
                f"width {width:3d} {objective}: forward {data.size / min(fwd):5.0f} tok/s, "
                f"build {data.size / min(built):5.0f} tok/s, ratio {min(fwd) / min(built):.3f}, "
                f"forward share of build {max(share):.3f}; weights_digest {digest_s:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer blocks (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sizes(Path(tmp), vocab=300)
        throughput(Path(tmp), args.quick)


if __name__ == "__main__":
    main()

"""Training throughput of the real loop (``lineage.train.trainer.train``).

Prints, on CPU:
  * tokens/s for the tiny presets, MLM (roberta) and causal (gpt2);
  * the share of wall time evaluation takes at the default eval interval and eval size;
  * the gain of running the output head at target positions only (``TargetLogits``) against
    full [B, T, V] logits, forward + KI loss + backward, as a ratio within this run.
With CUDA: BASE-size throughput (bf16 autocast) and model FLOPs utilisation,
6 · N · tokens/s over the peak (N = all parameters; attention FLOPs are not counted, so MFU
is a slight underestimate).

    python benchmarks/bench_train.py [--threads 1] [--steps 20] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from lineage.corpora.batches import BlockShard, MixtureSampler, mlm_mask
from lineage.corpora.tokenizer import TokenizerInfo
from lineage.inherit.losses import ki_loss
from lineage.models.modeling import TargetLogits, build_config
from lineage.train.tracking import NullTracker
from lineage.train.trainer import TrainConfig, train

VOCAB = 8000  # train_tokenizer's default vocabulary size
INFO = TokenizerInfo(VOCAB, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))


def model_for(family: str, preset: str, block: int) -> PreTrainedModel:
    torch.manual_seed(0)
    config = build_config(family, preset, VOCAB, block)
    auto = AutoModelForMaskedLM if family in ("roberta", "bert") else AutoModelForCausalLM
    return auto.from_config(config)


def blocks(n: int, block: int) -> np.ndarray:
    return np.random.default_rng(0).integers(5, VOCAB, size=(n, block), dtype=np.uint16)


def run_train(family: str, preset: str, *, block: int, batch: int, steps: int, **cfg: Any) -> Any:
    objective = "mlm" if family in ("roberta", "bert") else "clm"
    data = blocks(max(4 * batch, 256), block)
    shard = BlockShard("bench", data, objective, INFO)
    config = TrainConfig(steps=steps, batch_size=batch, log_every=steps, checkpoint_every=0, **cfg)
    with tempfile.TemporaryDirectory() as tmp:
        return train(
            model_for(family, preset, block),
            config=config,
            sampler=MixtureSampler([shard], batch_size=batch, seed=0),
            eval_sets={"bench": data[:64]},
            objective=objective,
            out_dir=Path(tmp) / "out",
            checkpoint_dir=Path(tmp) / "ckpt",
            tracker=NullTracker(),
            progress=False,
        )


def eval_share(family: str, steps: int) -> tuple[float, float, float]:
    """(seconds per step, seconds per evaluation, eval share at the default interval)."""
    defaults = TrainConfig()
    result = run_train(family, "tiny", block=128, batch=16, steps=steps, eval_every=steps)
    n_evals = len(result.history)  # at step 0 and at the end
    per_eval = result.eval_time_s / n_evals
    per_step = result.tokens / result.tokens_per_s / steps
    share = per_eval / (per_eval + defaults.eval_every * per_step)
    return per_step, per_eval, share


def head_gain(block: int = 128, batch: int = 16, repeats: int = 10) -> float:
    """Time(full logits + selection) / time(head at targets), MLM forward+loss+backward."""
    model = model_for("roberta", "tiny", block).train()
    ids = torch.from_numpy(blocks(batch, block).astype(np.int64))
    inputs, labels = mlm_mask(
        ids, torch.Generator().manual_seed(0), mask_token_id=4, vocab_size=VOCAB
    )
    target = labels != -100
    wrapped = TargetLogits(model)

    def fast() -> None:
        ki_loss(wrapped(inputs, None, labels), labels[target], alpha=0.0).total.backward()

    def full() -> None:
        logits = model(input_ids=inputs).logits[target]
        ki_loss(logits, labels[target], alpha=0.0).total.backward()

    times = {}
    for name, fn in (("fast", fast), ("full", full), ("fast", fast), ("full", full)):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        times[name] = time.perf_counter() - start  # the second round counts
    return times["full"] / times["fast"]


def cuda_report(steps: int, peak_tflops: float) -> None:
    for family in ("roberta", "gpt2"):
        result = run_train(
            family, "BASE", block=512, batch=32, steps=steps, eval_every=0, precision="bf16"
        )
        n_params = sum(p.numel() for p in model_for(family, "BASE", 512).parameters())
        mfu = 6 * n_params * result.tokens_per_s / (peak_tflops * 1e12)
        print(
            f"{family:8s} BASE  bf16  {result.tokens_per_s:12,.0f} tokens/s   "
            f"N = {n_params / 1e6:.1f}M   MFU {100 * mfu:.1f} % (peak {peak_tflops:.0f} TFLOP/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), vocabulary {VOCAB}, blocks of 128, batch 16")
    for family in ("roberta", "gpt2"):
        run_train(family, "tiny", block=128, batch=16, steps=2, eval_every=0)  # warm-up
        result = run_train(family, "tiny", block=128, batch=16, steps=args.steps, eval_every=0)
        print(f"{family:8s} tiny  fp32  {result.tokens_per_s:10,.0f} tokens/s")
    defaults = TrainConfig()
    for family in ("roberta", "gpt2"):
        per_step, per_eval, share = eval_share(family, args.steps)
        print(
            f"{family:8s} eval of {defaults.eval_blocks} blocks: {per_eval:.3f} s = "
            f"{per_eval / per_step:.1f} steps; every {defaults.eval_every} steps it takes "
            f"{100 * share:.2f} % of wall time"
        )
    print(f"MLM head at targets only: {head_gain():.2f}x faster than full logits (fwd+bwd)")
    if torch.cuda.is_available():
        cuda_report(args.steps, args.peak_tflops)
    else:
        print("no CUDA device: BASE throughput and MFU not measured")


if __name__ == "__main__":
    main()

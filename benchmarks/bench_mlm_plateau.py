"""Why tiny masked LMs stay on the unigram plateau (issue 16): the diagnosis, measured.

A RoBERTa 4x128 is trained by self-learning on the bundled literature corpus with the MLM recipe
the claims use (mask 40 %, dropout 0), through ``run_training`` as a user would. Measured on the
fixed validation targets (lineage's evaluation masks):

- **where it ends** against count models of the training split on the same targets: the
  unigram, and a two-sided bigram p(x | left, right) ∝ p(x | left)·p(right | x) that only
  looks at the two unmasked neighbours (what positional attention could buy);
- **the word-order probe**: the loss with the context in order, and with the unmasked context
  tokens shuffled within each block (the same targets, the same bag of words). A model that
  uses word order loses when its context is shuffled; a bag-of-words model scores the same;
- **why attention does not start**: per-tensor gradient RMS at initialisation on one training
  batch. Attention scores are bilinear in W_Q·W_K, so at a 0.02 init their gradients are far
  smaller than the value/output path's, and in MLM every bit of context must come through
  attention (the target position holds <mask>).

The same probes run on the model at initialisation (a baseline for "no gain from order").

Then **self-distillation**, the check that KI's targets are right for a masked LM: the trained
model is trained further by pure KI (α = 1) from itself, on the first 5 % of the training
blocks. With exact targets the KL starts at 0 and the perplexity stays where it is; the runs take
the targets from an online teacher (the full distribution), a cache of every logit (K = V:
aligned masks), and top-K caches (K = 100, 10), whose targets are renormalised over K entries.

    .venv/bin/python benchmarks/bench_mlm_plateau.py [--steps 400] [--batch 8] [--vocab 1000]
        [--quick] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging as hf_logging

from lineage.corpora.batches import BlockShard, MixtureSampler
from lineage.corpora.blocks import domain_blocks, valid_blocks
from lineage.corpora.domains import add_domain, bundled_domains_dir
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.lifecycle import create_workspace_model, train_workspace_tokenizer
from lineage.models.evaluation import fixed_mlm_targets
from lineage.models.modeling import TargetLogits, load_model
from lineage.train.job import TrainJob
from lineage.train.trainer import TrainConfig
from lineage.train.training import run_training
from lineage.workspace import Workspace

DOMAIN = "literature"
EVAL_SEED = 1234  # the seed of lineage's fixed evaluation masks (TrainConfig's default)
IGNORE = -100


def shuffled_context(inputs: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``inputs`` with each row's context positions (those without a target) permuted among
    themselves: the targets and the bag of context tokens stay, their order goes."""
    gen = torch.Generator().manual_seed(seed)
    out = inputs.clone()
    for i in range(inputs.shape[0]):
        free = (labels[i] == IGNORE).nonzero().squeeze(1)
        out[i, free] = inputs[i, free[torch.randperm(len(free), generator=gen)]]
    return out


@torch.no_grad()
def order_probe(model: nn.Module, blocks: np.ndarray, info: TokenizerInfo) -> dict[str, float]:
    """Mean masked cross-entropy (nats) on the fixed eval targets, context in order vs shuffled."""
    head = TargetLogits(model).eval()
    total = {"ordered": 0.0, "shuffled": 0.0}
    n = 0
    for start in range(0, len(blocks), 32):
        inputs, labels = fixed_mlm_targets(blocks[start : start + 32], start, info, EVAL_SEED)
        targets = labels[labels != IGNORE]
        for key, x in (("ordered", inputs), ("shuffled", shuffled_context(inputs, labels))):
            logits = head(x, None, labels)
            total[key] += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        n += targets.numel()
    return {key: value / n for key, value in total.items()}


def count_models(
    train: np.ndarray, blocks: np.ndarray, info: TokenizerInfo, smoothing: float = 0.3
) -> dict[str, float]:
    """Cross-entropy (nats) of count models of ``train`` on the fixed eval targets: unigram, left
    bigram, two-sided bigram (a masked neighbour tells nothing: the model falls back)."""
    v = info.vocab_size
    tokens = np.asarray(train, dtype=np.int64)
    unigram = np.bincount(tokens.ravel(), minlength=v) + 0.1
    unigram = unigram / unigram.sum()
    pairs = np.zeros((v, v))
    np.add.at(pairs, (tokens[:, :-1].ravel(), tokens[:, 1:].ravel()), 1)
    following = pairs / np.maximum(pairs.sum(1, keepdims=True), 1)  # p(b | a)
    following = (1 - smoothing) * following + smoothing * unigram
    inputs, labels = (t.numpy() for t in fixed_mlm_targets(blocks, 0, info, EVAL_SEED))
    ce = {"unigram": [], "left bigram": [], "two-sided bigram": []}
    for r, c in zip(*np.nonzero(labels != IGNORE), strict=True):
        target = labels[r, c]
        left = inputs[r, c - 1] if c > 0 and inputs[r, c - 1] != info.mask_id else None
        right = (
            inputs[r, c + 1]
            if c + 1 < inputs.shape[1] and inputs[r, c + 1] != info.mask_id
            else None
        )
        given_left = following[left] if left is not None else unigram
        both = given_left if right is None else given_left * following[:, right]
        ce["unigram"].append(-math.log(unigram[target]))
        ce["left bigram"].append(-math.log(given_left[target]))
        ce["two-sided bigram"].append(-math.log(both[target] / both.sum()))
    return {key: float(np.mean(values)) for key, values in ce.items()}


GROUPS = {  # RoBERTa's weight names per group (layer.N.output is the FFN's down-projection)
    "attention Q, K": re.compile(r"attention\.self\.(query|key)\.weight$"),
    "attention V, O": re.compile(r"attention\.(self\.value|output\.dense)\.weight$"),
    "feed-forward": re.compile(r"layer\.\d+\.(intermediate|output)\.dense\.weight$"),
}


def gradient_rms(model: nn.Module, batch: Any) -> dict[str, float]:
    """RMS of the masked-LM loss gradient per group of weights, on one batch."""
    model.train()
    head = TargetLogits(model)
    logits = head(batch.input_ids, batch.attention_mask, batch.labels)
    loss = nn.functional.cross_entropy(logits, batch.labels[batch.labels != IGNORE])
    model.zero_grad()
    loss.backward()
    out = {}
    for group, pattern in GROUPS.items():
        grads = [
            p.grad.flatten()
            for name, p in model.named_parameters()
            if p.grad is not None and pattern.search(name)
        ]
        out[group] = float(torch.cat(grads).pow(2).mean().sqrt())
    model.zero_grad()
    return out


def first_batch(blocks: np.ndarray, info: TokenizerInfo, batch: int, mask: float) -> Any:
    shard = BlockShard("train", blocks, "mlm", info, mask_probability=mask)
    return next(MixtureSampler([shard], batch_size=batch, seed=0))


def run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    ws = Workspace.init(root)
    try:
        add_domain(ws, DOMAIN, [bundled_domains_dir() / DOMAIN], valid_every=20)
        train_workspace_tokenizer(ws, "shared", [DOMAIN], vocab_size=args.vocab)
        create_workspace_model(
            ws, "mlm-init", family="roberta", shape="small", tokenizer="shared", seed=2,
            max_positions=args.block, dropout=0.0,
        )  # fmt: skip
        init_dir = Path(ws.registry.model("mlm-init").path)
        info = TokenizerInfo.of(load_tokenizer(init_dir))
        train = np.concatenate(
            [b.blocks for b in domain_blocks(ws, DOMAIN, "train", init_dir, args.block)]
        )
        valid = valid_blocks(ws, DOMAIN, init_dir, args.block, args.eval_blocks)
        init = load_model(init_dir)
        grads = gradient_rms(init, first_batch(train, info, args.batch, args.mask))
        at_init = order_probe(init, valid, info)
        started = time.perf_counter()
        config = TrainConfig(
            steps=args.steps, batch_size=args.batch, lr=args.lr, eval_every=0,
            eval_blocks=args.eval_blocks, checkpoint_every=0, log_every=max(args.steps // 10, 1),
        )  # fmt: skip
        job = TrainJob(
            "mlm-init", "mlm", (DOMAIN,), block_size=args.block, config=config,
            mask_probability=args.mask,
        )  # fmt: skip
        outcome = run_training(ws, job, progress=False)
        train_s = time.perf_counter() - started
        trained = order_probe(load_model(Path(ws.registry.model("mlm").path)), valid, info)
        counts = count_models(train, valid, info)
        selfkd = self_distillation(ws, args, info.vocab_size)
        targets = int((fixed_mlm_targets(valid, 0, info, EVAL_SEED)[1] != IGNORE).sum())
    finally:
        ws.close()
    return {
        "setup": vars(args) | {"json": str(args.json) if args.json else None},
        "targets": targets,
        "count_models": counts,
        "init": at_init,
        "trained": trained,
        "final_ppl": outcome.result.final_eval[DOMAIN].ppl,
        "gradient_rms_at_init": grads,
        "train_s": train_s,
        "self_distillation": selfkd,
    }


def self_distillation(ws: Workspace, args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    """The trained model ("mlm") taught by itself at α = 1: run -> [(step, valid PPL)]."""
    steps = max(args.steps // 10, 2)
    config = TrainConfig(
        steps=steps, batch_size=args.batch, lr=args.lr, eval_every=max(steps // 4, 1),
        eval_blocks=args.eval_blocks, checkpoint_every=0, log_every=steps,
    )  # fmt: skip
    pure = {
        "strategy": "ki",
        "teachers": ("mlm",),
        "schedule": {"kind": "constant", "constant": 1.0},
    }
    runs = {
        "online (full distribution)": {"teacher_mode": "online"},
        f"cache K = V = {vocab}": {"top_k": vocab},
        "cache K = 100": {"top_k": 100},
        "cache K = 10": {"top_k": 10},
    }
    out = {}
    for i, (label, fields) in enumerate(runs.items()):
        job = TrainJob(
            "mlm", f"self-{i}", (DOMAIN,), block_size=args.block, config=config,
            mask_probability=args.mask, data_fraction=0.05, **pure, **fields,
        )  # fmt: skip
        history = run_training(ws, job, progress=False).result.history
        out[label] = [(int(h["step"]), float(h[f"ppl/{DOMAIN}"])) for h in history]
    return out


def report(r: dict[str, Any]) -> None:
    c, t = r["count_models"], r["trained"]
    print(f"\n{r['targets']} fixed valid targets; masked cross-entropy in nats (PPL):")
    for name, ce in [
        *((f"count model, {k}", v) for k, v in c.items()),
        ("RoBERTa at init", r["init"]["ordered"]),
        (f"RoBERTa after {r['setup']['steps']} steps", t["ordered"]),
    ]:
        print(f"  {name:<32} {ce:7.3f}  ({math.exp(ce):8.1f})")
    gain = c["unigram"] - t["ordered"]
    prize = c["unigram"] - c["two-sided bigram"]
    print(
        f"  below the unigram: the model {gain:.3f} nats; a two-sided bigram {prize:.3f} nats\n"
        f"word-order probe (shuffled − ordered context): after training "
        f"{t['shuffled'] - t['ordered']:+.4f} nats, at init "
        f"{r['init']['shuffled'] - r['init']['ordered']:+.4f}"
    )
    g = r["gradient_rms_at_init"]
    qk, vo = g["attention Q, K"], g["attention V, O"]
    print(
        "gradient RMS at init: "
        + ", ".join(f"{k} {v:.2e}" for k, v in g.items())
        + f" (V, O / Q, K = {vo / qk:.0f}x)"
    )
    print("self-distillation at α = 1 (valid PPL by step):")
    for label, curve in r["self_distillation"].items():
        print(f"  {label:<28} " + "  ".join(f"{step}: {ppl:.1f}" for step, ppl in curve))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--batch", type=int, default=8, help="blocks per step")
    parser.add_argument("--block", type=int, default=64, help="tokens per block")
    parser.add_argument("--vocab", type=int, default=1000, help="BPE vocabulary size")
    parser.add_argument("--mask", type=float, default=0.4, help="share of masked tokens")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--eval-blocks", type=int, default=64, help="validation blocks scored")
    parser.add_argument("--quick", action="store_true", help="a smoke run (a few steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.vocab, args.eval_blocks = 4, 300, 8
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-mlm-") as tmp:
        result = run(Path(tmp) / "ws", args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

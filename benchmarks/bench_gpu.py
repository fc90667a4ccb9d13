"""GPU throughput of lineage's training loop at BASE size (12 layers x 768, bf16 autocast, SDPA):
tokens/s and model FLOPs utilisation (MFU) for self-learning and for KI from a cached top-10
teacher, the KI/SL step-time ratio (target <= 1.05; MFU target >= 40 %), and 2-rank scaling
when two GPUs exist.

Phases, each timed: lineage's byte-level BPE (32k) trained on the bundled domains -> blocks of
512 -> per family (roberta MLM, gpt2 causal): a 6 x 512 teacher's top-10 cache built by
lineage.inherit.cache_build -> SL steps, then KI steps (same student init, same loop) ->
with 2+ GPUs, SL on 2 ranks (torchrun, NCCL). The steps run through lineage's training loop
(``lineage.train.loop.Loop``: sampler, global target count, KI loss, Accelerate, AdamW); the
clock starts after the warm-up steps and stops on a CUDA synchronise.

MFU = model FLOPs per second / peak: per token 6 x (the backbone's matmul weights) + 12 x layers
x d_model x block (attention scores and values, forward and backward), plus 6 x (the head's
matmul weights) per prediction target (lineage runs the head only there: ~15 % of positions for
MLM). ``--peak-tflops`` defaults to the H100/H200 SXM dense bf16 peak, 989.

    python benchmarks/bench_gpu.py                      # on a GPU; ~2-3 min on one H200
    python benchmarks/bench_gpu.py --compile            # the same with torch.compile
    python benchmarks/bench_gpu.py --smoke              # CPU, tiny sizes: the script end to end

Prints a timing per phase, a table, and one JSON line of results last. Writes only into a
temporary folder (and, when $OUT is set, bench_gpu.json there). Needs no network.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; make sure of it

import numpy as np
import torch
from torch import nn

PHASES: dict[str, float] = {}


@dataclass(frozen=True)
class Sizes:
    vocab: int
    block: int
    batch: int
    student: tuple[int, int, int, int]  # layers, hidden, heads, ffn
    teacher: tuple[int, int, int, int]
    warmup: int
    steps: int
    docs_per_domain: int | None  # None: every document


FULL = Sizes(32_000, 512, 64, (12, 768, 12, 3072), (6, 512, 8, 2048), 10, 30, None)
SMOKE = Sizes(400, 64, 4, (2, 64, 2, 128), (1, 32, 2, 64), 1, 2, 40)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    PHASES[name] = time.perf_counter() - start
    print(f"phase {name}: {PHASES[name]:.1f} s", flush=True)


def bundled_texts(limit: int | None) -> Iterator[str]:
    from lineage.corpora.domains import bundled_domains, bundled_domains_dir
    from lineage.corpora.profiles import iter_documents

    for name in bundled_domains():
        with gzip.open(
            bundled_domains_dir() / name / f"{name}.txt.gz", "rt", encoding="utf-8"
        ) as f:
            for i, doc in enumerate(iter_documents(f)):
                if limit is not None and i >= limit:
                    break
                yield doc


def prepare_data(root: Path, sizes: Sizes) -> tuple[Path, np.ndarray]:
    """lineage's tokenizer on the bundled domains, and their token blocks."""
    from lineage.corpora.batches import load_blocks, tokenize_to_blocks
    from lineage.corpora.tokenizer import load_tokenizer, train_tokenizer

    tok_dir = root / "tokenizer"
    with phase("tokenizer"):
        train_tokenizer(bundled_texts(sizes.docs_per_domain), tok_dir, vocab_size=sizes.vocab)
    with phase("blocks"):
        tokenizer = load_tokenizer(tok_dir)
        path = root / "blocks.npy"
        tokenize_to_blocks(bundled_texts(sizes.docs_per_domain), tokenizer, sizes.block, path)
    return tok_dir, load_blocks(path)


def make_model(family: str, shape: tuple[int, ...], tok_dir: Path, seed: int, block: int) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from lineage.corpora.tokenizer import load_tokenizer
    from lineage.models.modeling import ModelShape, build_config

    config = build_config(family, ModelShape(*shape), load_tokenizer(tok_dir), block)
    auto = AutoModelForMaskedLM if family == "roberta" else AutoModelForCausalLM
    torch.manual_seed(seed)
    return auto.from_config(config)


def teacher_cache(root: Path, family: str, tok_dir: Path, blocks: np.ndarray, sizes: Sizes) -> Any:
    from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
    from lineage.inherit.cache import CacheMeta, open_cache
    from lineage.inherit.cache_build import build_cache

    info = TokenizerInfo.of(load_tokenizer(tok_dir))
    teacher = make_model(family, sizes.teacher, tok_dir, seed=7, block=sizes.block)
    path = root / f"cache-{family}"
    with phase(f"{family} teacher cache ({len(blocks)} blocks, top-10)"):
        build_cache(
            teacher,
            blocks,
            path,
            objective="mlm" if family == "roberta" else "clm",
            meta=CacheMeta(teacher_name="teacher"),
            top_k=10,
            batch_size=sizes.batch,
            mask_token_id=info.mask_id,
            special_ids=info.special_ids,
            vocab_size=info.vocab_size,
            progress=False,
        )
    del teacher
    return open_cache(path)


class Counting:
    """The sampler, counting the prediction targets it hands out."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.targets = inner, 0
        self.rank, self.world_size, self.shards = inner.rank, inner.world_size, inner.shards

    def __iter__(self) -> Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        self.targets += batch.n_targets
        return batch


def model_flops(model: nn.Module, head: str | None, tokens: int, targets: int, block: int) -> float:
    """FLOPs of one forward + backward over ``tokens`` positions, ``targets`` of them through
    the head (see the module docstring)."""

    def matmul_weights(module: nn.Module) -> int:
        return sum(
            m.weight.numel()
            for m in module.modules()
            if not isinstance(m, nn.Embedding)
            and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.ndim == 2
        )

    body = matmul_weights(model.base_model)
    head_weights = matmul_weights(getattr(model, head)) if head else 0
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    attention = 12 * layers * hidden * block
    return tokens * (6 * body + attention) + targets * 6 * head_weights


def measure(
    family: str, mode: str, tok_dir: Path, blocks: np.ndarray, cache: Any, args: Any
) -> dict[str, Any]:
    """Steps of the training loop: SL on ``blocks`` or KI from ``cache``; times and MFU."""
    from lineage.corpora.batches import BlockShard, MixtureSampler
    from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
    from lineage.distributed import process_state
    from lineage.inherit.schedules import InheritanceSchedule
    from lineage.models.modeling import TargetLogits
    from lineage.train.loop import Loop, Window
    from lineage.train.tracking import NullTracker
    from lineage.train.trainer import TrainConfig

    sizes: Sizes = args.sizes
    state = process_state()
    objective = "mlm" if family == "roberta" else "clm"
    info = TokenizerInfo.of(load_tokenizer(tok_dir))
    shard = cache.shard("bench", "teacher") if mode == "ki" else None
    shard = shard or BlockShard("bench", blocks, objective, info)
    sampler = Counting(
        MixtureSampler(
            [shard],
            batch_size=sizes.batch,
            seed=0,
            rank=state.process_index,
            world_size=state.num_processes,
        )
    )
    model = make_model(family, sizes.student, tok_dir, seed=1, block=sizes.block)
    config = TrainConfig(steps=10**6, batch_size=sizes.batch, compile=args.compile, log_every=10**6)
    loop = Loop(
        model,
        config,
        sampler,
        objective=objective,
        eval_sets={},
        schedules={"teacher": InheritanceSchedule(kind="constant", constant=0.5, total_steps=1)}
        if mode == "ki"
        else {},
        auto_samples=None,
        tokenizer=None,
        accelerator=None,
        tracker=NullTracker(),
        online_teachers=None,
    )
    loop.validate()
    loop.prepare()
    window = Window()
    for _ in range(sizes.warmup):
        loop.optimizer_step(window)
    sync = torch.cuda.synchronize if loop.acc.device.type == "cuda" else (lambda: None)
    sync()
    targets_before, start = sampler.targets, time.perf_counter()
    for _ in range(sizes.steps):
        loop.optimizer_step(window)
    sync()
    seconds = (time.perf_counter() - start) / sizes.steps
    tokens = sizes.batch * sizes.block  # per rank and step
    targets = (sampler.targets - targets_before) / sizes.steps
    flops = model_flops(model, TargetLogits(model)._head, tokens, int(targets), sizes.block)
    result = {
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "targets_per_step": targets,
        "model_tflops_per_step": flops / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "precision": loop.acc.mixed_precision,
        "params": sum(p.numel() for p in model.parameters()),
        "peak_memory_gb": (
            torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        ),
    }
    del loop, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def scaling(root: Path, tok_dir: Path, args: Any) -> dict[str, Any]:
    """SL on 2 GPUs (torchrun): tokens/s per rank against one GPU."""
    if args.smoke or torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): needs 2"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", port, __file__, "--rank-worker"]
    cmd += ["--data", str(root), "--peak-tflops", str(args.peak_tflops)]
    cmd += ["--batch", str(args.sizes.batch), "--steps", str(args.sizes.steps)]
    cmd += ["--families", args.families] + (["--compile"] if args.compile else [])
    with phase("2-GPU self-learning"):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    ranks = [json.loads((root / f"rank-{r}.json").read_text()) for r in (0, 1)]
    return {"ranks": ranks}


def rank_worker(args: Any) -> None:
    """One rank of the 2-GPU run: SL with the first family, written to rank-<r>.json."""
    from lineage.corpora.batches import load_blocks
    from lineage.distributed import process_state

    root = Path(args.data)
    family = args.families.split(",")[0]
    result = measure(family, "sl", root / "tokenizer", load_blocks(root / "blocks.npy"), None, args)
    rank = process_state().process_index
    (root / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "family": family, **result}))


def report(results: dict[str, Any], scaled: dict[str, Any], args: Any) -> dict[str, Any]:
    print(f"\n{'family':<8} {'mode':<4} {'step ms':>8} {'tokens/s':>10} {'MFU':>6} {'TFLOP/s':>8}")
    for family, modes in results.items():
        for mode in ("sl", "ki"):
            r = modes[mode]
            tflops = r["model_tflops_per_step"] / r["step_s"]
            print(
                f"{family:<8} {mode:<4} {r['step_s'] * 1000:8.1f} {r['tokens_per_s']:10,.0f} "
                f"{r['mfu']:6.1%} {tflops:8.1f}"
            )
        modes["ki_over_sl"] = modes["ki"]["step_s"] / modes["sl"]["step_s"]
        print(f"{family:<8} KI/SL step time {modes['ki_over_sl']:.3f} (target <= 1.05)")
    if "ranks" in scaled:
        family = scaled["ranks"][0]["family"]
        one = results[family]["sl"]["tokens_per_s"]
        per_rank = min(r["tokens_per_s"] for r in scaled["ranks"])
        scaled["efficiency"] = per_rank / one
        print(f"2 GPUs, {family} SL: {per_rank:,.0f} tokens/s per rank = {per_rank / one:.1%}")
    else:
        print(f"2-GPU scaling: {scaled['skipped']}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "bench": "gpu",
        "device": device,
        "smoke": args.smoke,
        "compile": args.compile,
        "peak_tflops": args.peak_tflops,
        "sizes": args.sizes.__dict__,
        "phases_s": PHASES,
        "results": results,
        "scaling": scaled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps (CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the students")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak, TFLOP/s")
    parser.add_argument("--families", default="roberta,gpt2", help="student families to run")
    parser.add_argument("--batch", type=int, help="blocks per step (default 64; smoke 4)")
    parser.add_argument("--steps", type=int, help="measured steps (default 30; smoke 2)")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    overrides = {k: v for k, v in (("batch", args.batch), ("steps", args.steps)) if v}
    args.sizes = Sizes(**{**sizes.__dict__, **overrides})
    if args.rank_worker:
        rank_worker(args)
        return
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke on a CPU")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        root = Path(tmp)
        tok_dir, blocks = prepare_data(root, args.sizes)
        results: dict[str, Any] = {}
        for family in args.families.split(","):
            cache = teacher_cache(root, family, tok_dir, blocks, args.sizes)
            results[family] = {}
            for mode in ("sl", "ki"):
                with phase(f"{family} {mode} ({args.sizes.warmup} + {args.sizes.steps} steps)"):
                    results[family][mode] = measure(family, mode, tok_dir, blocks, cache, args)
        scaled = scaling(root, tok_dir, args)
    PHASES["total"] = time.perf_counter() - started
    summary = report(results, scaled, args)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

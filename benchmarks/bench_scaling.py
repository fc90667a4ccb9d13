"""Data-parallel scaling of the real training loop on CPU: 1 process, then 2 (torchrun, gloo).

For each world size the loop (``lineage.train.loop.Loop``: sampler, global target count, KI
loss, DDP, AdamW) trains a RoBERTa-style MLM with B blocks per process (the global batch grows
with the processes, as ``lineage train`` does), and reports

  * tokens/s per rank and in total, from the mean step time after a warm-up;
  * CPU seconds per step per rank (process time: leaves out waiting for a core or a peer);
  * the share of step time spent in the gradient all-reduce: the step time minus the same
    steps with DDP's gradient sync switched off (``no_sync``), over the step time — what the
    all-reduce costs beyond what overlaps with the backward pass (noisy on a loaded machine:
    it can come out negative);
  * the all-reduce alone: one flat tensor of every gradient, timed outside the step, and its
    share of the step time.

    python benchmarks/bench_scaling.py [--preset small] [--batch 16] [--block 128] [--steps 12]

Prints a table and one JSON line. Each process uses one thread (OMP_NUM_THREADS=1), so 2
processes use 2 cores; on a machine shared with other jobs the figures move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

VOCAB = 8000
WARMUP = 3


def _loop(args: argparse.Namespace) -> Any:
    from transformers import AutoModelForMaskedLM

    from lineage.corpora.batches import BlockShard, MixtureSampler
    from lineage.corpora.tokenizer import TokenizerInfo
    from lineage.distributed import process_state
    from lineage.models.modeling import build_config
    from lineage.train.loop import Loop
    from lineage.train.tracking import NullTracker
    from lineage.train.trainer import TrainConfig

    class Vocab:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self) -> int:
            return VOCAB

    info = TokenizerInfo(VOCAB, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))
    state = process_state()
    blocks = np.random.default_rng(0).integers(5, VOCAB, (512, args.block), dtype=np.uint16)
    sampler = MixtureSampler(
        [BlockShard("bench", blocks, "mlm", info)],
        batch_size=args.batch,
        seed=0,
        rank=state.process_index,
        world_size=state.num_processes,
    )
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(build_config("roberta", args.preset, Vocab(), 512))
    config = TrainConfig(steps=10**6, batch_size=args.batch, precision="fp32", log_every=10**6)
    loop = Loop(
        model,
        config,
        sampler,
        objective="mlm",
        eval_sets={},
        schedules={},
        auto_samples=None,
        tokenizer=None,
        accelerator=None,
        tracker=NullTracker(),
        online_teachers=None,
    )
    loop.validate()
    loop.prepare()
    return loop


def _step_seconds(loop: Any, steps: int, sync: bool) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each step; CPU time leaves out waiting, for the core or a peer."""
    from lineage.train.loop import Window

    times = []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        if sync:
            loop.optimizer_step(Window())
        else:
            with loop.acc.no_sync(loop.wrapper):
                loop.optimizer_step(Window())
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def _allreduce_seconds(loop: Any, repeats: int = 5) -> float:
    import torch.distributed as dist

    if not dist.is_initialized():
        return 0.0
    flat = torch.zeros(sum(p.numel() for p in loop.model.parameters() if p.requires_grad))
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(args: argparse.Namespace) -> None:
    """One process of the measurement: writes rank-<r>.json into args.out."""
    torch.set_num_threads(1)
    loop = _loop(args)
    _step_seconds(loop, WARMUP, sync=True)
    # Interleave synced and unsynced blocks of steps, so the load drifts alike on both.
    synced, unsynced = [], []
    for _ in range(2):
        synced += _step_seconds(loop, args.steps // 2, sync=True)
        unsynced += _step_seconds(loop, args.steps // 2, sync=False)
    result = {
        "rank": loop.acc.process_index,
        "world_size": loop.acc.num_processes,
        "step_s": statistics.mean(t for t, _ in synced),
        "step_cpu_s": statistics.mean(c for _, c in synced),
        "step_no_sync_s": statistics.mean(t for t, _ in unsynced),
        "allreduce_alone_s": _allreduce_seconds(loop),
        "grad_mb": 4 * sum(p.numel() for p in loop.model.parameters()) / 2**20,
        "tokens_per_step": args.batch * args.block,
    }
    Path(args.out, f"rank-{result['rank']}.json").write_text(json.dumps(result))


def _launch(world: int, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    own = [
        sys.argv[0],
        "--worker",
        "--out",
        str(out),
        "--preset",
        args.preset,
        "--batch",
        str(args.batch),
        "--block",
        str(args.block),
        "--steps",
        str(args.steps),
    ]
    if world == 1:
        cmd = [sys.executable, *own]
    else:
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--nproc_per_node", str(world), "--master_port", str(port), *own]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="model shape preset (roberta)")
    parser.add_argument("--batch", type=int, default=16, help="blocks per process")
    parser.add_argument("--block", type=int, default=128, help="tokens per block")
    parser.add_argument("--steps", type=int, default=12, help="measured steps per mode")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            ranks = _launch(world, args, Path(tmp))
        step = max(r["step_s"] for r in ranks)  # the step ends with the slowest rank
        no_sync = max(r["step_no_sync_s"] for r in ranks)
        per_rank = ranks[0]["tokens_per_step"] / step
        alone = max(r["allreduce_alone_s"] for r in ranks)
        rows.append(
            {
                "world_size": world,
                "step_s": step,
                "step_cpu_s": max(r["step_cpu_s"] for r in ranks),
                "tokens_per_s_per_rank": per_rank,
                "tokens_per_s": per_rank * world,
                "allreduce_share": (step - no_sync) / step if world > 1 else 0.0,
                "allreduce_alone_s": alone,
                "allreduce_alone_share": alone / step,
                "grad_mb": ranks[0]["grad_mb"],
            }
        )
    print(f"roberta {args.preset}, {args.batch} blocks of {args.block} per process, fp32, CPU")
    print("ranks  step s  CPU s/step  tokens/s/rank  tokens/s  all-reduce share  all-reduce alone")
    for r in rows:
        print(
            f"{r['world_size']:>5}  {r['step_s']:6.3f}  {r['step_cpu_s']:10.3f}  "
            f"{r['tokens_per_s_per_rank']:13,.0f}  {r['tokens_per_s']:8,.0f}  "
            f"{r['allreduce_share']:16.1%}  {r['allreduce_alone_s'] * 1000:7.1f} ms "
            f"({r['allreduce_alone_share']:.1%})"
        )
    efficiency = rows[1]["tokens_per_s"] / (2 * rows[0]["tokens_per_s"])
    print(f"scaling efficiency 1 -> 2 ranks: {efficiency:.1%}")
    print(json.dumps({"bench": "scaling", "rows": rows, "efficiency": efficiency}))


if __name__ == "__main__":
    main()

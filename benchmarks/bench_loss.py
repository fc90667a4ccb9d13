"""Time and peak memory of ki_loss (top-K and full teacher) vs F.cross_entropy, forward+backward.

    .venv/bin/python benchmarks/bench_loss.py [--vocab 50257] [--seq 512] [--batch 2]

Peak memory is the extra memory a variant needs over its inputs (student logits, labels,
teacher). On CUDA: ``torch.cuda.max_memory_allocated`` in-process. On CPU torch keeps no
allocator statistics, so each variant runs in a fresh subprocess and reports its peak resident
set size (``ru_maxrss``) minus the resident size measured once its inputs exist. The logits'
gradient (one N × V tensor) is part of every variant's peak. ``naive`` is the KI loss written
with plain autograd (full teacher), to show what the custom Function avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lineage.inherit.losses import ki_loss

VARIANTS = ("ce", "ki_topk", "ki_full", "naive_full")


def _inputs(args: argparse.Namespace, device: torch.device) -> dict[str, Tensor]:
    """Student logits [B, T, V] (requires grad), labels [B, T], teacher full and top-K."""
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.batch, args.seq, args.vocab)
    dtype = getattr(torch, args.dtype)
    z = torch.randn(shape, generator=g).to(device, dtype).requires_grad_(True)
    t = torch.randn(shape, generator=g).to(device, dtype)
    y = torch.randint(args.vocab, shape[:2], generator=g).to(device)
    top_v, top_i = t.topk(args.k, dim=-1)
    return {"z": z, "y": y, "t": t, "top_i": top_i, "top_v": top_v}


def _naive(z: Tensor, y: Tensor, t: Tensor, alpha: float, tau: float) -> Tensor:
    """Eq. 3 through plain autograd: every intermediate is kept for backward."""
    zf, tf = z.float().flatten(0, 1), t.float().flatten(0, 1)
    ce = F.cross_entropy(zf, y.flatten())
    log_p = F.log_softmax(zf / tau, -1)
    log_q = F.log_softmax(tf / tau, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    return (1 - alpha) * ce + alpha * tau * tau * kl


def _step_fn(variant: str, x: dict[str, Tensor], chunk: int | None) -> Callable[[], None]:
    alpha, tau = 0.5, 2.0
    z, y = x["z"], x["y"]

    def step() -> None:
        if variant == "ce":
            loss = F.cross_entropy(z.flatten(0, 1).float(), y.flatten())
        elif variant == "ki_topk":
            loss = ki_loss(
                z,
                y,
                alpha=alpha,
                temperature=tau,
                teacher_topk_indices=x["top_i"],
                teacher_topk_logits=x["top_v"],
                chunk_size=chunk,
            ).total
        elif variant == "ki_full":
            loss = ki_loss(
                z, y, alpha=alpha, temperature=tau, teacher_logits=x["t"], chunk_size=chunk
            ).total
        else:
            loss = _naive(z, y, x["t"], alpha, tau)
        loss.backward()
        z.grad = None

    return step


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak extra memory (MiB) and median seconds of one forward+backward."""
    device = torch.device(args.device)
    x = _inputs(args, device)
    step = _step_fn(variant, x, args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = _rss_mb()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    times = []
    for _ in range(args.reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"peak_mib": peak, "seconds": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:  # one variant in a fresh process, so ru_maxrss is its own peak
        print(json.dumps(_measure(args.child, args)))
        return
    results = {}
    for variant in args.variants.split(","):
        if args.device == "cpu":
            argv = [a for a in sys.argv[1:] if not a.startswith("--variants")]
            out = subprocess.run(
                [sys.executable, __file__, *argv, "--child", variant],
                check=True,
                capture_output=True,
                text=True,
            )
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            results[variant] = _measure(variant, args)
    n, v = args.batch * args.seq, args.vocab
    print(
        f"device={args.device} dtype={args.dtype} N={n} V={v} K={args.k} chunk={args.chunk} "
        f"(one N x V float32 tensor = {n * v * 4 / 2**20:.0f} MiB)"
    )
    ce = results.get("ce")
    print(f"{'variant':<12}{'peak MiB':>10}{'x CE':>7}{'ms':>10}{'x CE':>7}")
    for name, r in results.items():
        mem_ratio = r["peak_mib"] / ce["peak_mib"] if ce else float("nan")
        time_ratio = r["seconds"] / ce["seconds"] if ce else float("nan")
        print(
            f"{name:<12}{r['peak_mib']:>10.0f}{mem_ratio:>7.2f}"
            f"{r['seconds'] * 1e3:>10.1f}{time_ratio:>7.2f}"
        )


if __name__ == "__main__":
    main()

"""KI results from a format 1 and a format 2 cache of the same teacher agree within the seed spread.

One teacher (bench_ki_results' machinery: the literature domain, a shared BPE, a 2 x 64 GPT-2
trained with self-learning), its top-K cache written twice over the same train blocks: format 1
(plain indices and fp16 logits) and format 2 (the coded rows of ``lineage.inherit.codec``). For
each seed s (the student's initial weights 2 + 100·s and the data order s), the same 4 x 128
student is trained from each cache with the same linear schedule (guidance ends at G, papers/001
Table 6), through ``lineage.train.trainer.train``; one self-learning run (seed 0) sets the
target perplexity. Printed per seed and format: final valid PPL and the steps to SL's final PPL
(interpolated between evaluations); then mean ± sd over seeds per format, and the v2 − v1
difference against the seed sd (agreement: |mean difference| within one seed sd).

    .venv/bin/python benchmarks/bench_cache_agreement.py [--seeds 3] [--steps 300] [--smoke]

``--smoke`` runs a few steps of everything (seconds; the test suite runs it): not a result.
Writes ``benchmarks/results/cache_agreement[_smoke].json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_ki_results, beside this one

from bench_ki_results import DOMAIN, RESULTS, Setup, build_family, config

from lineage.corpora.batches import BlockShard, MixtureSampler
from lineage.corpora.blocks import domain_blocks, valid_blocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.inherit.cache import CacheMeta, open_cache
from lineage.inherit.cache_build import build_cache
from lineage.inherit.schedules import InheritanceSchedule
from lineage.lifecycle import create_workspace_model
from lineage.models.modeling import load_model
from lineage.report.compare import steps_to_reach
from lineage.train.tracking import NullTracker
from lineage.train.trainer import train
from lineage.workspace import Workspace

FORMATS = (1, 2)


def setups(smoke: bool, steps: int | None) -> Setup:
    """bench_ki_results' sizes with a shorter run (7 student runs fit ~15 minutes)."""
    if smoke:
        return Setup(
            steps=8, teacher_steps=8, vocab_size=400, eval_every=4, eval_blocks=8, docs=150,
            quick=True,
        )  # fmt: skip
    return Setup(steps=steps or 300, teacher_steps=500, eval_every=20, eval_blocks=64)


def caches(ws: Workspace, teacher_dir: Path, train: np.ndarray, k: int, root: Path) -> dict:
    """Format -> (the opened shard, bytes of its rows, build seconds)."""
    teacher = load_model(teacher_dir)
    meta = CacheMeta(teacher_name="teacher", tokenizer_fingerprint="bench")
    out = {}
    for version in FORMATS:
        path = root / f"cache-v{version}"
        started = time.perf_counter()
        build_cache(
            teacher, train, path, objective="clm", meta=meta, top_k=k, progress=False,
            format_version=version,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in path.glob("part-*/*") if f.is_file())
        out[version] = (open_cache(path).shard(DOMAIN, "teacher"), size, seconds)
    return out


def run_student(
    ws: Workspace, setup: Setup, seed: int, shard: Any, schedules: dict, valid: np.ndarray, tag: str
) -> dict[str, Any]:
    """One training run of seed ``seed``'s student init: final PPL and history."""
    student = load_model(Path(ws.registry.model(f"student-s{seed}").path))
    run_config = dataclasses.replace(config(setup, setup.steps), seed=seed)
    root = ws.root / "runs" / tag
    result = train(
        student, config=run_config, sampler=MixtureSampler([shard], batch_size=setup.batch_size, seed=seed),
        eval_sets={DOMAIN: valid}, objective="clm", out_dir=root / "out",
        checkpoint_dir=root / "ckpt", tracker=NullTracker(), schedules=schedules, progress=False,
    )  # fmt: skip
    return {"final_ppl": result.final_eval[DOMAIN].ppl, "history": result.history}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(runs: dict[str, dict[str, Any]], seeds: int, target: float) -> dict[str, Any]:
    """Per format: per-seed final PPL and steps to ``target``, mean ± sd; v2 − v1 per seed."""
    out: dict[str, Any] = {"target_ppl": target}
    for v in FORMATS:
        rows = [runs[f"v{v}-s{s}"] for s in range(seeds)]
        final = [r["final_ppl"] for r in rows]
        reached = [steps_to_reach(r["history"], DOMAIN, target) for r in rows]
        out[f"v{v}"] = {"final_ppl": final, "steps_to_target": reached}
    for metric in ("final_ppl", "steps_to_target"):
        a, b = out["v1"][metric], out["v2"][metric]
        if None in a or None in b:
            out[f"{metric}_diff"] = None
            continue
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        sd = max(mean_sd(a)[1], mean_sd(b)[1])
        out[f"{metric}_diff"] = {
            "per_seed": diffs, "mean": statistics.fmean(diffs), "seed_sd": sd,
            "within_spread": abs(statistics.fmean(diffs)) <= sd,
        }  # fmt: skip
    return out


def print_summary(s: dict[str, Any], seeds: int) -> None:
    def show(x: float | None, fmt: str) -> str:
        return "never" if x is None else format(x, fmt)

    print(
        f"\n{'seed':>4} {'format':>6} {'final PPL':>10} {'steps to ' + format(s['target_ppl'], '.2f'):>16}"
    )
    for seed in range(seeds):
        for v in FORMATS:
            r = s[f"v{v}"]
            print(
                f"{seed:>4} {v:>6} {r['final_ppl'][seed]:>10.2f} {show(r['steps_to_target'][seed], '.0f'):>16}"
            )
    for metric, fmt in (("final_ppl", ".2f"), ("steps_to_target", ".0f")):
        cells = []
        for v in FORMATS:
            values = s[f"v{v}"][metric]
            if None in values:
                cells.append(f"v{v} not reached by every seed")
                continue
            m, sd = mean_sd(values)
            cells.append(f"v{v} {m:{fmt}} ± {sd:{fmt}}")
        d = s[f"{metric}_diff"]
        verdict = (
            ""
            if d is None
            else (
                f"; v2 − v1 {d['mean']:+{fmt}} (per seed {', '.join(format(x, '+' + fmt) for x in d['per_seed'])})"
                f" vs seed sd {d['seed_sd']:{fmt}}: {'within' if d['within_spread'] else 'OUTSIDE'} the spread"
            )
        )
        print(f"{metric}: {', '.join(cells)}{verdict}")


def run(root: Path, setup: Setup, seeds: int, k: int) -> dict[str, Any]:
    started = time.perf_counter()
    ws = Workspace.init(root / "ws")
    try:
        family = build_family(ws, setup)
        teacher_dir = Path(ws.registry.model("teacher").path)
        tok = load_tokenizer(teacher_dir)
        blocks = np.concatenate(
            [b.blocks for b in domain_blocks(ws, DOMAIN, "train", teacher_dir, setup.block_size)]
        )
        valid = valid_blocks(ws, DOMAIN, teacher_dir, setup.block_size, setup.eval_blocks)
        for seed in range(seeds):
            create_workspace_model(
                ws, f"student-s{seed}", family="gpt2", shape=setup.student, tokenizer="shared",
                seed=2 + 100 * seed, max_positions=setup.block_size, dropout=setup.dropout,
            )  # fmt: skip
        built = caches(ws, teacher_dir, blocks, k, root)
        print(
            f"{DOMAIN}: {len(blocks)} train blocks of {setup.block_size}, vocabulary "
            f"{family['vocab']}; teacher valid PPL {family['teacher_ppl']:.2f}; G = "
            f"{setup.guided_steps} of {setup.steps}; top-{k} cache rows: "
            + ", ".join(
                f"v{v} {b[1] / blocks.size:.2f} B/token ({b[2]:.1f} s)" for v, b in built.items()
            )
        )
        linear = InheritanceSchedule(
            kind="linear", total_steps=setup.steps, guided_steps=setup.guided_steps
        )
        sl = BlockShard(DOMAIN, blocks, "clm", TokenizerInfo.of(tok))
        runs = {"sl-s0": run_student(ws, setup, 0, sl, {}, valid, "sl-s0")}
        for seed in range(seeds):
            for v in FORMATS:
                tag = f"v{v}-s{seed}"
                runs[tag] = run_student(
                    ws, setup, seed, built[v][0], {"teacher": linear}, valid, tag
                )
                print(
                    f"  {tag}: final PPL {runs[tag]['final_ppl']:.2f}  ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    finally:
        ws.close()
    target = runs["sl-s0"]["final_ppl"]
    print(f"  SL (seed 0): final PPL {target:.2f} — the target")
    result = summary(runs, seeds, target)
    result |= {
        "setup": dataclasses.asdict(setup), "seeds": seeds, "top_k": k,
        "cache_bytes_per_token": {f"v{v}": b[1] / blocks.size for v, b in built.items()},
        "teacher_ppl": family["teacher_ppl"], "total_s": time.perf_counter() - started,
    }  # fmt: skip
    print_summary(result, seeds)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="student steps (default 300)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything")
    parser.add_argument("--out", type=Path, default=None, help="the JSON's path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    setup = setups(args.smoke, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), setup, args.seeds, args.top_k)
    out = args.out or RESULTS / f"cache_agreement{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}; total {result['total_s']:.0f} s")


if __name__ == "__main__":
    main()

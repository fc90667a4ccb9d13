"""Knowledge accumulates over generations (papers/001 §3.4, DESIGN.md's claims table): a G3
taught by a G2 that was itself taught by G1 beats a G3 taught by a G2 trained alone, or by G1.

In a fresh workspace (bench_ki_results' domain, tokenizer and sizes): G1 (2 x 64) trained by
self-learning, G2 (3 x 96) trained twice from the same initial weights, by SL and by KI from
G1; then G3 (4 x 128) four times from the same initial weights: SL, and KI (linear α, G from
papers/003's Table 7 for the depth pair, top-10 cache) from G1, from G2-SL and from G2-KI.
Every run has the same steps, data order and seed. Reported per run: final valid PPL; per G3
run the share of steps saved to reach the final PPL of G3 taught by G2-SL (G2 -> G3, the
paper's baseline; None = never reached).

    .venv/bin/python benchmarks/bench_accumulation.py [--quick] [--family gpt2] [--seed 0]

``benchmarks/claims.py --claims accumulation`` runs it over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import bench_ki_results
import torch
from bench_ki_results import DOMAIN, Setup

from lineage.inherit.schedules import guided_steps_for
from lineage.lifecycle import create_workspace_model
from lineage.models.shapes import ModelShape, objective_of_family
from lineage.report.compare import saving, steps_to_reach
from lineage.train.training import TrainJob, TrainOutcome, run_training
from lineage.workspace import Workspace

G2_SHAPE = ModelShape(layers=3, hidden=96, heads=3, ffn=384)  # between tiny G1 and small G3
G3_FROM = {  # G3 run -> its teacher (None: self-learning)
    "g3-sl": None,
    "g3-from-g1": "teacher",
    "g3-from-g2-sl": "g2-sl",
    "g3-from-g2-ki": "g2-ki",
}
BASELINE = "g3-from-g2-sl"
Metrics = dict[str, float | None]


def train(
    ws: Workspace, setup: Setup, init: str, name: str, teacher: str | None, layers: tuple[int, int]
) -> TrainOutcome:
    """One run from ``init``: SL, or KI from ``teacher`` with the linear schedule (layers:
    teacher's and student's depth, for G)."""
    fields: dict = {"strategy": "sl"}
    if teacher is not None:
        objective = objective_of_family(setup.model_family)
        g = guided_steps_for(*layers, setup.steps, objective=objective)
        fields = {
            "strategy": "ki",
            "teachers": (teacher,),
            "schedule": {"kind": "linear", "guided_steps": g},
            "top_k": 10,
        }
    job = TrainJob(
        init, name, (DOMAIN,), block_size=setup.block_size,
        config=bench_ki_results.config(setup, setup.steps),
        mask_probability=setup.mask_probability, **fields,
    )  # fmt: skip
    return run_training(ws, job, progress=False)


def experiment(root: Path, setup: Setup) -> Metrics:
    """G1 (bench_ki_results' teacher), two G2s, four G3s; their final PPL and G3's savings."""
    ws = Workspace.init(root)
    try:
        family = bench_ki_results.build_family(ws, setup)  # "teacher" = G1, "student-init" = G3
        create_workspace_model(
            ws, "g2-init", family=setup.model_family, shape=G2_SHAPE, tokenizer="shared",
            seed=3 + 100 * setup.seed, max_positions=setup.block_size, dropout=setup.dropout,
        )  # fmt: skip
        g1, g2, g3 = 2, G2_SHAPE.layers, 4
        out: Metrics = {"g1/final_ppl": family["teacher_ppl"]}
        for name, teacher in (("g2-sl", None), ("g2-ki", "teacher")):
            result = train(ws, setup, "g2-init", name, teacher, (g1, g2)).result
            out[f"{name}/final_ppl"] = result.final_eval[DOMAIN].ppl
        runs = {}
        for name, teacher in G3_FROM.items():
            depth = g1 if teacher == "teacher" else g2
            runs[name] = train(ws, setup, "student-init", name, teacher, (depth, g3)).result
    finally:
        ws.close()
    target = runs[BASELINE].final_eval[DOMAIN].ppl
    for name, r in runs.items():
        out[f"{name}/final_ppl"] = r.final_eval[DOMAIN].ppl
        if name != BASELINE:
            out[f"{name}/steps_saved"] = saving(r.step, steps_to_reach(r.history, DOMAIN, target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of everything")
    parser.add_argument("--family", default="gpt2", help="gpt2 (causal) or roberta (MLM)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = Setup.quick_setup() if args.quick else Setup()
    setup = dataclasses.replace(setup, model_family=args.family, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for metric, value in experiment(Path(tmp) / "ws", setup).items():
            print(f"{metric:<28} {'never' if value is None else f'{value:.4g}'}")


if __name__ == "__main__":
    main()

"""DESIGN.md's claims table over several seeds, with error bars: one entry point.

    .venv/bin/python benchmarks/claims.py [--quick|--medium] [--family gpt2|roberta|both] [--seeds 3]
        [--claims ki,kfull,growth,accumulation,adaptation] [--out DIR] [--threads 1]
    .venv/bin/python benchmarks/claims.py --render [--out DIR]   # Markdown tables from the JSON

A cell is one (family, claim, seed); every cell runs in a fresh workspace through the real
trainer, by the benchmarks' own code paths:

- ``ki`` (``bench_ki_results``): a teacher 2x64 trained by self-learning, then the same student
  4x128 in six runs: SL; KI linear / heaviside / constant (K = 10); linear with K = 1 and
  K = 100. Covers "KI converges faster than SL" (steps to SL's final PPL), "linear beats
  heaviside and constant" and "top-10 ≈ a larger K". RoBERTa uses the MLM recipe of the
  diagnosis (mask 40 %, dropout 0; README "KI on masked LMs").
- ``kfull``: ki's teacher and student again, SL and KI linear from the teacher's whole
  distribution (an online teacher: a cache of every logit would take gigabytes): K = V.
- ``growth`` (``bench_growth``): a 2x64 source grown to 4x128 by DirectCopy (at the source's
  scale, and at the HF init), FPI, AKI; the loss right after growth, and the steps each grown
  model (and AKI + two-stage, AKI + KI, scratch + KI) needs to reach scratch's final PPL.
- ``accumulation`` (``bench_accumulation``, ki's sizes): G1 2x64 -> G2 3x96 (SL; KI from G1) ->
  G3 4x128 (SL; KI from G1, from G2-SL, from G2-KI); "G1 -> G2 -> G3 better than G2 -> G3 and
  G1 -> G3": the steps each G3 needs to reach the final PPL of G3 taught by G2-SL.
- ``adaptation`` (``bench_adaptation``, RoBERTa only: its family is fixed there): a literature
  base adapted to cs by SL, KI from the cs expert, KI + replay, KI + replay + self-KI, at full
  and 10 % data; the target PPL and the forgetting on literature.

A seed changes every initial weight and the data order (TrainConfig.seed). Results go to
``<out>/claims.json`` (``claims_quick.json`` with --quick, ``claims_medium.json`` with --medium),
written after every cell; a rerun skips the cells the JSON already holds, so a long run can be
stopped and resumed, and runs of other cells may share the JSON (one per core). Then one
PNG per (family, claim) with mean ± sd bars and the per-seed values, and the Markdown tables
(``render_markdown``), which README.md and benchmarks/README.md copy.

--quick settings are a smoke test of the machinery (minutes), not results; --medium is the
smallest setting where KI has room to pass SL (a teacher trained twice the student's steps),
with the same sizes for growth (200 steps per grown model) and bench_adaptation's ``medium``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this one

import bench_accumulation
import bench_adaptation
import bench_growth
import bench_ki_results

from lineage.report.compare import saving
from lineage.report.plots import error_bars

CLAIMS = ("ki", "kfull", "growth", "accumulation", "adaptation")
FAMILIES = ("gpt2", "roberta")
FORMAT = 1
Metrics = dict[str, float | None]

# ---------------------------------------------------------------- one cell per claim


def ki_setup(setting: str) -> bench_ki_results.Setup:
    """bench_ki_results' sizes per setting. ``medium``: batches of 8, a teacher trained twice
    the student's steps (so it stays ahead through the guided phase), vocabulary 1000, 32 valid
    blocks: about a third of the full setting's compute."""
    if setting == "quick":
        return dataclasses.replace(
            bench_ki_results.Setup.quick_setup(), docs=400, vocab_size=500, valid_every=10
        )
    if setting == "medium":
        return bench_ki_results.Setup(
            steps=200, teacher_steps=400, batch_size=8, vocab_size=1000, eval_every=20,
            eval_blocks=32,
        )  # fmt: skip
    return bench_ki_results.Setup()


def family_setup(setting: str, family: str, seed: int) -> bench_ki_results.Setup:
    """``ki_setup`` for this family and seed (RoBERTa: the MLM recipe, mask 40 %, dropout 0)."""
    recipe = {"mask_probability": 0.4, "dropout": 0.0} if family == "roberta" else {}
    return dataclasses.replace(ki_setup(setting), model_family=family, seed=seed, **recipe)


def ki_cell(root: Path, family: str, seed: int, setting: str) -> Metrics:
    """bench_ki_results' six runs; per run its final PPL and the steps saved to SL's final."""
    return _ki_runs(root, family_setup(setting, family, seed))


def kfull_cell(root: Path, family: str, seed: int, setting: str) -> Metrics:
    """SL and KI linear from the teacher's full distribution (an online teacher), the same
    teacher, student, seed and data order as ``ki``'s: its K = 1, 10, 100 against K = V. SL is
    run again rather than read from the ki cell, so a cell stands alone (and the two SL runs
    can be compared: training is deterministic on one CPU thread)."""
    setup = dataclasses.replace(
        family_setup(setting, family, seed), top_k_large=0, only=("sl", "ki-linear-kfull")
    )
    return _ki_runs(root, setup)


def _ki_runs(root: Path, setup: bench_ki_results.Setup) -> Metrics:
    ws = bench_ki_results.Workspace.init(root)
    try:
        fam = bench_ki_results.build_family(ws, setup)
        bench_ki_results.build_teacher_caches(ws, setup)
        outcomes = bench_ki_results.train_students(ws, setup)
    finally:
        ws.close()
    out: Metrics = {"teacher/final_ppl": fam["teacher_ppl"]}
    for row in bench_ki_results.summarise(outcomes, fam["teacher_ppl"]):
        out[f"{row['run']}/final_ppl"] = row["final_ppl"]
        if row["run"] != "sl":
            out[f"{row['run']}/steps_saved"] = row["saving"]
    return out


GROWTH_ARGV = {
    "quick": [
        "--source-steps", "10", "--steps", "6", "--evals", "2", "--eval-blocks", "8",
        "--vocab", "500", "--block", "32", "--batch", "4", "--docs", "150",
        "--valid-every", "10",
    ],
    "medium": [  # ki's medium sizes: every grown model trained 200 steps at batches of 8
        "--source-steps", "400", "--steps", "200", "--batch", "8", "--evals", "10",
        "--eval-blocks", "32", "--vocab", "1000",
    ],
    "full": [],
}  # fmt: skip


def growth_cell(root: Path, family: str, seed: int, setting: str) -> Metrics:
    """bench_growth: loss right after growth per method, final PPL and steps saved per run."""
    argv = [*GROWTH_ARGV[setting], "--family", family, "--seed", str(seed)]
    args = bench_growth.parse_args(argv)
    after, curves = bench_growth.experiment(root, args)
    out: Metrics = {f"{m}/loss_after_growth": loss for m, loss in after.items()}
    target = curves[0].ppl[-1] if curves else math.nan  # scratch's final (none: growth only)
    for c in curves:
        out[f"{c.name}/final_ppl"] = c.ppl[-1]
        if c.name != "scratch":
            out[f"{c.name}/steps_saved"] = saving(args.steps, c.reach(target))
    return out


def accumulation_cell(root: Path, family: str, seed: int, setting: str) -> Metrics:
    """bench_accumulation at ki's sizes: G1 -> G2 (SL, KI) -> G3 (SL, KI from G1, G2-SL, G2-KI)."""
    return bench_accumulation.experiment(root, family_setup(setting, family, seed))


def adaptation_cell(root: Path, family: str, seed: int, setting: str) -> Metrics:
    """bench_adaptation's cs runs: target PPL and literature forgetting per variant and data."""
    if family != "roberta":
        raise ValueError("the adaptation claim runs on roberta only (bench_adaptation's family)")
    ws, setup = bench_adaptation.build_family(root, setting, bio=False, seed=seed)
    out: Metrics = {}
    try:
        for frac in (1.0, 0.1):
            for label, kw in bench_adaptation.VARIANTS.items():
                row = bench_adaptation.run_one(ws, setup, label, "cs", data_fraction=frac, **kw)
                key = f"{label} @{frac:.0%}"
                out[f"{key}/target_ppl"] = row["target_ppl"]
                out[f"{key}/forgetting"] = row["forgetting"]
                if kw.get("strategy") == "ki":  # 0: the router found no teacher better than SL
                    out[f"{key}/teachers"] = float(len(row["teachers"]))
    finally:
        ws.close()
    return out


CELLS: dict[str, Callable[[Path, str, int, str], Metrics]] = {
    "ki": ki_cell,
    "kfull": kfull_cell,
    "growth": growth_cell,
    "accumulation": accumulation_cell,
    "adaptation": adaptation_cell,
}


# ---------------------------------------------------------------- the JSON, resumable


def cell_key(family: str, claim: str, seed: int) -> str:
    return f"{family}/{claim}/{seed}"


def setting_of(data: dict[str, Any]) -> str:
    """The JSON's setting; files written before ``medium`` existed say ``"quick": bool``."""
    return str(data.get("setting") or ("quick" if data.get("quick") else "full"))


def load(path: Path, setting: str) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "setting": setting, "cells": {}}
    data = json.loads(path.read_text())
    if setting_of(data) != setting:
        raise SystemExit(f"{path} holds {setting_of(data)} cells, not {setting}")
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a killed run leaves the previous JSON or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Held while a run reads, then extends the JSON, so that runs sharing it (one per core,
    different families or claims) never drop each other's cells."""
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add_cell(path: Path, setting: str, key: str, cell: dict[str, Any]) -> dict[str, Any]:
    """Add one cell to the JSON as it is on disk now; returns the whole JSON."""
    with locked(path):
        data = load(path, setting)
        data["cells"][key] = cell
        save(path, data)
    return data


def wanted(families: list[str], claims: list[str], seeds: int) -> list[tuple[str, str, int]]:
    return [
        (f, c, s)
        for f in families
        for c in claims
        if not (c == "adaptation" and f != "roberta")
        for s in range(seeds)
    ]


def run_cells(path: Path, cells: list[tuple[str, str, int]], setting: str) -> dict[str, Any]:
    """Run every cell the JSON at ``path`` does not hold yet (read again before each cell, so
    cells another process has added meanwhile are skipped); returns the whole JSON."""
    for family, claim, seed in cells:
        key = cell_key(family, claim, seed)
        if key in load(path, setting)["cells"]:
            print(f"{key}: done before, skipped")
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="claims-") as tmp:
            metrics = CELLS[claim](Path(tmp) / "ws", family, seed, setting)
        seconds = time.perf_counter() - started
        add_cell(path, setting, key, {"metrics": metrics, "seconds": seconds})
        print(f"{key}: {seconds:.0f} s")
    return load(path, setting)


# ---------------------------------------------------------------- summaries


def summary(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(family, claim) -> metric -> {mean, sd, n, values (per seed, None = never reached)}."""
    groups: dict[tuple[str, str], dict[str, dict[int, float | None]]] = {}
    for key, cell in data["cells"].items():
        family, claim, seed = key.split("/")
        for metric, value in cell["metrics"].items():
            groups.setdefault((family, claim), {}).setdefault(metric, {})[int(seed)] = value
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for group, metrics in sorted(groups.items()):
        out[group] = {}
        for metric, by_seed in metrics.items():
            values = [by_seed[s] for s in sorted(by_seed)]
            seen = [float(v) for v in values if v is not None]
            out[group][metric] = {
                "mean": statistics.fmean(seen) if seen else None,
                "sd": statistics.stdev(seen) if len(seen) > 1 else None,
                "n": len(seen),
                "values": values,
            }
    return out


def _fmt(x: float | None, percent: bool) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.0f} %" if percent else f"{x:.3g}" if abs(x) >= 1000 else f"{x:.2f}"


def render_markdown(data: dict[str, Any]) -> str:
    """One Markdown table per (family, claim): metric, mean ± sd over the seeds that reached
    it, and every seed's value ("never": the run never reached the target)."""
    parts = []
    for (family, claim), metrics in summary(data).items():
        seeds = max(len(m["values"]) for m in metrics.values())
        seconds = [
            c["seconds"] for k, c in data["cells"].items() if k.startswith(f"{family}/{claim}/")
        ]
        parts.append(
            f"**{family}, {claim}** ({seeds} seed(s), {statistics.fmean(seconds):.0f} s per "
            f"seed{'' if setting_of(data) == 'full' else f', {setting_of(data)} settings'})\n"
        )
        parts.append("| metric | mean ± sd | per seed |\n|---|---|---|")
        for metric, m in metrics.items():
            pct = metric.endswith("steps_saved")
            sd = "" if m["sd"] is None else f" ± {_fmt(m['sd'], pct)}"
            per_seed = ", ".join(
                "never" if v is None and pct else _fmt(v, pct) for v in m["values"]
            )
            parts.append(f"| {metric} | {_fmt(m['mean'], pct)}{sd} | {per_seed} |")
        parts.append("")
    return "\n".join(parts)


def plot(data: dict[str, Any], out: Path, suffix: str) -> list[Path]:
    """One PNG per (family, claim), one panel per kind of metric (``<run>/<kind>``): mean ± sd
    bars per run, each seed a dot."""
    paths = []
    for (family, claim), metrics in summary(data).items():
        kinds: dict[str, dict[str, dict[str, Any]]] = {}
        for metric, m in metrics.items():
            kinds.setdefault(metric.rsplit("/", 1)[1], {})[metric.rsplit("/", 1)[0]] = m
        paths.append(
            error_bars(
                kinds,
                out / f"claims_{family}_{claim}{suffix}.png",
                title=f"{family}: {claim} (mean ± sd over seeds, dots: seeds)",
            )
        )
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke settings (minutes)")
    size.add_argument(
        "--medium",
        action="store_true",
        help="between quick and full: ~3.6 h of cells for 3 seeds of every claim, both families",
    )
    parser.add_argument("--family", default="both", choices=[*FAMILIES, "both"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--claims", default=",".join(CLAIMS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--render", action="store_true", help="print the tables, run nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    claims = [c for c in args.claims.split(",") if c]
    if unknown := set(claims) - set(CLAIMS):
        parser.error(f"unknown claims {sorted(unknown)}; choose from {', '.join(CLAIMS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    torch.set_num_threads(args.threads)
    setting = "quick" if args.quick else "medium" if args.medium else "full"
    suffix = "" if setting == "full" else f"_{setting}"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"claims{suffix}.json"
    families = list(FAMILIES) if args.family == "both" else [args.family]
    if args.render:
        data = load(path, setting)
    else:
        data = run_cells(path, wanted(families, claims, args.seeds), setting)
        plot(data, args.out, suffix)
    print(render_markdown(data))
    return data


if __name__ == "__main__":
    main()

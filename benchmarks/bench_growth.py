"""Growth (bert2BERT, papers/004) against training from scratch, on the bundled literature corpus.

Run: ``.venv/bin/python benchmarks/bench_growth.py [--threads 1] [--steps 300] [--out DIR]``.

A temporary workspace gets the ``literature`` domain and a small shared BPE tokenizer. A
source model (``--family``, default GPT-2; 2 layers x 64) trains for ``--source-steps`` steps
and is registered. Then a larger target (4 x 128) trains for ``--steps`` steps, the same data
order and optimizer for every run, from:

- scratch (random init), DirectCopy (new units at the source's scale, the paper's baseline),
  DirectCopy with the HF init in the new units, FPI, AKI (each grown with ``lineage grow``'s
  ``grow_workspace_model``: registered, grow edge, source-vs-grown loss);
- AKI + two-stage training (Alg. 2: sub-models of ``--l-b``, 2·l_b, … layers for
  ``--stage-one`` of the steps);
- AKI + KI, and scratch + KI, with the source as an online teacher (linear α, papers/001
  Table 6 duration).

Printed: the loss right after growth (FPI keeps the source's loss: papers/004 Table 1; with
depth stacking FPI is only approximately function-preserving), and per run the validation
perplexity at the end and the steps to reach the from-scratch model's final perplexity, with
the share of steps, of estimated compute (FLOPs: sub-model steps are cheaper, a KI teacher's
forward costs) and of training time saved (paper: bert2BERT 45 %, KI alone 27 % in
papers/001). Curves go to ``<out>/bench_growth.png``. Times are ratios within this run.

GPT-2 is the default because a causal LM learns from every token: in the few hundred CPU
steps this runs, an MLM (``--family roberta``, 15 % targets) barely leaves unigram level.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lineage.corpora.batches import BlockShard, MixtureSampler
from lineage.corpora.blocks import shard_blocks, valid_blocks
from lineage.corpora.domains import add_domain, bundled_domains_dir
from lineage.corpora.profiles import iter_documents
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.inherit.schedules import InheritanceSchedule, guided_steps_for
from lineage.lifecycle import (
    create_workspace_model,
    grow_workspace_model,
    train_workspace_tokenizer,
)
from lineage.models.modeling import ModelShape, load_model
from lineage.registry.entities import Model
from lineage.report.plots import curves
from lineage.train.tracking import NullTracker
from lineage.train.trainer import TrainConfig, train
from lineage.workspace import Workspace

DOMAIN = "literature"


@dataclass
class Curve:
    name: str
    steps: list[int]  # evaluation steps
    ppl: list[float]  # validation perplexity at those steps
    step_seconds: list[float]  # training seconds of each optimizer step (evaluation excluded)
    step_flops: list[float]  # estimated training FLOPs of each optimizer step

    def reach(self, target: float) -> int | None:
        """First evaluated step whose perplexity is at or below ``target``."""
        return next((s for s, p in zip(self.steps, self.ppl, strict=True) if p <= target), None)

    def seconds_to(self, step: int) -> float:
        return float(sum(self.step_seconds[:step]))

    def flops_to(self, step: int) -> float:
        return float(sum(self.step_flops[:step]))


def flops_per_token(model: Model, depth: int | None = None, *, backward: bool = True) -> float:
    """6·N (forward + backward) or 2·N (forward) with N = the weights a token passes through:
    ``depth`` blocks (4·d² attention + 2·d·d_ffn) and the output projection (vocab·d).
    Attention scores are left out (blocks are short)."""
    block = 4 * model.d_model**2 + 2 * model.d_model * model.d_ffn
    n = (depth or model.layers) * block + model.vocab_size * model.d_model
    return (6 if backward else 2) * n


def step_flops(
    ws: Workspace, student: Model, teacher: str | None, tracker: NullTracker, tokens: int
) -> list[float]:
    """Per optimizer step: the student's (sub-)model forward + backward, plus the online
    teacher's forward while its inheritance rate is above 0 (the loop skips it after)."""
    depths = dict(tracker.history("submodel_depth"))  # step -> depth (two-stage only)
    alphas = dict(tracker.history(f"alpha/{teacher}")) if teacher else {}
    steps = sorted(s for s, _ in tracker.history("loss"))
    per_token = []
    for step in steps:
        depth = int(depths[step]) if step in depths else None
        f = flops_per_token(student, depth)
        if alphas.get(step, 0.0) > 0:
            f += flops_per_token(ws.registry.model(teacher or ""), backward=False)
        per_token.append(f)
    return [tokens * f for f in per_token]


def shape(text: str, ffn_ratio: int = 4) -> ModelShape:
    layers, hidden = (int(x) for x in text.lower().split("x"))
    return ModelShape(layers=layers, hidden=hidden, heads=hidden // 32, ffn=ffn_ratio * hidden)


def setup(root: Path, args: argparse.Namespace) -> Workspace:
    ws = Workspace.init(root)
    source = bundled_domains_dir() / DOMAIN
    if args.docs:  # the corpus's first documents only (smoke runs)
        with gzip.open(source / f"{DOMAIN}.txt.gz", "rt", encoding="utf-8") as fh:
            docs = list(itertools.islice(iter_documents(fh), args.docs))
        source = root.parent / f"{DOMAIN}.txt"
        source.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    add_domain(ws, DOMAIN, [source], valid_every=args.valid_every)
    train_workspace_tokenizer(ws, "shared", [DOMAIN], vocab_size=args.vocab)
    return ws


def run(
    ws: Workspace,
    model_name: str,
    label: str,
    args: argparse.Namespace,
    *,
    steps: int,
    teacher: str | None = None,
    **config: object,
) -> tuple[Curve, Path]:
    """Train a registered model on the domain's train shards; its validation-PPL curve."""
    model = ws.registry.model(model_name)
    folder = Path(model.path)
    tokenizer = load_tokenizer(folder)
    info = TokenizerInfo.of(tokenizer)
    shards = [
        BlockShard(b.key, b.blocks, model.objective, info, teacher=teacher)
        for b in (
            shard_blocks(ws, s, folder, args.block)
            for s in ws.registry.shards(DOMAIN, split="train")
        )
    ]
    schedules, online = {}, {}
    if teacher is not None:
        guided = guided_steps_for(
            ws.registry.model(teacher).layers, model.layers, steps, objective=model.objective
        )
        schedules[teacher] = InheritanceSchedule(
            kind="linear", total_steps=steps, guided_steps=guided
        )
        online[teacher] = load_model(Path(ws.registry.model(teacher).path))
    cfg = TrainConfig(
        steps=steps,
        batch_size=args.batch,
        lr=args.lr,
        eval_every=max(1, steps // args.evals),
        eval_blocks=args.eval_blocks,
        checkpoint_every=0,
        log_every=1,
        seed=args.seed,
        **config,  # type: ignore[arg-type]
    )
    tracker = NullTracker()
    out = ws.root / "runs" / label
    result = train(
        load_model(folder),
        config=cfg,
        sampler=MixtureSampler(shards, batch_size=args.batch, seed=args.seed),
        eval_sets={DOMAIN: valid_blocks(ws, DOMAIN, folder, args.block, args.eval_blocks)},
        objective=model.objective,
        out_dir=out / "model",
        checkpoint_dir=out / "ckpt",
        tracker=tracker,
        schedules=schedules,
        online_teachers=online,
        progress=False,
        tokenizer=tokenizer,
    )
    tokens = args.batch * args.block
    seconds = [tokens / v for _, v in sorted(tracker.history("tokens_per_s"))]
    rows = result.history
    curve = Curve(
        label,
        [int(r["step"]) for r in rows],
        [r[f"ppl/{DOMAIN}"] for r in rows],
        seconds,
        step_flops(ws, model, teacher, tracker, tokens),
    )
    return curve, out / "model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--family", default="gpt2", help="gpt2, roberta, bert or llama")
    parser.add_argument("--source", default="2x64", help="source LAYERSxHIDDEN (head size 32)")
    parser.add_argument("--target", default="4x128", help="target LAYERSxHIDDEN")
    parser.add_argument("--source-steps", type=int, default=400, help="source training steps")
    parser.add_argument("--steps", type=int, default=300, help="target training steps per run")
    parser.add_argument("--batch", type=int, default=16, help="blocks per step")
    parser.add_argument("--block", type=int, default=64, help="tokens per block")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--vocab", type=int, default=2000, help="BPE vocabulary size")
    parser.add_argument("--docs", type=int, default=0, help="first N documents (0: all)")
    parser.add_argument("--valid-every", type=int, default=40, help="1 document in N is valid")
    parser.add_argument("--evals", type=int, default=15, help="evaluations per run")
    parser.add_argument("--eval-blocks", type=int, default=128, help="validation blocks scored")
    parser.add_argument("--l-b", type=int, default=2, help="two-stage: layers per sub-model step")
    parser.add_argument("--stage-one", type=float, default=0.15, help="two-stage: E_b / E")
    parser.add_argument("--seed", type=int, default=0, help="growth maps and scratch init")
    parser.add_argument(
        "--growth-only", action="store_true", help="stop after the loss right after growth"
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the PNG")
    return parser.parse_args(argv)


def new_model(
    ws: Workspace, name: str, shape: ModelShape, args: argparse.Namespace, seed: int
) -> None:
    create_workspace_model(
        ws,
        name,
        family=args.family,
        shape=shape,
        tokenizer="shared",
        max_positions=args.block,
        seed=seed,
    )


def grow_all(
    ws: Workspace, src: ModelShape, tgt: ModelShape, args: argparse.Namespace
) -> dict[str, float]:
    """Grow the source by each method (registered under the method's name); print the losses.
    Returns the validation loss right after growth per method, and the source's ("source")."""
    after: dict[str, tuple[float, float]] = {}
    for method in ("copy", "copy-hf-init", "fpi", "aki"):
        _, report = grow_workspace_model(
            ws,
            "source",
            method,
            layers=tgt.layers,
            hidden=tgt.hidden,
            ffn=tgt.ffn,
            method=method,  # type: ignore[arg-type]
            seed=args.seed,
            block_size=args.block,
            max_blocks=args.eval_blocks,
        )
        after[method] = (report.source_eval.loss, report.grown_eval.loss)
    loss = {m: f"{g:.3f}" for m, (_, g) in after.items()}
    print(
        f"loss right after growth to {args.target} (source {after['fpi'][0]:.3f}): "
        f"FPI {loss['fpi']}, AKI {loss['aki']}, DirectCopy {loss['copy']} "
        f"(new units at the HF init: {loss['copy-hf-init']})"
    )
    if tgt.hidden % src.hidden == 0:  # width alone, an integer multiple: FPI is exact
        _, width = grow_workspace_model(
            ws,
            "source",
            "fpi-width",
            layers=src.layers,
            hidden=tgt.hidden,
            ffn=tgt.ffn,
            block_size=args.block,
            max_blocks=args.eval_blocks,
        )
        print(
            f"  FPI width only ({src.layers}x{tgt.hidden}): {width.grown_eval.loss:.4f} "
            f"vs source {width.source_eval.loss:.4f} (function-preserving)"
        )
    return {"source": after["fpi"][0], **{m: g for m, (_, g) in after.items()}}


RUNS = ("scratch", "scratch + KI", "DirectCopy", "DirectCopy, HF init", "FPI", "AKI",
        "AKI + two-stage", "AKI + KI")  # fmt: skip


def experiment(root: Path, args: argparse.Namespace) -> tuple[dict[str, float], list[Curve]]:
    """The whole benchmark in a new workspace at ``root``: the losses right after growth
    (``grow_all``) and one validation curve per run of ``RUNS`` (none with --growth-only)."""
    started = time.perf_counter()
    src, tgt = shape(args.source), shape(args.target)
    ws = setup(root, args)
    try:
        device = "cuda" if torch.cuda.is_available() else f"CPU, {args.threads} thread(s)"
        print(
            f"{args.family} on {DOMAIN}: {device}; blocks of {args.block}, "
            f"batch {args.batch}, lr {args.lr}"
        )
        new_model(ws, "source-init", src, args, args.seed)
        source_curve, source_dir = run(ws, "source-init", "source", args, steps=args.source_steps)
        ws.register_model(source_dir, name="source", domains=[DOMAIN])
        print(
            f"source {args.source}: {args.source_steps} steps -> valid ppl "
            f"{source_curve.ppl[-1]:.2f} ({time.perf_counter() - started:.0f} s so far)"
        )
        new_model(ws, "scratch", tgt, args, args.seed + 1)
        after = grow_all(ws, src, tgt, args)
        if args.growth_only:
            return after, []
        two_stage = {"two_stage_layers": args.l_b, "two_stage_fraction": args.stage_one}
        runs: list[tuple[str, str, dict[str, object]]] = [
            ("scratch", "scratch", {}),
            ("scratch + KI", "scratch", {"teacher": "source"}),
            ("DirectCopy", "copy", {}),
            ("DirectCopy, HF init", "copy-hf-init", {}),
            ("FPI", "fpi", {}),
            ("AKI", "aki", {}),
            ("AKI + two-stage", "aki", two_stage),
            ("AKI + KI", "aki", {"teacher": "source"}),
        ]
        assert tuple(label for label, _, _ in runs) == RUNS
        results = []
        for label, name, kw in runs:
            curve, _ = run(ws, name, label, args, steps=args.steps, **kw)  # type: ignore[arg-type]
            results.append(curve)
            print(
                f"  {label}: valid ppl {curve.ppl[0]:.2f} -> {curve.ppl[-1]:.2f}, "
                f"{1000 * np.mean(curve.step_seconds):.0f} ms/step "
                f"({time.perf_counter() - started:.0f} s so far)"
            )
        return after, results
    finally:
        ws.close()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        _, results = experiment(Path(tmp) / "ws", args)
    if not results:
        return
    report(results, args)
    path = curves(
        {c.name: (c.steps, c.ppl) for c in results},
        args.out / "bench_growth.png",
        title=f"{args.target} {args.family} on {DOMAIN}: growth from {args.source}",
        xlabel="step",
        ylabel="validation perplexity",
        logy=True,
    )
    print(f"curves: {path}; total {time.perf_counter() - started:.0f} s")


def report(results: list[Curve], args: argparse.Namespace) -> None:
    scratch = results[0]
    target = scratch.ppl[-1]
    total_flops, total_s = scratch.flops_to(args.steps), scratch.seconds_to(args.steps)
    print(
        f"\nto reach scratch's final valid ppl {target:.2f} (evaluated every "
        f"{max(1, args.steps // args.evals)} steps):"
    )
    print(
        f"{'run':18s} {'ppl@0':>8s} {'final':>8s} {'steps':>6s} {'steps saved':>12s} "
        f"{'compute saved':>14s} {'time saved':>11s}"
    )
    for c in results:
        step = c.reach(target)
        cells = ["-"] * 4
        if step is not None:
            cells = [
                str(step),
                f"{100 * (1 - step / args.steps):.0f} %",
                f"{100 * (1 - c.flops_to(step) / total_flops):.0f} %",
                f"{100 * (1 - c.seconds_to(step) / total_s):.0f} %",
            ]
        print(
            f"{c.name:18s} {c.ppl[0]:8.2f} {c.ppl[-1]:8.2f} {cells[0]:>6s} {cells[1]:>12s} "
            f"{cells[2]:>14s} {cells[3]:>11s}"
        )
    print("paper: bert2BERT (AKI + two-stage) saves 45 % of BERT-base compute, KI alone 27 %")
    print(
        "compute: 6·N·tokens per step (N: blocks run + output projection) + the teacher's "
        "2·N·tokens while α > 0; time: training seconds in this run (noisy on a shared CPU)"
    )


if __name__ == "__main__":
    main()

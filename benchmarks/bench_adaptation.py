"""Continual domain adaptation in miniature (papers/001 §3.3 Table 2, App. A.5 Table 4).

A small roberta base is trained on literature; smaller domain experts on cs and bio. The base
is then adapted to cs (and bio) with self-learning (SL), KI from the router-chosen expert, KI +
replay of literature ("reviewing"), and KI + replay + self-KI (the replayed batches taught by
the base's own pre-adaptation predictions), at full and scarce (10 %) target data; and by a
LoRA adapter against full fine-tuning. Printed per run: the target perplexity, the source
(literature) perplexity before → after, the forgetting Δ = after − before and its ratio, and
the wall time. The paper's claims: KI reaches a lower target PPL than SL, the more so with less
data (Table 2), but forgets more of the source (Table 4). The aim beyond the paper: KI's
target gain with no more forgetting than SL. Every number is measured in this run.

    python benchmarks/bench_adaptation.py [--quick|--medium] [--no-bio] [--threads 1] [--keep DIR]

--quick is a smoke run (a few steps); --medium (vocabulary 1000, batches of 8, fewer steps) is
the size ``claims.py --medium`` runs over seeds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lineage.continual.adaptation import AdaptJob, adapt
from lineage.corpora.domains import add_domain, bundled_domains_dir
from lineage.corpora.profiles import iter_documents
from lineage.lifecycle import create_workspace_model, train_workspace_tokenizer
from lineage.models.modeling import ModelShape
from lineage.train.lora import LoraSpec, adapter_bytes
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, run_training
from lineage.workspace import Workspace

SIZES = {  # (base shape, expert shape, base steps, expert steps, adapt steps, vocab, block)
    "full": (ModelShape(4, 128, 4, 512), ModelShape(2, 96, 2, 384), 400, 1200, 150, 2000, 64),
    "medium": (ModelShape(4, 128, 4, 512), ModelShape(2, 96, 2, 384), 300, 600, 100, 1000, 64),
    "quick": (ModelShape(2, 48, 2, 96), ModelShape(2, 32, 2, 64), 20, 20, 8, 500, 32),
}
CORPUS_SHARE = 0.6  # of each bundled corpus's documents (keeps caches and tokenising short)
# Miniature teachers are far from peaked (PPL in the hundreds): top-10 keeps too little of their
# mass (printed below), and a renormalised top-10 would teach a distorted distribution.
TOP_K = 100


def config(steps: int, lr: float, batch: int, size: str, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        seed=seed,
        steps=steps,
        batch_size=batch,
        lr=lr,
        eval_every=0 if size == "quick" else max(steps // 3, 1),
        eval_blocks={"quick": 8, "medium": 32}.get(size, 64),
        eval_batch_size=32,
        checkpoint_every=0,
        log_every=max(steps // 10, 1),
    )


def _slice(folder: Path, name: str, size: str) -> Path:
    """The first share of a bundled corpus's documents, as a text file."""
    with gzip.open(bundled_domains_dir() / name / f"{name}.txt.gz", "rt", encoding="utf-8") as fh:
        docs = list(iter_documents(fh))
    keep = docs[: int(len(docs) * (0.05 if size == "quick" else CORPUS_SHARE))]
    out = folder / f"{name}.txt"
    out.write_text("\n\n".join(keep) + "\n", encoding="utf-8")
    return out


def build_family(
    root: Path, size: str, bio: bool, seed: int = 0
) -> tuple[Workspace, dict[str, Any]]:
    """Domains, a shared tokenizer, the literature base and the cs/bio experts at ``size`` (a
    key of SIZES); ``seed``: their initial weights and data order."""
    base_shape, expert_shape, base_steps, expert_steps, _, vocab, block = SIZES[size]
    ws = Workspace.init(root)
    domains = ["literature", "cs", *(["bio"] if bio else [])]
    for name in domains:
        add_domain(ws, name, [_slice(root.parent, name, size)], valid_every=20)
    train_workspace_tokenizer(ws, "shared", domains, vocab_size=vocab)
    batch = 16 if size == "full" else 8
    timings = {}
    for name, shape, steps, domain in [
        ("base", base_shape, base_steps, "literature"),
        *[(f"expert-{d}", expert_shape, expert_steps, d) for d in domains[1:]],
    ]:
        create_workspace_model(
            ws, f"{name}-init", family="roberta", shape=shape, tokenizer="shared",
            max_positions=block, seed=seed,
        )  # fmt: skip
        start = time.perf_counter()
        job = TrainJob(
            f"{name}-init", name, (domain,), block_size=block,
            config=config(steps, 2e-3, batch, size, seed),
        )  # fmt: skip
        run_training(ws, job, progress=False)
        timings[name] = time.perf_counter() - start
    return ws, {"block": block, "batch": batch, "timings": timings, "seed": seed, "size": size}


def topk_mass(
    ws: Workspace, model: str, domain: str, block: int, ks: tuple[int, ...]
) -> list[float]:
    """Mean share of the model's probability mass in its top-k at masked valid targets."""
    from lineage.corpora.blocks import valid_blocks
    from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
    from lineage.models.evaluation import fixed_mlm_targets
    from lineage.models.modeling import load_model

    path = Path(ws.registry.model(model).path)
    lm, info = load_model(path).eval(), TokenizerInfo.of(load_tokenizer(path))
    blocks = valid_blocks(ws, domain, path, block, 32)
    inputs, labels = fixed_mlm_targets(blocks, 0, info, 1234)
    with torch.no_grad():
        probs = lm(input_ids=inputs).logits[labels != -100].softmax(-1)  # [N, V]
    top = probs.sort(-1, descending=True).values
    return [float(top[:, :k].sum(-1).mean()) for k in ks]


VARIANTS: dict[str, dict[str, Any]] = {
    "SL": {"strategy": "sl"},
    "KI": {"strategy": "ki"},
    "KI+replay": {"strategy": "ki", "replay": 0.25},
    "KI+replay+selfKI": {"strategy": "ki", "replay": 0.25, "self_ki": True},
}


def run_one(
    ws: Workspace, setup: dict[str, Any], label: str, target: str, **kw: Any
) -> dict[str, Any]:
    """One adaptation of the base to ``target`` at the family's size; ``kw``: AdaptJob
    overrides (and ``lr``)."""
    size = setup["size"]
    steps = SIZES[size][4]
    lr = kw.pop("lr", 1e-3)
    name = f"{target}-{len(ws.registry.models())}"
    ki = kw.get("strategy") == "ki"
    experts = tuple(m.name for m in ws.registry.models() if m.name.startswith("expert-"))
    job = AdaptJob(
        model="base",
        domains=(target,),
        output=name,
        teachers=experts if ki else (),
        top_k=TOP_K,
        # The expert stays better than the student on its domain for the whole run, so its
        # guidance lasts the run (α = 1 − t/T), not Table 6's pre-training duration.
        schedule_params={"guided_steps": steps} if ki else {},
        block_size=setup["block"],
        config=config(steps, lr, setup["batch"], size, setup.get("seed", 0)),
        **kw,
    )
    start = time.perf_counter()
    (run,) = adapt(ws, job, progress=False)
    wall = time.perf_counter() - start
    hist = run.outcome.result.history
    final = run.outcome.result.final_eval
    lit = run.forgetting["literature"]
    return {
        "label": label,
        "fraction": job.data_fraction,
        "target": target,
        "target_before": hist[0][f"ppl/{target}"],
        "target_ppl": final[target].ppl,
        "source_before": lit.before,
        "source_after": lit.after,
        "forgetting": lit.delta,
        "ratio": lit.ratio,
        "teachers": sorted(run.outcome.teachers),
        "wall_s": wall,
        "model": run.model.name if run.model else None,
        "edge": next(
            (e.params for e in ws.registry.edges(name) if e.kind in ("adapt", "adapter")), {}
        ),
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"{'run':<20} {'target ppl':>16} {'literature ppl':>18} {'forgetting':>11} "
        f"{'ratio':>6} {'time':>6}  teachers"
    )
    for r in rows:
        label = f"{r['label']} {r['fraction']:.0%}"
        print(
            f"{label:<20} {r['target_before']:7.2f} → {r['target_ppl']:6.2f} "
            f"{r['source_before']:8.2f} → {r['source_after']:7.2f} {r['forgetting']:+11.2f} "
            f"{r['ratio']:6.2f} {r['wall_s']:5.0f}s  {', '.join(r['teachers']) or '-'}"
        )


def verdict(rows: list[dict[str, Any]]) -> None:
    """KI's target gain over SL, and whether replay + self-KI keeps forgetting at SL's level."""
    by = {(r["label"], r["fraction"]): r for r in rows}
    for frac in (1.0, 0.1):
        sl, ki = by.get(("SL", frac)), by.get(("KI", frac))
        best = by.get(("KI+replay+selfKI", frac))
        if not (sl and ki and best):
            continue
        print(
            f"  {frac:4.0%} data: KI target gain over SL {sl['target_ppl'] - ki['target_ppl']:+.2f} "
            f"ppl (forgetting {ki['forgetting']:+.2f} vs SL {sl['forgetting']:+.2f}); "
            f"KI+replay+self-KI gain {sl['target_ppl'] - best['target_ppl']:+.2f} ppl with "
            f"forgetting {best['forgetting']:+.2f} "
            f"({'no more' if best['forgetting'] <= sl['forgetting'] else 'more'} than SL)"
        )


def lora_vs_full(
    ws: Workspace, setup: dict[str, Any], full: dict[str, Any]
) -> list[dict[str, Any]]:
    """A LoRA adapter (KI, cs, full data) beside the full fine-tuning run ``full`` of the same."""
    base = ws.registry.model("base")
    lora = LoraSpec(rank=8, alpha=16)
    rows = [dict(full, label="full FT (KI)")]
    rows.append(run_one(ws, setup, "LoRA r=8 (KI)", "cs", strategy="ki", lora=lora, lr=5e-3))
    for r in rows:
        model = ws.registry.model(r["model"])
        if "lora" in r["edge"]:
            r["trainable"] = r["edge"]["lora"]["trainable_params"]
            r["bytes"] = adapter_bytes(Path(model.path))
        else:
            r["trainable"] = base.n_params
            r["bytes"] = sum(f.stat().st_size for f in Path(model.path).glob("*.safetensors"))
    print_table("LoRA adapter vs full fine-tuning (cs, full data)", rows)
    for r in rows:
        print(
            f"  {r['label']:<14} trainable {r['trainable']:>9,} "
            f"({r['trainable'] / base.n_params:6.1%} of the base), weights on disk "
            f"{r['bytes'] / 1e6:7.3f} MB"
        )
    return rows[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="a few steps of everything")
    sizes.add_argument("--medium", action="store_true", help="claims.py --medium's size")
    parser.add_argument("--no-bio", action="store_true", help="skip the bio adaptations")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = None if args.keep else Path(tempfile.mkdtemp(prefix="bench-adapt-"))
    root = args.keep or tmp / "ws"  # type: ignore[operator]
    started = time.perf_counter()
    try:
        size = "quick" if args.quick else "medium" if args.medium else "full"
        ws, setup = build_family(root, size, not args.no_bio)
        print("family built:", {k: f"{v:.0f}s" for k, v in setup["timings"].items()})
        for e in ws.registry.evaluations():
            if not e.model.endswith("-init"):
                print(f"  {e.model:<11} {e.domain:<11} ppl {e.ppl:8.2f}")
        mass = topk_mass(ws, "expert-cs", "cs", setup["block"], (10, TOP_K))
        print(
            f"  expert-cs probability mass in its top-10: {mass[0]:.0%}, top-{TOP_K}: {mass[1]:.0%}"
        )
        rows = [
            run_one(ws, setup, label, "cs", data_fraction=frac, **kw)
            for frac in (1.0, 0.1)
            for label, kw in VARIANTS.items()
        ]
        print_table("base (literature) adapted to cs", rows)
        verdict(rows)
        if not args.no_bio:
            bio = [
                run_one(ws, setup, label, "bio", **VARIANTS[label])
                for label in ("SL", "KI", "KI+replay+selfKI")
            ]
            print_table("base (literature) adapted to bio (full data)", bio)
            rows += bio
        full = next(r for r in rows if (r["label"], r["fraction"]) == ("KI", 1.0))
        rows += lora_vs_full(ws, setup, full)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str))
        print(f"\ntotal {time.perf_counter() - started:.0f}s")
        ws.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

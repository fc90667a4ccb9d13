"""The teacher router, measured: nearest-domain accuracy, regret against the oracle, speed.

Run: ``.venv/bin/python benchmarks/bench_router.py [--slices 50] [--steps 300]``.

1. Accuracy: each bundled domain is profiled without 2 documents in 7; ``--slices`` held-out
   slices of 20 documents per domain (and of 5 and 1 documents) are labelled with their nearest
   domain, for both proximity measures (coverage, the paper's overlap).
2. Speed: routing 1,000 shards of 20 documents (profiling included, and pre-profiled), and the
   vectorised ``DomainIndex`` against the plain per-domain reference (``profiles.overlap``-style
   set arithmetic and ``profiles.shared_terms``), as a ratio within this run.
3. Regret: one tiny GPT-2 teacher per domain (shared BPE tokenizer, equal sizes) is trained
   for ``--steps`` steps on its domain, and a larger generalist (4 layers x 128) on the
   mixture of all three; every teacher's perplexity is measured on every held-out
   20-document slice; the oracle picks the lowest. Regret = mean ln(ppl_chosen / ppl_oracle)
   for the router without measurement, with ``measure`` (perplexities on a sample of the shard),
   and for a uniformly random teacher.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lineage.corpora.batches import load_blocks, tokenize_to_blocks
from lineage.corpora.domains import bundled_domains_dir, read_documents
from lineage.corpora.profiles import VocabularyProfile, profile_texts, shared_terms
from lineage.corpora.tokenizer import load_tokenizer, train_tokenizer
from lineage.models.modeling import create_model, load_model
from lineage.routing.perplexity import PerplexityMeter
from lineage.routing.quality import evaluate_router
from lineage.routing.router import CandidateInfo, Router

NAMES = ("literature", "cs", "bio")
SLICE = 20


def split(name: str) -> tuple[list[str], list[str]]:
    docs = list(read_documents(bundled_domains_dir() / name / f"{name}.txt.gz"))
    train = [d for i, d in enumerate(docs) if i % 7 not in (0, 3)]
    held = [d for i, d in enumerate(docs) if i % 7 in (0, 3)]
    return train, held


def slices(held: list[str], n: int, size: int) -> list[list[str]]:
    return [held[i * size : (i + 1) * size] for i in range(n) if (i + 1) * size <= len(held)]


def accuracy(profiles: dict[str, VocabularyProfile], held: dict[str, list[str]], n: int) -> None:
    print(f"1. nearest-domain accuracy on held-out slices ({n} per domain)")
    for measure in ("coverage", "overlap"):
        router = Router(profiles, [], measure=measure)  # type: ignore[arg-type]
        for size in (SLICE, 5, 1):
            shards = [(d, s) for d in NAMES for s in slices(held[d], n, size)]
            report, _ = evaluate_router(router, shards)
            print(
                f"   {measure:8s} {size:2d} docs/slice: accuracy {report.accuracy:.3f} "
                f"({len(shards)} slices)"
            )


def train_teacher(
    tok_dir: Path, out: Path, docs: list[str], steps: int, seed: int, shape: str = "tiny"
) -> CandidateInfo:
    """A GPT-2 (``shape`` preset) trained on ``docs`` with plain AdamW (no lineage trainer)."""
    create_model("gpt2", shape, tok_dir, out, seed=seed, max_positions=64)
    info = tokenize_to_blocks(docs, load_tokenizer(tok_dir), 64, out.parent / f"{out.name}.npy")
    blocks = torch.from_numpy(np.array(load_blocks(info.path), dtype=np.int64))
    model = load_model(out)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    layers = model.config.n_layer
    return CandidateInfo(out.name, n_params, path=str(out), objective="clm", layers=layers)


def train_teachers(
    root: Path, profiles: dict[str, VocabularyProfile], train: dict, steps: int
) -> list[CandidateInfo]:
    """One tiny expert per domain and a larger generalist on the mixture (same step count)."""
    start = time.perf_counter()
    mixed = [d for name in NAMES for d in train[name][:1500]]
    train_tokenizer(mixed, root / "tok", vocab_size=2000)
    teachers = []
    for seed, name in enumerate(NAMES):
        t = train_teacher(root / "tok", root / f"t_{name}", train[name], steps, seed)
        teachers.append(CandidateInfo(t.name, t.n_params, {name: profiles[name]}, **_io(t)))
    mix = [d for name in NAMES for d in train[name]]
    random.Random(0).shuffle(mix)
    g = train_teacher(root / "tok", root / "t_general", mix, steps, 9, shape="small")
    teachers.append(CandidateInfo(g.name, g.n_params, dict(profiles), **_io(g)))
    sizes = ", ".join(f"{t.name} {t.n_params:,}" for t in teachers)
    print(f"   trained {sizes} params, {steps} steps each, in {time.perf_counter() - start:.0f} s")
    return teachers


def measure_all(
    meter: PerplexityMeter, teachers: list[CandidateInfo], docs: list[str]
) -> dict[str, float]:
    """Every teacher's perplexity on ``docs``."""
    out = {}
    for t in teachers:
        ppl = meter(t, docs)
        if ppl is None:
            raise SystemExit(f"a slice is too short to measure {t.name} on")
        out[t.name] = ppl
    return out


def regret(
    profiles: dict[str, VocabularyProfile], train: dict, held: dict, n: int, steps: int
) -> None:
    print(f"3. regret against the oracle ({n} slices of {SLICE} documents per domain)")
    with tempfile.TemporaryDirectory() as tmp:
        teachers = train_teachers(Path(tmp), profiles, train, steps)
        meter = PerplexityMeter(block_size=64, max_blocks=8)
        start = time.perf_counter()
        # Slices n.. of each domain stand in for its valid split: "registry" perplexities.
        registry = {}
        for d in NAMES:
            rows = [measure_all(meter, teachers, s) for s in slices(held[d], n + 5, SLICE)]
            registry[d] = {
                t: math.exp(np.mean([math.log(r[t]) for r in rows[n:]])) for t in rows[0]
            }
            print(
                f"   ppl on {d:10s}: " + " ".join(f"{t} {p:6.1f}" for t, p in registry[d].items())
            )
        shards = [(d, s) for d in NAMES for s in slices(held[d], n, SLICE)]
        table = [measure_all(meter, teachers, docs) for _, docs in shards]
        print(f"   measured perplexities in {time.perf_counter() - start:.1f} s")
        evaluated = [replace(t, ppl={d: registry[d][t.name] for d in NAMES}) for t in teachers]
        for label, router in (
            ("proximity+size", Router(profiles, teachers)),
            ("+ registry ppl", Router(profiles, evaluated)),
            ("+ measured ppl", Router(profiles, teachers, measurer=meter, sample_docs=SLICE)),
        ):
            report, out = evaluate_router(router, shards, perplexities=table)
            picks = " ".join(f"{t} {sum(a.teacher == t for a in out)}" for t in table[0])
            print(
                f"   {label:15s} regret {report.regret:.3f} nats, oracle agreement "
                f"{report.oracle_agreement:.2f} (random teacher: regret {report.random_regret:.3f})"
                f"; picks {picks}"
            )


def _io(t: CandidateInfo) -> dict:
    return {"path": t.path, "objective": t.objective, "layers": t.layers}


def speed(profiles: dict[str, VocabularyProfile], held: dict[str, list[str]]) -> None:
    print("2. routing speed, 1,000 shards of 20 documents, 3 domains, 3 teachers")
    rng = random.Random(0)
    pool = [held[d] for d in NAMES]
    shards = []
    for i in range(1000):
        docs = pool[i % 3]
        start = rng.randrange(len(docs) - SLICE)
        shards.append(docs[start : start + SLICE])
    teachers = [CandidateInfo(f"t_{d}", 10**6, {d: profiles[d]}) for d in NAMES]
    router = Router(profiles, teachers)
    t0 = time.perf_counter()
    shard_profiles = [router.profile(s) for s in shards]
    t_profile = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = router.route(shard_profiles)
    t_route = time.perf_counter() - t0
    assert len(out) == 1000
    print(f"   profiling {t_profile:.2f} s, routing pre-profiled {t_route:.2f} s "
          f"({1000 / t_route:,.0f} shards/s); total {t_profile + t_route:.2f} s")  # fmt: skip
    tops = {d: set(p.top_words) for d, p in profiles.items()}
    sample = shard_profiles[:200]
    t0 = time.perf_counter()
    for sp in sample:
        counts = dict(zip(sp.top_words, sp.top_counts, strict=True))
        total = sum(counts.values())
        for d in NAMES:
            sum(c for w, c in counts.items() if w in tops[d]) / total
            shared_terms(sp, profiles[d], 8)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    for sp in sample:
        router.index.proximities(sp)
        router.index.shared_terms(sp, 8)
    t_vec = time.perf_counter() - t0
    print(f"   proximity + shared terms, 200 shards: reference {t_ref:.3f} s, "
          f"DomainIndex {t_vec:.3f} s (reference / index = {t_ref / t_vec:.1f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=50, help="Held-out slices per domain.")
    parser.add_argument("--steps", type=int, default=300, help="Training steps per teacher.")
    parser.add_argument("--regret-slices", type=int, default=20, help="Slices per domain.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, held = {}, {}
    for name in NAMES:
        train[name], held[name] = split(name)
    profiles = {name: profile_texts(train[name]) for name in NAMES}
    accuracy(profiles, held, args.slices)
    speed(profiles, held)
    regret(profiles, train, held, args.regret_slices, args.steps)


if __name__ == "__main__":
    main()

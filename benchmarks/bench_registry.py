"""Registry scale: build a 10,000-model lineage, then time ancestor/descendant queries.

Every model is registered and linked through the public API (one transaction each, with the
cycle check), as a team's registry would grow. Queries are single recursive CTEs.

    .venv/bin/python benchmarks/bench_registry.py [--models 10000] [--url sqlite:///...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from lineage.registry import Registry
from lineage.registry.modelinfo import ModelInfo

INFO = ModelInfo("roberta", "mlm", 2, 64, 2, 256, 8000, 1_000_000, "f" * 64)


def build(reg: Registry, n: int, seed: int = 0) -> tuple[float, float]:
    """A DAG like a real family: each model adapts a recent one; 20 % also have a KI teacher."""
    rng = random.Random(seed)
    t_models = t_edges = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        reg.add_model(f"m{i}", f"/models/m{i}", INFO)
        t1 = time.perf_counter()
        if i:
            parent = max(0, i - 1 - int(rng.expovariate(1 / 20)))
            reg.add_edge(f"m{parent}", f"m{i}", "adapt")
            if i > 10 and rng.random() < 0.2:
                teacher = rng.randrange(0, i)
                if teacher != parent:
                    reg.add_edge(f"m{teacher}", f"m{i}", "ki")
        t2 = time.perf_counter()
        t_models += t1 - t0
        t_edges += t2 - t1
    return t_models, t_edges


def timed(fn, *args) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, len(out) if hasattr(out, "__len__") else int(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--url", default=None, help="SQLAlchemy URL (default: a temp SQLite file)")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'registry.db'}"
    reg = Registry(url)
    t_models, t_edges = build(reg, args.models)
    n_edges = len(reg.edges())
    print(
        f"built {args.models:,} models and {n_edges:,} edges on {reg.engine.dialect.name}: "
        f"{1e3 * t_models / args.models:.2f} ms/model, {1e3 * t_edges / n_edges:.2f} ms/edge "
        "(each edge checks for cycles)"
    )
    rng = random.Random(1)
    late = [f"m{rng.randrange(args.models - 500, args.models)}" for _ in range(20)]
    early = [f"m{rng.randrange(0, 50)}" for _ in range(20)]
    rows = []
    for label, fn, names in (
        ("ancestors of late models", reg.ancestors, late),
        ("descendants of early models", reg.descendants, early),
        ("generation of late models", reg.generation, late),
    ):
        results = [timed(fn, name) for name in names]
        times = [t for t, _ in results]
        sizes = [s for _, s in results]
        rows.append(
            (label, statistics.median(times) * 1e3, max(times) * 1e3, statistics.median(sizes))
        )
    print(f"{'query':32} {'median ms':>10} {'max ms':>8} {'median result':>14}")
    for label, med, worst, size in rows:
        print(f"{label:32} {med:10.1f} {worst:8.1f} {size:14.0f}")


if __name__ == "__main__":
    main()

"""Registry scale on SQLite and PostgreSQL: lineage queries at 10,000 and 100,000 models, and
the edge insert with its cycle check.

The graph is shaped like a real family (each model adapts a recent one, one in five also has a
random KI teacher; 100,000 models are ~5,000 generations deep). It is loaded in bulk (one
transaction of plain inserts: building 100,000 models one API transaction each would take an
hour here); then ``--inserts`` more models and their edges go through the API, one transaction
each with the cycle check, and are timed; then ancestors, descendants and generation are timed
through the API: the first call of a fresh ``Registry`` (it reads the graph, as one CLI command
does), and the median and max over 20 models of a registry that holds it.

For the choice between a recursive CTE, a closure table and the graph in memory, it also prints
the recursive CTE's time for the same reachability (ids only) and the rows a closure table would
hold (mean ancestors of 200 sampled models x models).

PostgreSQL is a throwaway local cluster (tests/pgcluster.py; Debian's postgresql, `make
test-deps`) unless --pg-url names a database.

    .venv/bin/python benchmarks/bench_registry.py [--models 10000 100000]
        [--backends sqlite postgresql] [--inserts 500] [--pg-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from sqlalchemy import insert, text

from lineage.registry import Registry
from lineage.registry.db import EdgeRow, ModelRow
from lineage.registry.modelinfo import ModelInfo

INFO = ModelInfo("roberta", "mlm", 2, 64, 2, 256, 8000, 1_000_000, "f" * 64)
ROOT = Path(__file__).resolve().parents[1]


def parents_of(i: int, rng: random.Random) -> list[tuple[int, str]]:
    """(parent index, edge kind) of model ``i``: the benchmark's family shape."""
    if i == 0:
        return []
    found = [(max(0, i - 1 - int(rng.expovariate(1 / 20))), "adapt")]
    if i > 10 and rng.random() < 0.2:
        teacher = rng.randrange(0, i)
        if teacher != found[0][0]:
            found.append((teacher, "ki"))
    return found


def bulk_load(reg: Registry, n: int, rng: random.Random) -> float:
    """Models m0..m{n-1} and their edges in one transaction (setup, not the timed API)."""
    now = datetime.now(UTC)
    row = {k: getattr(INFO, k) for k in ("family", "objective", "layers", "d_model", "heads")}
    row |= {k: getattr(INFO, k) for k in ("d_ffn", "vocab_size", "n_params")}
    row |= {"tokenizer_fingerprint": INFO.tokenizer_fingerprint, "domains": [], "description": ""}
    row |= {"created_at": now}
    models = [row | {"id": i + 1, "name": f"m{i}", "path": f"/models/m{i}"} for i in range(n)]
    edges = [
        {"parent_id": p + 1, "child_id": i + 1, "kind": kind, "params": {}, "created_at": now}
        for i in range(n)
        for p, kind in parents_of(i, rng)
    ]
    t0 = time.perf_counter()
    with reg.engine.begin() as conn:
        pg = conn.dialect.name == "postgresql"
        if pg:  # PostgreSQL's per-row graph_version triggers would make the load quadratic
            conn.execute(text("ALTER TABLE models DISABLE TRIGGER USER"))
            conn.execute(text("ALTER TABLE edges DISABLE TRIGGER USER"))
        conn.execute(insert(ModelRow), models)
        conn.execute(insert(EdgeRow), edges)
        if pg:
            conn.execute(text("ALTER TABLE models ENABLE TRIGGER USER"))
            conn.execute(text("ALTER TABLE edges ENABLE TRIGGER USER"))
            conn.execute(text("UPDATE registry_state SET graph_version = graph_version + 1"))
            conn.execute(
                text("SELECT setval(pg_get_serial_sequence('models', 'id'), :n)"), {"n": n}
            )
    with reg.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return time.perf_counter() - t0


def api_inserts(
    reg: Registry, start: int, count: int, rng: random.Random
) -> tuple[list[float], list[float], float]:
    """Wall and CPU seconds (of this process) per edge added through the API (each: one
    transaction with the cycle check), and the PostgreSQL server's mean CPU seconds per edge."""
    wall, cpu, server_s = [], [], 0.0
    server = server_cpu(reg)
    for i in range(start, start + count):
        reg.add_model(f"m{i}", f"/models/m{i}", INFO)
        for p, kind in parents_of(i, rng):
            t0, c0, s0 = time.perf_counter(), time.process_time(), server()
            reg.add_edge(f"m{p}", f"m{i}", kind)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            server_s += server() - s0
    return wall, cpu, server_s / max(len(wall), 1)


def server_cpu(reg: Registry) -> Callable[[], float]:
    """CPU seconds so far of the PostgreSQL server processes serving this database (read from
    /proc: the server runs on this machine); 0 on SQLite, whose work is this process's."""
    if reg.engine.dialect.name != "postgresql":
        return lambda: 0.0
    reg.add_model("warm-up", "/models/warm-up", INFO)  # opens the pool's connection
    with reg.engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        stats = [Path(f"/proc/{pid}/stat") for pid in pids]
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        # utime and stime: fields 14 and 15, the 12th and 13th after the ")" closing the name
        fields = [f.read_text().rsplit(")", 1)[1].split() for f in stats if f.exists()]
        return sum(int(x[11]) + int(x[12]) for x in fields) / tick

    return read


def timed(fn: Callable[[str], object], names: list[str]) -> list[float]:
    return timed_cpu(fn, names)[0]


def timed_cpu(fn: Callable[[str], object], names: list[str]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (of this process) of ``fn`` on each name."""
    wall, cpu = [], []
    for name in names:
        t0, c0 = time.perf_counter(), time.process_time()
        fn(name)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def cte_reach(reg: Registry, name: str, up: bool) -> int:
    """The recursive CTE this registry used before (reachable ids only), for comparison."""
    src, dst = ("child_id", "parent_id") if up else ("parent_id", "child_id")
    sql = text(
        f"WITH RECURSIVE walk(id) AS (SELECT e.{dst} FROM edges e JOIN models m "
        f"ON m.id = e.{src} WHERE m.name = :name UNION SELECT e.{dst} FROM edges e "
        f"JOIN walk w ON e.{src} = w.id) SELECT count(*) FROM walk"
    )
    with reg.engine.connect() as conn:
        return int(conn.execute(sql, {"name": name}).scalar_one())


def bench(url: str, n: int, inserts: int) -> None:
    rng = random.Random(0)
    reg = Registry(url)
    load_s = bulk_load(reg, n, rng)
    edge_s, edge_cpu, edge_server = api_inserts(reg, n, inserts, rng)
    total = n + inserts  # m0 .. m{total - 1} (PostgreSQL also has a warm-up model)
    print(
        f"\n{reg.engine.dialect.name}, {total:,} models, {len(reg.edges()):,} edges "
        f"(bulk load {load_s:.1f} s; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores)"
    )
    print(
        f"  edge insert with cycle check, {len(edge_s)} through the API at {n:,}+ models: "
        f"median {1e3 * statistics.median(edge_s):.2f} ms, mean {1e3 * statistics.mean(edge_s):.2f}"
        f" ms, max {1e3 * max(edge_s):.1f} ms; this process's CPU: median "
        f"{1e3 * statistics.median(edge_cpu):.2f} ms"
        + (f", server's: mean {1e3 * edge_server:.2f} ms" if edge_server else "")
    )
    pick = random.Random(1)
    late = [f"m{pick.randrange(total - 500, total)}" for _ in range(20)]
    early = [f"m{pick.randrange(0, 50)}" for _ in range(20)]
    queries = (
        ("ancestors of late models", lambda r: r.ancestors, late, True),
        ("descendants of early models", lambda r: r.descendants, early, False),
        ("generation of late models", lambda r: r.generation, late, None),
    )
    print(
        f"  {'query':30} {'1st call':>9} {'median':>8} {'max':>8} {'CPU med':>8} {'size':>7} "
        f"{'CTE':>8}"
    )
    for label, method, names, up in queries:
        fresh = Registry(url)
        first = timed(method(fresh), names[:1])[0]  # reads the graph, as one CLI command does
        fresh.close()
        times, cpu = timed_cpu(method(reg), names)
        sizes = [len(r) if isinstance(r := method(reg)(nm), list) else r for nm in names]
        cte = ""
        if up is not None:
            cte_s = timed(partial(cte_reach, reg, up=up), names[:5])
            cte = f"{1e3 * statistics.median(cte_s):6.0f}ms"
        print(
            f"  {label:30} {1e3 * first:7.0f}ms {1e3 * statistics.median(times):6.1f}ms "
            f"{1e3 * max(times):6.1f}ms {1e3 * statistics.median(cpu):6.1f}ms "
            f"{statistics.median(sizes):7.0f} {cte:>8}"
        )
    graph = reg.graph()
    sample = random.Random(2).sample(range(len(graph.names)), 200)
    mean_anc = statistics.mean(len(graph.related(i, "ancestors")) for i in sample)
    print(f"  a closure table would hold ~{mean_anc * total:,.0f} rows")
    reg.close()


@contextmanager
def postgresql(url: str | None) -> Iterator[Callable[[str], str]]:
    """A function that gives a new empty database per run (a throwaway cluster by default)."""
    if url is not None:
        yield lambda _name: url
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from pgcluster import Cluster

    cluster = Cluster()
    try:
        yield cluster.create_database
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--inserts", type=int, default=500, help="models added through the API")
    parser.add_argument(
        "--pg-url", default=None, help="an empty PostgreSQL database (give one --models size)"
    )
    args = parser.parse_args()
    for backend in args.backends:
        if backend == "sqlite":
            for n in args.models:
                bench(f"sqlite:///{Path(tempfile.mkdtemp()) / 'registry.db'}", n, args.inserts)
            continue
        with postgresql(args.pg_url) as database:
            for n in args.models:
                bench(database(f"bench_{n}"), n, args.inserts)


if __name__ == "__main__":
    main()

"""Several writers at once, on both backends: nothing lost, no cycle slips in, one migration.

Writers are threads with a Registry (engine, connections) each, or processes; the database
sees separate connections either way.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import inspect, text

from lineage.errors import ConflictError
from lineage.registry import Registry
from lineage.registry.modelinfo import ModelInfo
from lineage.registry.schema import head_revision

INFO = ModelInfo("roberta", "mlm", 2, 64, 2, 256, 300, 1000, "f" * 64)


def together(jobs: list[Callable[[], object]]) -> list[object]:
    """Run ``jobs`` on threads released at the same instant; their results or exceptions."""
    start = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = jobs[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_eight_writers_lose_nothing(registry_url: str) -> None:
    count = 12
    regs = [Registry(registry_url) for _ in range(8)]
    first = [threading.Event() for _ in range(8)]  # writer w has registered its first model

    def writer(w: int) -> None:
        reg = regs[w]
        for i in range(count):
            reg.add_model(f"w{w}-m{i}", f"/m/w{w}/{i}", INFO)
            first[w].set()
            if i:
                reg.add_edge(f"w{w}-m{i - 1}", f"w{w}-m{i}", "ki")
        if w:  # across writers too: the first models chain through all of them
            first[w - 1].wait(60)
            reg.add_edge(f"w{w - 1}-m0", f"w{w}-m0", "grow")  # a new generation each

    try:
        results = together([lambda w=w: writer(w) for w in range(8)])
        errors = [r for r in results if r is not None]
        assert errors == []
        reg = regs[0]
        assert len(reg.models()) == 8 * count
        assert len(reg.edges()) == 8 * (count - 1) + 7
        assert reg.generation(f"w7-m{count - 1}") == 8 + count - 1
        if reg.engine.dialect.name == "sqlite":
            with reg.engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    finally:
        for reg in regs:
            reg.close()


def test_opposite_edges_at_once_never_both_pass(registry_url: str) -> None:
    """a -> b alongside b -> a, 100 times: exactly one is accepted each time."""
    left, right = Registry(registry_url), Registry(registry_url)
    try:
        for i in range(100):
            left.add_model(f"a{i}", f"/m/a{i}", INFO)
            left.add_model(f"b{i}", f"/m/b{i}", INFO)
        outcomes = []
        for i in range(100):
            a, b = f"a{i}", f"b{i}"
            results = together(
                [
                    lambda a=a, b=b: left.add_edge(a, b, "ki"),
                    lambda a=a, b=b: right.add_edge(b, a, "ki"),
                ]
            )
            refused = [r for r in results if isinstance(r, ConflictError)]
            assert all("cycle" in str(r) for r in refused), results
            outcomes.append(len(refused))
        assert outcomes == [1] * 100
        assert len(left.edges()) == 100
        assert left.graph().cycles() == []
    finally:
        left.close()
        right.close()


def _open(url: str, ready: Any) -> None:
    ready.wait()
    reg = Registry(url)
    reg.add_model(f"opened-by-{mp.current_process().name}", "/m/x", INFO)
    reg.close()


def test_four_processes_open_a_fresh_registry_at_once(empty_db_url: str) -> None:
    # fork: the children start with lineage imported (spawned ones would import it again, which
    # takes seconds each on a loaded machine); each opens its own engine and connection.
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(4)
    procs = [ctx.Process(target=_open, args=(empty_db_url, ready)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    reg = Registry(empty_db_url, upgrade_fresh=False)
    try:
        assert reg.schema_revision == head_revision() and len(reg.models()) == 4
        assert "registry_state" in inspect(reg.engine).get_table_names()
    finally:
        reg.close()


def test_a_writer_waits_for_the_lock_instead_of_failing(registry_url: str) -> None:
    """One transaction holds the lock while another writer starts; the second goes through
    after the first commits, and sees its rows (here: refuses a duplicate name)."""
    holder, other = Registry(registry_url), Registry(registry_url)
    try:
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            with holder.transaction():
                holder.add_model("x", "/m/x", INFO)
                entered.set()
                release.wait(30)

        def second() -> object:
            entered.wait(30)
            timer = threading.Timer(0.5, release.set)
            timer.start()
            try:
                return other.add_model("x", "/m/x2", INFO)
            except ConflictError as exc:
                return exc

        results = together([hold, second])
        assert isinstance(results[1], ConflictError) and "already registered" in str(results[1])
        assert [m.path for m in other.models()] == ["/m/x"]
    finally:
        holder.close()
        other.close()


def test_a_write_transaction_holds_the_write_lock(registry_url: str) -> None:
    """SQLite: another connection cannot BEGIN IMMEDIATE; PostgreSQL: the advisory lock is held
    by the transaction and released at its end."""
    reg = Registry(registry_url)
    try:
        with reg.transaction():
            if reg.engine.dialect.name == "sqlite":
                import sqlite3

                raw = sqlite3.connect(reg.engine.url.database or "", timeout=0)
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    raw.execute("BEGIN IMMEDIATE")
                raw.close()
            else:
                assert _advisory_locks(reg) == 1
        if reg.engine.dialect.name == "postgresql":
            assert _advisory_locks(reg) == 0
    finally:
        reg.close()


def _advisory_locks(reg: Registry) -> int:
    with reg.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).scalar_one()
        )


def _reserve(url: str, name: str, ready: Any, hold: Any, outcomes: Any) -> None:
    """Race for ``name``'s reservation; report the outcome, then stay alive until released
    (a live owner's reservation is not taken over)."""
    reg = Registry(url)
    ready.wait()
    try:
        reg.reserve_output(name, f"/m/{name}", job="train")
        outcomes.put(("won", mp.current_process().pid, False))
    except ConflictError as exc:
        outcomes.put(("refused", mp.current_process().pid, "running" in str(exc)))
    except Exception as exc:  # reported, so that the race fails with it rather than a timeout
        outcomes.put((repr(exc), mp.current_process().pid, False))
    hold.wait(120)
    reg.close()


def _race(url: str, name: str, n: int) -> tuple[list[tuple[str, int, bool]], list[Any]]:
    ctx = mp.get_context("fork")  # see test_four_processes_open_a_fresh_registry_at_once
    ready, hold, outcomes = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_reserve, args=(url, name, ready, hold, outcomes)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [outcomes.get(timeout=180) for _ in range(n)]
    return results, [hold, *procs]


def _finish(held: list[Any]) -> None:
    hold, *procs = held
    hold.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _reservations(url: str) -> list[Any]:
    """Read with an engine of its own, closed before the next fork (a child must not inherit
    the parent's open connections)."""
    reg = Registry(url)
    try:
        return reg.reservations()
    finally:
        reg.close()


def test_processes_racing_for_one_output_get_it_once(registry_url: str) -> None:
    """Four jobs with the same output name at once: one reserves it, three are refused while it
    lives; once it is gone, of four more racing to take its reservation over, one does."""
    for _ in range(2):  # the second round races to take over the first winner's (dead) row
        results, held = _race(registry_url, "g2", 4)
        try:
            winners = [pid for outcome, pid, _ in results if outcome == "won"]
            assert len(winners) == 1, results
            assert all(live for outcome, _, live in results if outcome == "refused"), results
            [res] = _reservations(registry_url)
            assert (res.name, res.owner.pid) == ("g2", winners[0])
        finally:
            _finish(held)
        [res] = _reservations(registry_url)  # the winner died holding it: left for the next job
        assert res.owner.pid == winners[0]


@pytest.mark.parametrize("upgrade_fresh", [True, False])
def test_a_schema_created_meanwhile_is_not_taken_for_an_unstamped_one(
    empty_db_url: str, upgrade_fresh: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race behind a fresh registry opened by several processes: this one reads no
    revision, then another commits the whole schema before this one looks at the tables. It
    must find the schema done, not refuse the database as "tables but no revision"."""
    import lineage.registry.schema as schema

    Registry(empty_db_url).close()  # the other process, done between the two reads
    real, reads = schema.current_revision, []

    def first_read_predates_it(engine: Any) -> str | None:
        reads.append(engine)
        return None if len(reads) == 1 else real(engine)

    monkeypatch.setattr(schema, "current_revision", first_read_predates_it)
    reg = Registry(empty_db_url, upgrade_fresh=upgrade_fresh)
    try:
        assert reg.schema_revision == head_revision() and reads
    finally:
        reg.close()

"""The registry on a real SQLite file: names, edges, lineage queries, transactions, concurrency."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.registry import Registry
from lineage.registry.modelinfo import ModelInfo
from lineage.workspace import Workspace


def info(layers: int = 2) -> ModelInfo:
    return ModelInfo("roberta", "mlm", layers, 64, 2, 256, 300, 1000, "f" * 64)


def family(reg: Registry, names: str) -> None:
    for name in names.split():
        reg.add_model(name, f"/m/{name}", info())


def test_register_a_real_model_directory(
    ws: Workspace, make_model_dir: Callable[..., Path]
) -> None:
    path = make_model_dir("small", "roberta", layers=2, hidden=64)
    model = ws.register_model(path)
    assert (model.name, model.family, model.objective) == ("small", "roberta", "mlm")
    assert (model.layers, model.d_model, model.heads, model.d_ffn) == (2, 64, 2, 256)
    from transformers import AutoModelForMaskedLM

    loaded = AutoModelForMaskedLM.from_pretrained(path)
    assert model.n_params == sum(p.numel() for p in loaded.parameters())
    assert model.tokenizer_fingerprint and len(model.tokenizer_fingerprint) == 64
    gpt = ws.register_model(make_model_dir("gpt", "gpt2"), name="g1")
    assert gpt.objective == "clm" and gpt.tokenizer_fingerprint == model.tokenizer_fingerprint


def test_bad_model_directories_change_nothing(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="does not exist"):
        ws.register_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LineageError, match=r"no config\.json"):
        ws.register_model(tmp_path / "empty")
    assert ws.registry.models() == []


def test_duplicate_and_unknown_names(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a b")
    with pytest.raises(ConflictError, match="already registered"):
        reg.add_model("a", "/elsewhere", info())
    with pytest.raises(NotFoundError, match="no model named 'zz'"):
        reg.model("zz")
    with pytest.raises(NotFoundError):
        reg.add_edge("a", "zz", "ki")
    with pytest.raises(LineageError, match="unknown edge kind"):
        reg.add_edge("a", "b", "distill")
    reg.add_edge("a", "b", "ki")
    with pytest.raises(ConflictError, match="already exists"):
        reg.add_edge("a", "b", "ki")
    assert len(reg.edges()) == 1


def test_lineage_queries_on_a_diamond(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "g1 g2 expert g3 g4")
    reg.add_edge("g1", "g2", "ki", params={"alpha_T": 0.5})
    reg.add_edge("g1", "expert", "adapt")
    reg.add_edge("g2", "g3", "ki")
    reg.add_edge("expert", "g3", "ki")
    reg.add_edge("g3", "g4", "grow")
    assert [(r.name, r.depth) for r in reg.ancestors("g4")] == [
        ("g3", 1),
        ("expert", 2),
        ("g2", 2),
        ("g1", 3),
    ]
    assert [(r.name, r.depth) for r in reg.descendants("g1")] == [
        ("expert", 1),
        ("g2", 1),
        ("g3", 2),
        ("g4", 3),
    ]
    assert {r.name for r in reg.parents("g3")} == {"g2", "expert"}
    assert [r.name for r in reg.children("g3")] == ["g4"]
    assert [reg.generation(n) for n in ("g1", "g2", "g3", "g4")] == [1, 2, 3, 4]
    assert reg.ancestors("g1") == [] and reg.descendants("g4") == []


def test_cycles_and_self_edges_are_refused(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a b c")
    reg.add_edge("a", "b", "ki")
    reg.add_edge("b", "c", "ki")
    with pytest.raises(ConflictError, match="cycle"):
        reg.add_edge("c", "a", "adapt")
    with pytest.raises(ConflictError, match="itself"):
        reg.add_edge("b", "b", "ki")
    assert len(reg.edges()) == 2
    # The database refuses a self-edge even when the Python check is bypassed.
    with pytest.raises(Exception, match="CHECK constraint failed"), reg.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO edges (parent_id, child_id, kind, params, created_at) "
                "VALUES (1, 1, 'ki', '{}', '2026-01-01')"
            )
        )


def test_remove_refuses_while_descendants_exist(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a b")
    reg.add_edge("a", "b", "ki")
    with pytest.raises(ConflictError, match="descendants"):
        reg.remove_model("a")
    assert len(reg.models()) == 2
    reg.remove_model("a", force=True)
    assert [m.name for m in reg.models()] == ["b"] and reg.edges() == []


def test_a_failed_transaction_leaves_nothing(ws: Workspace) -> None:
    reg = ws.registry
    shard = {"name": "s", "split": "train", "path": "/x", "n_bytes": 1, "n_documents": 1}
    with pytest.raises(LineageError):  # the second shard lacks its digest: the insert fails
        reg.add_domain("d1", shards=[shard | {"digest": "0"}, shard | {"name": "t"}])
    assert reg.domains() == [] and reg.shards() == []
    with pytest.raises(NotFoundError):
        reg.add_evaluation("missing-model", "d1", loss=1.0, ppl=2.7)
    assert reg.evaluations() == []


def _register_many(url: str, worker: int, count: int) -> None:
    reg = Registry(url)
    for i in range(count):
        name = f"w{worker}-m{i}"
        reg.add_model(name, f"/m/{name}", info())
        if i:
            reg.add_edge(f"w{worker}-m{i - 1}", name, "ki")
    reg.close()


def test_four_processes_register_concurrently(ws: Workspace) -> None:
    url, count = ws.registry_url, 25
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(url, w, count)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    reg = ws.registry
    assert len(reg.models()) == 4 * count
    assert len(reg.edges()) == 4 * (count - 1)
    assert reg.generation(f"w3-m{count - 1}") == count
    with reg.engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_lineage_queries_match_brute_force_on_a_random_dag(ws: Workspace) -> None:
    import random

    rng = random.Random(3)
    reg = ws.registry
    parents: dict[int, set[int]] = {}
    for i in range(60):
        reg.add_model(f"m{i}", f"/m/{i}", info())
        parents[i] = set(rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 2, 3]))))
        for p in parents[i]:
            reg.add_edge(f"m{p}", f"m{i}", "ki")

    def depths(i: int) -> dict[int, int]:  # shortest distance to every ancestor
        out, frontier, d = {}, {i}, 0
        while frontier:
            d += 1
            frontier = {p for f in frontier for p in parents[f]} - out.keys()
            out |= {p: d for p in frontier}
        return out

    def generation(i: int) -> int:
        return 1 + max((generation(p) for p in parents[i]), default=0)

    for i in range(0, 60, 7):
        expected = sorted((f"m{p}", d) for p, d in depths(i).items())
        assert sorted((r.name, r.depth) for r in reg.ancestors(f"m{i}")) == expected
        assert reg.generation(f"m{i}") == generation(i)
    children = {i: {c for c, ps in parents.items() if i in ps} for i in parents}
    reach = set()
    frontier = {0}
    while frontier:
        frontier = {c for f in frontier for c in children[f]} - reach
        reach |= frontier
    assert {r.name for r in reg.descendants("m0")} == {f"m{c}" for c in reach}

"""The registry on both backends (a SQLite file, a PostgreSQL database): names, edges, lineage
queries, transactions, paths, timestamps. Concurrency: test_concurrency.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC
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


@pytest.fixture
def ws(tmp_path: Path, registry_url: str) -> Iterator[Workspace]:
    """A workspace whose registry is on each backend in turn."""
    workspace = Workspace.init(tmp_path / "ws", registry_url=registry_url)
    yield workspace
    workspace.close()


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
    with pytest.raises(Exception, match=r"(?i)check constraint"), reg.engine.begin() as conn:
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


def test_timestamps_are_aware_utc(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a b")
    edge = reg.add_edge("a", "b", "ki")
    run = reg.finish_run(reg.start_run("train").id, status="finished")
    stamps = [reg.model("a").created_at, reg.edges()[0].created_at, edge.created_at]
    stamps += [run.started_at, reg.runs()[0].ended_at]
    assert all(t is not None and t.utcoffset() is not None for t in stamps)
    assert all(t.tzinfo == UTC for t in stamps)  # type: ignore[union-attr]


def test_paths_under_the_storage_root_are_stored_relative(ws: Workspace) -> None:
    reg = ws.registry
    inside = ws.models_dir / "a"
    reg.add_model("a", str(inside), info())
    reg.add_model("b", "/shared/elsewhere/b", info())
    reg.add_tokenizer("tok", str(ws.models_dir / "tok"), "f" * 64, 300, {})
    reg.add_cache(str(ws.caches_dir / "a-k10"), "a", 10, {}, None)
    with reg.engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT name, path FROM models")).tuples().all())
        tok = conn.execute(text("SELECT path FROM tokenizers")).scalar()
        cache = conn.execute(text("SELECT path FROM caches")).scalar()
    assert stored == {"a": "models/a", "b": "/shared/elsewhere/b"}
    assert (tok, cache) == ("models/tok", "caches/a-k10")
    assert reg.model("a").path == str(inside) and reg.model("b").path == "/shared/elsewhere/b"
    assert reg.caches()[0].path == str(ws.caches_dir / "a-k10")
    reg.update_model("b", path=str(ws.models_dir / "b"))
    assert reg.model("b").path == str(ws.models_dir / "b")


def test_another_root_resolves_the_same_registry(ws: Workspace, tmp_path: Path) -> None:
    """Two machines share the registry; each mounts the storage at its own path."""
    ws.registry.add_model("a", str(ws.models_dir / "a"), info())
    other = Registry(ws.registry_url, storage_root=tmp_path / "mnt" / "team")
    try:
        assert other.model("a").path == str(tmp_path / "mnt" / "team" / "models" / "a")
    finally:
        other.close()


def test_a_cycle_written_past_the_check_is_named_not_followed_forever(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a b c d")
    reg.add_edge("a", "b", "ki")
    reg.add_edge("b", "c", "ki")
    reg.add_edge("c", "d", "ki")
    assert reg.generation("d") == 4  # read once: the registry now holds the graph in memory
    ids = {m.name: m.id for m in reg.models()}
    with reg.engine.begin() as conn:  # an old client or psql, without the check
        conn.execute(
            text(
                "INSERT INTO edges (parent_id, child_id, kind, params, created_at) "
                "VALUES (:p, :c, 'ki', '{}', '2026-01-01 00:00:00')"
            ),
            {"p": ids["c"], "c": ids["a"]},
        )
    with pytest.raises(ConflictError, match=r"cycle: a -> b -> c -> a"):
        reg.generation("d")  # the triggers told the registry its copy was stale
    assert {r.name for r in reg.ancestors("a")} == {"b", "c"}  # reachability still answers
    assert [r.name for r in reg.descendants("c")] == ["a", "d", "b"]
    assert reg.graph().cycles() == [["a", "b", "c"]]
    assert reg.remove_edge("c", "a") == 1
    assert reg.generation("d") == 4
    with pytest.raises(NotFoundError, match="no edge c -> a"):
        reg.remove_edge("c", "a")


def test_a_long_lived_registry_sees_writes_from_another_client(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a b")
    assert reg.descendants("a") == []
    other = Registry(ws.registry_url, storage_root=ws.storage_root)
    try:
        other.add_model("c", "/m/c", info())
        other.add_edge("a", "c", "adapt")
        assert [r.name for r in reg.descendants("a")] == ["c"]
        other.remove_model("c", force=True)
        assert reg.descendants("a") == []
        with pytest.raises(NotFoundError):
            reg.generation("c")
    finally:
        other.close()


def test_one_transaction_sees_its_own_edges(ws: Workspace) -> None:
    reg = ws.registry
    family(reg, "a")
    assert reg.generation("a") == 1
    with pytest.raises(RuntimeError), reg.transaction():
        reg.add_model("b", "/m/b", info())
        reg.add_edge("a", "b", "ki")
        assert reg.generation("b") == 2 and reg.parents("b")[0].name == "a"
        raise RuntimeError("roll back")
    assert not reg.has_model("b") and reg.descendants("a") == []

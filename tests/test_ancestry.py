"""The lineage graph in memory: shortest distances, generations, cycles named (pure)."""

import random

import pytest

from lineage.registry.ancestry import CycleError, LineageGraph, generations

# 0 -> 1 -> 2 -> 3 and a shortcut 0 -> 3; 4 stands alone. Ids differ from node positions.
MODELS = [(10 * i + 7, f"m{i}") for i in range(5)]
EDGES = [(7, 17), (17, 27), (27, 37), (7, 37)]


def graph(
    edges: list[tuple[int, int]] = EDGES, models: list[tuple[int, str]] = MODELS
) -> LineageGraph:
    return LineageGraph.build(1, models, edges)


def test_shortest_distances_take_the_shortcut() -> None:
    g = graph()
    assert g.related(g.index["m0"], "descendants") == [("m1", 1), ("m3", 1), ("m2", 2)]
    assert g.related(g.index["m3"], "ancestors") == [("m0", 1), ("m2", 1), ("m1", 2)]
    assert g.related(g.index["m4"], "descendants") == []


def test_generation_is_the_longest_chain_not_the_shortcut() -> None:
    g = graph()
    assert [g.generation(g.index[f"m{i}"]) for i in range(5)] == [1, 2, 3, 4, 1]


def test_deep_chains_need_no_recursion() -> None:
    n = 20_000
    g = graph([(i, i + 1) for i in range(n - 1)], [(i, f"m{i}") for i in range(n)])
    assert g.generation(g.index[f"m{n - 1}"]) == n
    assert len(g.related(g.index["m0"], "descendants")) == n - 1


def test_a_cycle_is_named_and_what_it_does_not_reach_still_answers() -> None:
    # m1 -> m2 -> m3 -> m1, under m0; m4 hangs below the cycle
    g = graph([(7, 17), (17, 27), (27, 37), (37, 17), (37, 47)])
    assert g.generation(g.index["m0"]) == 1
    with pytest.raises(CycleError, match=r"cycle: m1 -> m2 -> m3 -> m1;"):
        g.generation(g.index["m4"])
    assert g.related(g.index["m2"], "descendants") == [("m3", 1), ("m1", 2), ("m4", 2)]
    assert g.cycles() == [["m1", "m2", "m3"]]
    assert graph().cycles() == []


def test_edges_to_unknown_ids_are_left_out() -> None:
    g = graph([(7, 17), (7, 999), (999, 17)])
    assert g.related(g.index["m0"], "descendants") == [("m1", 1)]
    assert g.generation(g.index["m1"]) == 2


def bfs_reference(edges: list[tuple[int, int]], start: int) -> dict[int, int]:
    """Shortest distances from ``start`` along ``edges`` (parent, child): a plain BFS."""
    below: dict[int, list[int]] = {}
    for parent, child in edges:
        below.setdefault(parent, []).append(child)
    dist, frontier = {start: 0}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in below.get(node, []):
                if child not in dist:
                    dist[child] = dist[node] + 1
                    nxt.append(child)
        frontier = nxt
    del dist[start]
    return dist


@pytest.mark.parametrize("seed", range(5))
def test_distances_match_a_plain_breadth_first_search(seed: int) -> None:
    rng = random.Random(seed)
    n = 300
    edges = sorted(
        {(rng.randrange(0, i), i) for i in range(1, n) for _ in range(rng.randint(1, 3))}
    )
    edges += [(i, rng.randrange(0, i)) for i in rng.sample(range(1, n), 3)]  # a few cycles
    g = graph(edges, [(i, f"m{i:03d}") for i in range(n)])
    for start in rng.sample(range(n), 20):
        want = bfs_reference(edges, start)
        got = g.related(start, "descendants")
        assert got == sorted(((f"m{k:03d}", d) for k, d in want.items()), key=lambda r: r[::-1])
        up = bfs_reference([(c, p) for p, c in edges], start)
        assert dict(g.related(start, "ancestors")) == {f"m{k:03d}": d for k, d in up.items()}


def test_adaptation_keeps_the_generation_and_inheritance_moves_it_on() -> None:
    """The demo's family: G2 by KI from G1, adapted to new domains with the routed experts as
    teachers, a G3 taught by G2, a G2 grown from G1 then trained with KI from G1."""
    edges = [
        ("g1", "g2-ki", "ki"),
        ("g2-ki", "g2-adapt-sl", "adapt"),
        ("g2-ki", "g2-adapt-ki", "adapt"),
        ("expert-cs", "g2-adapt-ki", "ki"),  # a G1 teacher does not pull a G2 back
        ("g2-ki", "g3", "ki"),
        ("g3", "g3-lora", "adapter"),
        ("g1", "g2-aki", "grow"),
        ("g2-aki", "g2-aki-ki", "adapt"),
        ("g1", "g2-aki-ki", "ki"),
        ("g2-sl", "g3-from-g2-sl", "ki"),  # trained from a random init: nothing inherited
        ("g3", "g3-twice", "adapt"),  # two edges between one pair: the new generation wins
        ("g3", "g3-twice", "ki"),
    ]
    assert generations(edges) == {
        "g1": 1,
        "g2-ki": 2,
        "g2-adapt-sl": 2,
        "g2-adapt-ki": 2,
        "expert-cs": 1,
        "g3": 3,
        "g3-lora": 3,
        "g3-twice": 4,
        "g2-aki": 2,
        "g2-aki-ki": 2,
        "g2-sl": 1,
        "g3-from-g2-sl": 2,
    }
    # the registry's graph says the same (kinds as load_graph reads them: 1 = new generation)
    names = sorted({n for p, c, _ in edges for n in (p, c)})
    ids = {n: 10 * i + 3 for i, n in enumerate(names)}
    rows = [(ids[p], ids[c], int(k in ("ki", "grow"))) for p, c, k in reversed(edges)]
    g = LineageGraph.build(1, [(i, n) for n, i in ids.items()], rows)
    assert {n: g.generation(g.index[n]) for n in names} == generations(edges)


def test_cycles_and_unknown_kinds_are_refused() -> None:
    on_a_cycle = [("r", "a", "ki"), ("a", "b", "ki"), ("b", "a", "adapt"), ("b", "c", "ki")]
    assert generations(on_a_cycle) == {"r": 1, "a": 0, "b": 0, "c": 0}  # 0: undefined
    with pytest.raises(ValueError, match="kind"):
        generations([("a", "b", "merge")])

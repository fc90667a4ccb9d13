"""The lineage graph in memory: shortest distances, longest chains, cycles named (pure)."""

import pytest

from lineage.registry.ancestry import CycleError, LineageGraph

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

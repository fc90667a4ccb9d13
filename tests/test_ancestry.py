from lineage.registry.ancestry import longest_chain, shortest_depths

# 0 -> 1 -> 2 -> 3 and a shortcut 0 -> 3; 4 is unreachable
CHILDREN = {0: [1, 3], 1: [2], 2: [3]}
PARENTS = {3: [2, 0], 2: [1], 1: [0]}


def test_shortest_depths_take_the_shortcut() -> None:
    assert shortest_depths(0, CHILDREN) == {0: 0, 1: 1, 3: 1, 2: 2}
    assert shortest_depths(4, CHILDREN) == {4: 0}


def test_longest_chain_ignores_the_shortcut() -> None:
    assert longest_chain(3, PARENTS) == 4
    assert longest_chain(0, PARENTS) == 1


def test_deep_chains_need_no_recursion() -> None:
    parents = {i: [i - 1] for i in range(1, 20_000)}
    assert longest_chain(19_999, parents) == 20_000

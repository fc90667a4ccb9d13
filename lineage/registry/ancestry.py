"""Lineage graph queries: one recursive CTE for reachability, then pure graph arithmetic.

A CTE that carried depths would emit one row per (model, path length) and multiply on DAGs;
this one emits each reachable model once, and distances are computed in memory from the edges
among the reachable set (two queries, whatever the depth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from lineage.registry.db import EdgeRow, ModelRow

Direction = Literal["ancestors", "descendants"]


def _columns(direction: Direction) -> tuple[Any, Any]:
    """(from, to) edge columns for walking in ``direction``."""
    if direction == "ancestors":
        return EdgeRow.child_id, EdgeRow.parent_id
    return EdgeRow.parent_id, EdgeRow.child_id


def reachability(start_id: int, direction: Direction) -> Any:
    """Recursive CTE of the model ids reachable from ``start_id`` (UNION: each id once)."""
    src, dst = _columns(direction)
    walk = select(dst.label("id")).where(src == start_id).cte("walk", recursive=True)
    return walk.union(select(dst).join(walk, src == walk.c.id))


def reachable_ids(s: Session, start_id: int, direction: Direction) -> set[int]:
    return set(s.scalars(select(reachability(start_id, direction).c.id)))


def reachable_subgraph(
    s: Session, start_id: int, direction: Direction
) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Names of the reachable models and the adjacency (in ``direction``) among them."""
    walk = reachability(start_id, direction)
    names = dict(
        s.execute(select(ModelRow.id, ModelRow.name).join(walk, walk.c.id == ModelRow.id)).all()
    )
    src, dst = _columns(direction)
    inside = select(walk.c.id)
    edges = s.execute(
        select(src, dst).where(dst.in_(inside), (src == start_id) | src.in_(inside))
    ).all()
    adjacency: dict[int, list[int]] = {}
    for a, b in edges:
        adjacency.setdefault(a, []).append(b)
    return names, adjacency


def shortest_depths(start: int, adjacency: Mapping[int, Sequence[int]]) -> dict[int, int]:
    """Breadth-first distance from ``start`` to every node it reaches (``start`` itself: 0)."""
    depth = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for other in adjacency.get(node, ()):
                if other not in depth:
                    depth[other] = depth[node] + 1
                    nxt.append(other)
        frontier = nxt
    return depth


def longest_chain(start: int, parents: Mapping[int, Sequence[int]]) -> int:
    """Nodes on the longest parent chain from ``start`` to a root (a root alone: 1)."""
    longest: dict[int, int] = {}
    stack = [(start, False)]
    while stack:  # iterative post-order DFS: no recursion limit on deep lineages
        node, expanded = stack.pop()
        if node in longest:
            continue
        if expanded:  # every parent was pushed above this node, so is finished now
            longest[node] = 1 + max((longest[p] for p in parents.get(node, ())), default=0)
        else:
            stack.append((node, True))
            stack.extend((p, False) for p in parents.get(node, ()) if p not in longest)
    return longest[start]

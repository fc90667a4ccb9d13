"""Lineage graph queries: the whole graph held in memory, kept current by one version read.

Measured on ``benchmarks/bench_registry.py``'s DAG (each model adapts a recent one, one in five
also has a random teacher; 100,000 models are about 5,000 generations deep): a recursive CTE
walks one generation per iteration, so descendants of an early model took 1.3-1.8 s at 100,000
models on either backend (on a loaded 2-core machine; from memory: 0.7-0.8 s, 0.16-0.18 s of
CPU), and a closure table would hold ~10 million rows at 10,000 models and ~1.1 billion at
100,000. The graph itself is small (two integers per edge), so a reader loads it once — ids,
names, parents and children as sparse matrices — and answers from memory with SciPy's
breadth-first search; ``registry_state.graph_version``, changed by database
triggers on every model or edge write, tells with one indexed read whether the copy is current.

Only the cycle check of a new edge walks the database (one recursive CTE down from the child: a
new model has no descendants, so the walk is short), because it must see the locked, current
state.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, repeat
from typing import Literal, NamedTuple

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from lineage.errors import ConflictError
from lineage.registry.db import RegistryStateRow
from lineage.registry.entities import Related

Direction = Literal["ancestors", "descendants"]

# How an edge moves its child's generation (``LineageGraph.generations``).
NEW_GENERATION = ("ki", "grow")  # the child learned from, or grew out of, the parent
SAME_GENERATION = ("adapt", "adapter")  # the parent itself, trained on more or given an adapter


class CycleError(ConflictError):
    """The registry's edges make a cycle (written past lineage's check: by hand, or by an old
    version without the write lock)."""


def cycle_message(names: Sequence[str]) -> str:
    path = " -> ".join([*names, names[0]])
    return (
        f"the lineage has a cycle: {path}; it was written past lineage's cycle check (by hand "
        "or an older version): break it with `lineage edge remove`, see `lineage db check`"
    )


@dataclass(frozen=True)
class LineageGraph:
    """Every model (node ``i``: ``ids[i]``, ``names[i]``) and edge, as sparse adjacency.

    Row ``i`` of ``parents`` holds the parents of node ``i``; of ``children``, its children;
    an entry is 2 where some edge between the two makes a new generation (ki, grow), else 1.
    """

    version: int
    ids: np.ndarray
    names: list[str]
    parents: csr_matrix
    children: csr_matrix
    index: dict[str, int] = field(repr=False)

    @classmethod
    def build(
        cls, version: int, models: Sequence[tuple[int, str]], edges: Sequence[Sequence[int]]
    ) -> LineageGraph:
        """From (id, name) of every model and (parent id, child id[, new generation]) of every
        edge, the last 1 for a ki or grow edge and 0 for adapt or adapter (1 when left out); an
        edge whose end is not a model (possible only past the foreign keys) is left out."""
        ids = np.fromiter((m[0] for m in models), dtype=np.int64, count=len(models))
        names = [m[1] for m in models]
        order = np.argsort(ids)
        ids, names = ids[order], [names[i] for i in order.tolist()]
        width = len(edges[0]) if len(edges) else 2
        flat = chain.from_iterable(edges)  # rows are sequences: no per-row NumPy conversion
        rows = np.fromiter(flat, dtype=np.int64, count=width * len(edges)).reshape(-1, width)
        pairs = rows[:, :2]
        pos = np.searchsorted(ids, pairs).clip(max=max(len(ids) - 1, 0))
        known = (ids[pos] == pairs).all(axis=1) if len(ids) else np.zeros(len(pairs), bool)
        parent, child = pos[known, 0], pos[known, 1]
        step = rows[known, 2] if width == 3 else np.ones(len(parent), dtype=np.int64)
        n = len(ids)
        # One entry per (parent, child), the largest step of its edges: 1 + step, float64
        # (what SciPy's graph routines take, so no copy; never 0, which SciPy could drop).
        order = np.lexsort((-step, parent * n + child))
        keys = (parent * n + child)[order]
        first = order[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else order
        parent, child, weight = parent[first], child[first], step[first] + 1.0
        children = csr_matrix((weight, (parent, child)), shape=(n, n))
        parents = csr_matrix((weight, (child, parent)), shape=(n, n))
        return cls(version, ids, names, parents, children, {nm: i for i, nm in enumerate(names)})

    @cached_property
    def _names(self) -> np.ndarray:
        """The names as a NumPy object array (gathering 100,000 of them: one C call)."""
        return np.array(self.names, dtype=object)

    @cached_property
    def _name_rank(self) -> np.ndarray:
        """Each node's position in name order (sorting results by name in NumPy)."""
        rank = np.empty(len(self.names), dtype=np.int64)
        rank[np.argsort(self._names)] = np.arange(len(self.names))
        return rank

    def related(self, node: int, direction: Direction) -> list[Related]:
        """Every model reachable from ``node`` with its shortest distance, by distance then
        name; ``node`` itself is left out (even on a cycle through it)."""
        adjacency = self.parents if direction == "ancestors" else self.children
        if adjacency.indptr[node] == adjacency.indptr[node + 1]:
            return []
        found, depth = _bfs_depths(adjacency, node)
        found, depth = found[1:], depth[1:]  # node itself is first, at depth 0
        order = np.argsort(depth * len(self.names) + self._name_rank[found])  # 3x lexsort's
        pairs = zip(self._names[found[order]].tolist(), depth[order].tolist(), strict=True)
        with _gc_paused():
            return list(map(tuple.__new__, repeat(Related), pairs))  # Related._make, unchecked

    @cached_property
    def generations(self) -> np.ndarray:
        """Every node's generation (Kahn's topological pass over the graph); 0 for a node on a
        cycle or below one.

        A model that inherited from no model is generation 1 (trained from scratch or
        registered from elsewhere). Knowledge inheritance and growth make a new generation: a
        ``ki`` or ``grow`` edge puts its child at least one generation after its parent (a
        student after its teachers, a grown model after its source). Adaptation does not: an
        ``adapt`` or ``adapter`` edge keeps its child in its parent's generation (the same
        model, trained on new domains or given a LoRA adapter). A model's generation is the
        highest that its incoming edges ask for, so a model taught by a G1 and adapted from a
        G2 is a G2, and one taught by a G2 is a G3.
        """
        children = self.children
        indptr, targets = children.indptr.tolist(), children.indices.tolist()
        steps = (children.data - 1).astype(np.int64).tolist()  # 1: new generation, 0: same
        waiting = np.diff(self.parents.indptr).tolist()  # parents not yet done, per node
        gen = [1] * len(self.names)
        ready = [i for i, w in enumerate(waiting) if w == 0]
        while ready:
            node = ready.pop()
            here = gen[node]
            for k in range(indptr[node], indptr[node + 1]):
                child, below = targets[k], here + steps[k]
                if gen[child] < below:
                    gen[child] = below
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        out = np.array(gen, dtype=np.int64)
        out[np.array(waiting, dtype=np.int64) > 0] = 0
        return out

    def generation(self, node: int) -> int:
        """The generation of ``node`` (``generations``); a cycle above it is named."""
        gens = self.generations
        if gens[node] == 0:  # every unfinished node has an unfinished parent: walk them
            raise CycleError(cycle_message(self._walk_back(node, lambda p: bool(gens[p] == 0))))
        return int(gens[node])

    def _walk_back(self, node: int, allowed: Callable[[int], bool]) -> list[str]:
        """Names along the cycle met walking from ``node`` to allowed parents (each node on
        the walk must have one), parent before child."""
        indptr, indices = self.parents.indptr, self.parents.indices
        seen: dict[int, int] = {}
        walk: list[int] = []
        while node not in seen:
            seen[node] = len(walk)
            walk.append(node)
            node = next(int(p) for p in indices[indptr[node] : indptr[node + 1]] if allowed(p))
        loop = [self.names[i] for i in reversed(walk[seen[node] :])]
        first = loop.index(min(loop))  # the same cycle always reads the same way
        return loop[first:] + loop[:first]

    def cycles(self) -> list[list[str]]:
        """One cycle per strongly connected group of models (none for a DAG)."""
        n_groups, labels = connected_components(self.children, directed=True, connection="strong")
        sizes = np.bincount(labels, minlength=n_groups)
        found = []
        for group in np.flatnonzero(sizes > 1).tolist():
            members = set(np.flatnonzero(labels == group).tolist())
            found.append(self._walk_back(min(members), members.__contains__))
        return found


def generations(edges: Iterable[tuple[str, str, str]]) -> dict[str, int]:
    """The generation of every model named in ``edges`` ((parent, child, kind) by name; see
    ``LineageGraph.generations``; 0 on or below a cycle): for a family drawn apart from the
    registry."""
    triples = list(edges)
    if unknown := {k for _, _, k in triples} - {*NEW_GENERATION, *SAME_GENERATION}:
        raise ValueError(f"unknown edge kind(s) {sorted(unknown)}")
    ids = {name: i for i, name in enumerate(sorted({n for p, c, _ in triples for n in (p, c)}))}
    rows = [(ids[p], ids[c], int(k not in SAME_GENERATION)) for p, c, k in triples]
    graph = LineageGraph.build(0, [(i, name) for name, i in ids.items()], rows)
    return dict(zip(graph.names, graph.generations.tolist(), strict=True))


def _bfs_depths(adjacency: csr_matrix, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Every node reachable from ``start`` in breadth-first order, and its distance.

    SciPy's breadth-first search gives the order and each node's parent in the search tree;
    a node's distance is its number of tree ancestors, counted for all nodes at once by pointer
    jumping (each round adds the distance of the node ``up`` points to, then doubles ``up``:
    log2(depth) rounds). 3x faster than ``shortest_path(unweighted=True)`` at 100,000 nodes.
    """
    order, tree_parent = breadth_first_order(
        adjacency, start, directed=True, return_predecessors=True
    )
    position = np.empty(adjacency.shape[0], dtype=np.int64)
    position[order] = np.arange(len(order))
    tree_parent = tree_parent[order]
    tree_parent[0] = start  # SciPy marks the start's missing parent -9999: point it at itself
    up = position[tree_parent]  # where each node's tree parent sits in ``order`` (start: 0)
    depth = np.ones(len(order), dtype=np.int64)
    depth[0] = 0
    while up.any():
        depth, up = depth + depth[up], up[up]
    return order, depth


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a result of up to 100,000 tuples is built: each 700
    new tuples would start one, and the older generations walk every object the process holds
    (measured on 99,000 descendants: 175 ms with collections, 33 ms without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---- the database side ------------------------------------------------------------------


def graph_version(s: Session) -> int:
    return int(s.scalar(select(RegistryStateRow.graph_version)) or 0)


def load_graph(s: Session) -> LineageGraph:
    """The graph as ``s`` sees it; the version is read first, so a write committed while
    loading can only make the copy look older than it is (and be loaded again)."""
    version = graph_version(s)
    # The driver's own rows: SQLAlchemy's Row objects cost 3x the read at 100,000 rows.
    cursor = s.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("SELECT id, name FROM models")
        models = cursor.fetchall()
        cursor.execute(
            "SELECT parent_id, child_id, CASE WHEN kind IN "
            f"({', '.join(repr(k) for k in SAME_GENERATION)}) THEN 0 ELSE 1 END FROM edges"
        )
        edges = cursor.fetchall()
    finally:
        cursor.close()
    return LineageGraph.build(version, models, edges)


# For a new edge parent -> child, by name: both ids, whether the edge would close a cycle (is the
# parent among the child's descendants), and whether it is there already. One statement, so one
# round trip under the write lock (statements built per call cost more CPU than the query). The
# walk goes down from the child, usually a new model without descendants; UNION keeps each model
# once, so it ends on an existing cycle too. Plain SQL: compiled once.
EDGE_CHECK = text(
    "WITH RECURSIVE p(id) AS (SELECT id FROM models WHERE name = :parent),"
    " c(id) AS (SELECT id FROM models WHERE name = :child),"
    " below(id) AS (SELECT e.child_id FROM edges e JOIN c ON e.parent_id = c.id"
    " UNION SELECT e.child_id FROM edges e JOIN below b ON e.parent_id = b.id)"
    " SELECT (SELECT id FROM p), (SELECT id FROM c),"
    " EXISTS (SELECT 1 FROM below WHERE id = (SELECT id FROM p)),"
    " EXISTS (SELECT 1 FROM edges WHERE parent_id = (SELECT id FROM p)"
    " AND child_id = (SELECT id FROM c) AND kind = :kind)"
)  # scalar subqueries, not joins: SQLite would plan a join against p/c with a table scan


class EdgeCheck(NamedTuple):
    parent_id: int | None  # None: no such model
    child_id: int | None
    cycle: bool
    duplicate: bool


def edge_check(s: Session, parent: str, child: str, kind: str) -> EdgeCheck:
    """What the registry, as ``s`` sees it, says about a new edge ``parent -> child``."""
    p, c, cycle, duplicate = s.execute(
        EDGE_CHECK, {"parent": parent, "child": child, "kind": kind}
    ).one()
    return EdgeCheck(p, c, bool(cycle), bool(duplicate))

"""The registry: models, domains, tokenizers and the inheritance edges between models
(evaluations, runs, plans, proximity and caches: ``lineage.registry.records``).

Every change runs in one transaction under the registry's write lock (``lineage.registry.db``:
SQLite ``BEGIN IMMEDIATE``, PostgreSQL an advisory transaction lock), so concurrent writers
wait instead of failing and no two of them can each pass a check the other's write breaks;
every read returns plain entities from ``lineage.registry.entities``. Paths are stored relative
to the storage root (``lineage.registry.locations``).
"""

# layout: longer than 500 lines because the registry's core API (models, edges, tokenizers,
# domains) stays one class; names are checked here, at its boundary.

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.files import check_name
from lineage.registry import entities as E
from lineage.registry.ancestry import Direction, LineageGraph, edge_check, load_graph
from lineage.registry.ancestry import graph_version as read_graph_version
from lineage.registry.db import (
    EDGE_KINDS,
    CacheRow,
    DomainRow,
    EdgeRow,
    EvaluationRow,
    ModelRow,
    PlanRow,
    RunRow,
    ShardRow,
    TokenizerRow,
    make_engine,
    utcnow,
)
from lineage.registry.locations import Locations
from lineage.registry.modelcard import check_hub_id
from lineage.registry.modelinfo import ModelInfo
from lineage.registry.records import RecordsMixin
from lineage.registry.reservations import ReservationsMixin, refuse_if_reserved
from lineage.registry.rows import (
    _domain,
    _domain_row,
    _edge,
    _edge_query,
    _model,
    _model_id,
    _model_ids,
    _model_row,
    _shard,
    _tokenizer,
)
from lineage.registry.schema import check_schema

# Core, built once: building an ORM insert per call cost more CPU than the database's work.
EDGE_INSERT = insert(EdgeRow.metadata.tables[EdgeRow.__tablename__]).returning(EdgeRow.id)


class Registry(RecordsMixin, ReservationsMixin):
    """Typed access to the registry database at ``url`` (SQLite or PostgreSQL); registered paths
    under ``storage_root`` are kept relative to it (None: as given)."""

    def __init__(
        self, url: str, *, upgrade_fresh: bool = True, storage_root: str | Path | None = None
    ) -> None:
        self.url = url
        self.locations = Locations(storage_root)
        self.engine = make_engine(url)
        self.schema_revision = check_schema(
            self.engine, upgrade_fresh=upgrade_fresh, storage_root=self.locations.root
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._outer: Session | None = None  # the session of an open `transaction()`
        self._graph: LineageGraph | None = None  # the last committed graph read

    def close(self) -> None:
        self.engine.dispose()
        self._graph = None

    @contextmanager
    def transaction(self) -> Iterator[Registry]:
        """Group several writes into one transaction: all of them, or none if anything raises.

        The transaction holds the registry's write lock from its start, so what it reads stays
        true until it commits. Inside, every call of this registry (reads too) runs in the one
        transaction, so it sees its own uncommitted rows; a nested ``transaction()`` joins the
        outer one.
        """
        if self._outer is not None:
            yield self
            return
        with self._write() as session:
            self._outer = session
            try:
                yield self
            finally:
                self._outer = None

    @contextmanager
    def _read(self) -> Iterator[Session]:
        if self._outer is not None:
            yield self._outer
            return
        with self._sessions() as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back (nothing changed) on any error."""
        if self._outer is not None:  # part of an enclosing transaction(): it commits
            yield self._outer
            return
        conn = self.engine.connect().execution_options(lineage_write=True)
        try:
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                session.connection()  # BEGIN now: the write lock is held from here on
                yield session
        except IntegrityError as exc:
            raise ConflictError(f"refused by the registry: {exc.orig}") from exc
        except OperationalError as exc:
            raise LineageError(f"registry database error: {exc.orig}") from exc
        finally:
            conn.close()

    # ---- models -------------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        path: str,
        info: ModelInfo,
        *,
        domains: Sequence[str] = (),
        description: str = "",
        hub_id: str | None = None,
        files: dict[str, Any] | None = None,
    ) -> E.Model:
        """Register a model; ``hub_id`` is its Hugging Face Hub id ("org/name") when it is
        published there (model cards then name it as a base model); ``files`` are its config
        and weights' digests (``model_files``)."""
        check_name(name, "model")
        if hub_id is not None:
            check_hub_id(hub_id)
        with self._write() as s:
            if s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                raise ConflictError(f"a model named {name!r} is already registered")
            refuse_if_reserved(s, "model", name)  # this job's reservation ends with the commit
            row = ModelRow(
                name=name,
                path=self.locations.store(path),
                family=info.family,
                objective=info.objective,
                layers=info.layers,
                d_model=info.d_model,
                heads=info.heads,
                d_ffn=info.d_ffn,
                vocab_size=info.vocab_size,
                n_params=info.n_params,
                tokenizer_fingerprint=info.tokenizer_fingerprint,
                domains=list(domains),
                description=description,
                hub_id=hub_id,
                files=files,
                kv_heads=info.kv_heads,
            )
            s.add(row)
            s.flush()
            return _model(row, self.locations)

    def model(self, name: str) -> E.Model:
        with self._read() as s:
            return _model(_model_row(s, name), self.locations)

    def models(self) -> list[E.Model]:
        with self._read() as s:
            rows = s.scalars(select(ModelRow).order_by(ModelRow.id))
            return [_model(r, self.locations) for r in rows]

    def has_model(self, name: str) -> bool:
        with self._read() as s:
            return s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None

    def update_model(self, name: str, **fields: Any) -> E.Model:
        allowed = {"path", "domains", "description", "hub_id"}
        if fields.get("hub_id") is not None:
            check_hub_id(fields["hub_id"])
        if unknown := set(fields) - allowed:
            raise LineageError(f"cannot update {sorted(unknown)}; updatable: {sorted(allowed)}")
        if "path" in fields:
            fields["path"] = self.locations.store(fields["path"])
        with self._write() as s:
            row = _model_row(s, name)
            for key, value in fields.items():
                setattr(row, key, value)
            return _model(row, self.locations)

    def record_model_files(self, name: str, files: dict[str, Any]) -> E.Model:
        """Record the checksums of a model registered before they were (``files`` None)."""
        with self._write() as s:
            row = _model_row(s, name)
            if row.files is not None:
                raise ConflictError(f"{name!r} has its checksums already")
            row.files = files
            return _model(row, self.locations)

    def remove_model(self, name: str, *, force: bool = False) -> None:
        """Remove a model and its edges; refused while other models derive from it."""
        with self._write() as s:
            row = _model_row(s, name)
            children = s.scalars(
                select(ModelRow.name)
                .join(EdgeRow, EdgeRow.child_id == ModelRow.id)
                .where(EdgeRow.parent_id == row.id)
            ).all()
            if children and not force:
                raise ConflictError(
                    f"{name!r} has descendants ({', '.join(sorted(set(children)))}); "
                    "remove them first or pass --force"
                )
            s.execute(
                delete(EdgeRow).where((EdgeRow.parent_id == row.id) | (EdgeRow.child_id == row.id))
            )
            s.execute(delete(EvaluationRow).where(EvaluationRow.model_id == row.id))
            s.delete(row)

    # ---- edges and lineage queries ------------------------------------------------------

    def add_edge(
        self,
        parent: str,
        child: str,
        kind: str,
        *,
        params: dict[str, Any] | None = None,
        mlflow_run_id: str | None = None,
    ) -> E.Edge:
        if kind not in EDGE_KINDS:
            raise LineageError(f"unknown edge kind {kind!r}; kinds: {', '.join(EDGE_KINDS)}")
        if parent == child:
            raise ConflictError(f"an edge from {parent!r} to itself is refused")
        with self._write() as s:  # holds the write lock: no other edge can slip in between
            p, c, cycle, duplicate = edge_check(s, parent, child, kind)
            for name, found in ((parent, p), (child, c)):
                if found is None:
                    raise NotFoundError(f"no model named {name!r} (see `lineage model list`)")
            if cycle:
                raise ConflictError(
                    f"edge {parent} -> {child} would make a cycle: "
                    f"{parent!r} descends from {child!r}"
                )
            if duplicate:
                raise ConflictError(f"edge {parent} -[{kind}]-> {child} already exists")
            params, created = dict(params or {}), utcnow()
            values: dict[str, Any] = {"parent_id": p, "child_id": c, "kind": kind, "params": params}
            values |= {"mlflow_run_id": mlflow_run_id, "created_at": created}
            edge_id = s.execute(EDGE_INSERT, values).scalar_one()
            return E.Edge(edge_id, parent, child, kind, params, mlflow_run_id, created)

    def edges(self, model: str | None = None) -> list[E.Edge]:
        """All edges, or those touching ``model``."""
        with self._read() as s:
            query = _edge_query()
            if model is not None:
                mid = _model_id(s, model)
                query = query.where((EdgeRow.parent_id == mid) | (EdgeRow.child_id == mid))
            return [_edge(*r) for r in s.execute(query.order_by(EdgeRow.id))]

    def remove_edge(self, parent: str, child: str, kind: str | None = None) -> int:
        """Remove the edges from ``parent`` to ``child`` (of ``kind``, else of every kind);
        returns how many. Refused when there is none."""
        with self._write() as s:
            p, c = _model_ids(s, parent, child)
            match = (EdgeRow.parent_id == p) & (EdgeRow.child_id == c)
            if kind is not None:
                match &= EdgeRow.kind == kind
            removed = len(s.execute(delete(EdgeRow).where(match).returning(EdgeRow.id)).all())
            if not removed:
                of_kind = f" of kind {kind}" if kind else ""
                raise NotFoundError(f"no edge {parent} -> {child}{of_kind}")
            return removed

    def parents(self, name: str) -> list[E.Related]:
        return self._neighbours(name, "ancestors")

    def children(self, name: str) -> list[E.Related]:
        return self._neighbours(name, "descendants")

    def _neighbours(self, name: str, direction: Direction) -> list[E.Related]:
        src, dst = (
            (EdgeRow.child_id, EdgeRow.parent_id)
            if direction == "ancestors"
            else (EdgeRow.parent_id, EdgeRow.child_id)
        )
        with self._read() as s:
            start = _model_id(s, name)
            found = s.scalars(
                select(ModelRow.name).join(EdgeRow, dst == ModelRow.id).where(src == start)
            )
            return [E.Related(n, 1) for n in sorted(set(found))]

    def ancestors(self, name: str) -> list[E.Related]:
        return self.related(name, "ancestors")

    def descendants(self, name: str) -> list[E.Related]:
        return self.related(name, "descendants")

    def related(self, name: str, direction: Direction) -> list[E.Related]:
        """Models reachable from ``name`` along edges, with their shortest distance (sorted by
        distance, then name)."""
        graph, node = self._graph_node(name)
        return graph.related(node, direction)

    def generation(self, name: str) -> int:
        """``name``'s generation (``LineageGraph.generations``): 1 without parents; a ki or grow
        parent puts it one generation later, an adapt or adapter parent in the same one (a
        one-line ``CycleError`` naming the cycle if one is among its ancestors)."""
        graph, node = self._graph_node(name)
        return graph.generation(node)

    def graph(self) -> LineageGraph:
        """The lineage graph as now committed (or as this open transaction sees it).

        One indexed read of ``graph_version`` tells whether the copy held from the last call is
        current; otherwise the models and edges are read again. A copy read inside a
        transaction may hold uncommitted rows, so only copies read outside one are kept.
        """
        with self._read() as s:
            version = read_graph_version(s)
            if self._graph is not None and self._graph.version == version:
                return self._graph
            graph = load_graph(s)
        if self._outer is None:
            self._graph = graph
        return graph

    def _graph_node(self, name: str) -> tuple[LineageGraph, int]:
        graph = self.graph()
        if name not in graph.index:
            self.model(name)  # the usual NotFoundError, unless it was added since the read
            graph = self.graph()
        return graph, graph.index[name]

    # ---- tokenizers ---------------------------------------------------------------------

    def add_tokenizer(
        self, name: str, path: str, fingerprint: str, vocab_size: int, params: dict[str, Any]
    ) -> E.Tokenizer:
        check_name(name, "tokenizer")
        with self._write() as s:
            if s.scalar(select(TokenizerRow.id).where(TokenizerRow.name == name)) is not None:
                raise ConflictError(f"a tokenizer named {name!r} is already registered")
            refuse_if_reserved(s, "tokenizer", name)
            row = TokenizerRow(
                name=name,
                path=self.locations.store(path),
                fingerprint=fingerprint,
                vocab_size=vocab_size,
                params=params,
            )
            s.add(row)
            s.flush()
            return _tokenizer(row, self.locations)

    def tokenizer(self, name: str) -> E.Tokenizer:
        with self._read() as s:
            row = s.scalar(select(TokenizerRow).where(TokenizerRow.name == name))
            if row is None:
                known = ", ".join(s.scalars(select(TokenizerRow.name))) or "none"
                raise NotFoundError(f"no tokenizer named {name!r} (registered: {known})")
            return _tokenizer(row, self.locations)

    def tokenizers(self) -> list[E.Tokenizer]:
        with self._read() as s:
            rows = s.scalars(select(TokenizerRow).order_by(TokenizerRow.id))
            return [_tokenizer(r, self.locations) for r in rows]

    # ---- domains and shards -------------------------------------------------------------

    def add_domain(
        self,
        name: str,
        *,
        description: str = "",
        sources: Sequence[Any] = (),
        card: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        content_digest: str | None = None,
        profile: dict[str, Any] | None = None,
        shards: Iterable[dict[str, Any]] = (),
    ) -> E.Domain:
        """Register a domain (and its text shards, streamed: each row is flushed and let go) in
        one transaction."""
        check_name(name, "domain")
        with self._write() as s:
            if s.scalar(select(DomainRow.id).where(DomainRow.name == name)) is not None:
                raise ConflictError(f"a domain named {name!r} is already registered")
            row = DomainRow(
                name=name,
                description=description,
                sources=list(sources),
                card=card or {},
                stats=stats or {},
                content_digest=content_digest,
                profile=profile,
            )
            s.add(row)
            s.flush()
            for shard in shards:
                stored = shard | {"path": self.locations.store(shard["path"])}
                s.add(ShardRow(domain_id=row.id, **stored))
                s.flush()
            return _domain(row)

    def update_domain(self, name: str, **fields: Any) -> E.Domain:
        allowed = {"description", "card", "stats", "profile", "content_digest"}
        if unknown := set(fields) - allowed:
            raise LineageError(f"cannot update {sorted(unknown)}; updatable: {sorted(allowed)}")
        with self._write() as s:
            row = _domain_row(s, name)
            for key, value in fields.items():
                setattr(row, key, value)
            return _domain(row)

    def domain(self, name: str) -> E.Domain:
        with self._read() as s:
            return _domain(_domain_row(s, name))

    def domains(self) -> list[E.Domain]:
        with self._read() as s:
            return [_domain(r) for r in s.scalars(select(DomainRow).order_by(DomainRow.id))]

    def shards(self, domain: str | None = None, split: str | None = None) -> list[E.Shard]:
        with self._read() as s:
            query = select(ShardRow, DomainRow.name).join(DomainRow).order_by(ShardRow.id)
            if domain is not None:
                query = query.where(ShardRow.domain_id == _domain_row(s, domain).id)
            if split is not None:
                query = query.where(ShardRow.split == split)
            return [_shard(r, d, self.locations) for r, d in s.execute(query)]

    def domain_usage(self, name: str) -> E.DomainUsage:
        """What refers to domain ``name`` (see ``DomainUsage``)."""
        with self._read() as s:
            return _usage(s, _domain_row(s, name), self.locations)

    def remove_domain(self, name: str, *, force: bool = False) -> E.DomainUsage:
        """Remove a domain with its shards and evaluations, in one transaction.

        Refused while plans, logit caches or running jobs use it, unless ``force``: then its
        plans and cache records go too and its running jobs are marked failed. Returns what it
        removed; the caller deletes the files (shards, caches).
        """
        with self._write() as s:
            row = _domain_row(s, name)
            usage = _usage(s, row, self.locations)
            if usage.in_use and not force:
                raise ConflictError(
                    f"domain {name!r} is in use by {usage.describe()}; pass --force to remove "
                    "them with it"
                )
            s.execute(delete(PlanRow).where(PlanRow.name.in_(usage.plans)))
            s.execute(delete(CacheRow).where(CacheRow.domain_id == row.id))
            for run in s.scalars(select(RunRow).where(RunRow.id.in_(usage.runs))):
                run.status, run.ended_at = "failed", utcnow()
                run.error = f"domain {name!r} was removed while this job used it"
            s.execute(delete(EvaluationRow).where(EvaluationRow.domain_id == row.id))
            s.execute(delete(ShardRow).where(ShardRow.domain_id == row.id))
            s.delete(row)
            s.flush()  # before a replacement row of the same name is inserted
            return usage

    def set_shard_profile(self, shard_id: int, profile: dict[str, Any]) -> None:
        with self._write() as s:
            row = s.get(ShardRow, shard_id)
            if row is None:
                raise NotFoundError(f"no shard with id {shard_id}")
            row.profile = profile


def _mentions(config: dict[str, Any], domain: str) -> bool:
    """Whether a job's configuration names ``domain`` (train, adapt, cache, grow jobs)."""
    named = [config.get("sample_domain"), config.get("domain")]
    for key in ("domains", "replay_domains"):
        value = config.get(key)
        named += value if isinstance(value, list) else []
    return domain in named


def _usage(s: Session, row: DomainRow, loc: Locations) -> E.DomainUsage:
    plans = [p.name for p in s.scalars(select(PlanRow)) if row.name in p.spec.get("domains", [])]
    stored = s.scalars(select(CacheRow.path).where(CacheRow.domain_id == row.id))
    caches = [loc.resolve(path) for path in stored]  # paths on this machine, to delete
    running = s.scalars(select(RunRow).where(RunRow.status == "running"))
    models = [m.name for m in s.scalars(select(ModelRow)) if row.name in (m.domains or [])]
    return E.DomainUsage(
        domain=row.name,
        plans=sorted(plans),
        caches=sorted(caches),
        runs=[r.id for r in running if _mentions(r.config or {}, row.name)],
        evaluations=s.scalar(
            select(func.count()).select_from(EvaluationRow).where(EvaluationRow.domain_id == row.id)
        )
        or 0,
        shards=s.scalar(
            select(func.count()).select_from(ShardRow).where(ShardRow.domain_id == row.id)
        )
        or 0,
        models=sorted(models),
    )


__all__ = ["Registry"]

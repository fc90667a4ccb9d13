"""The registry: models, domains, tokenizers and the inheritance edges between models
(evaluations, runs, plans, proximity and caches: ``lineage.registry.records``).

Every change runs in one transaction (SQLite: ``BEGIN IMMEDIATE``, so concurrent writers wait
instead of failing); every read returns plain entities from ``lineage.registry.entities``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.registry import entities as E
from lineage.registry.ancestry import (
    Direction,
    longest_chain,
    reachable_ids,
    reachable_subgraph,
    shortest_depths,
)
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
from lineage.registry.modelinfo import ModelInfo
from lineage.registry.records import RecordsMixin
from lineage.registry.rows import (
    _domain,
    _domain_row,
    _edge,
    _edge_query,
    _model,
    _model_row,
    _shard,
    _tokenizer,
)
from lineage.registry.schema import check_schema


class Registry(RecordsMixin):
    """Typed access to the registry database at ``url`` (any SQLAlchemy URL)."""

    def __init__(self, url: str, *, upgrade_fresh: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.schema_revision = check_schema(self.engine, upgrade_fresh=upgrade_fresh)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._outer: Session | None = None  # the session of an open `transaction()`

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Registry]:
        """Group several writes into one transaction: all of them, or none if anything raises.

        Inside, every call of this registry (reads too) runs in the one transaction, so it sees
        its own uncommitted rows; a nested ``transaction()`` joins the outer one.
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
    ) -> E.Model:
        with self._write() as s:
            if s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                raise ConflictError(f"a model named {name!r} is already registered")
            row = ModelRow(
                name=name,
                path=path,
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
            )
            s.add(row)
            s.flush()
            return _model(row)

    def model(self, name: str) -> E.Model:
        with self._read() as s:
            return _model(_model_row(s, name))

    def models(self) -> list[E.Model]:
        with self._read() as s:
            return [_model(r) for r in s.scalars(select(ModelRow).order_by(ModelRow.id))]

    def has_model(self, name: str) -> bool:
        with self._read() as s:
            return s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None

    def update_model(self, name: str, **fields: Any) -> E.Model:
        allowed = {"path", "domains", "description"}
        if unknown := set(fields) - allowed:
            raise LineageError(f"cannot update {sorted(unknown)}; updatable: {sorted(allowed)}")
        with self._write() as s:
            row = _model_row(s, name)
            for key, value in fields.items():
                setattr(row, key, value)
            return _model(row)

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
        with self._write() as s:
            p, c = _model_row(s, parent), _model_row(s, child)
            if p.id in reachable_ids(s, c.id, "descendants"):
                raise ConflictError(
                    f"edge {parent} -> {child} would make a cycle: "
                    f"{parent!r} descends from {child!r}"
                )
            dup = select(EdgeRow.id).where(
                EdgeRow.parent_id == p.id, EdgeRow.child_id == c.id, EdgeRow.kind == kind
            )
            if s.scalar(dup) is not None:
                raise ConflictError(f"edge {parent} -[{kind}]-> {child} already exists")
            row = EdgeRow(
                parent_id=p.id,
                child_id=c.id,
                kind=kind,
                params=params or {},
                mlflow_run_id=mlflow_run_id,
            )
            s.add(row)
            s.flush()
            return E.Edge(row.id, parent, child, kind, row.params, mlflow_run_id, row.created_at)

    def edges(self, model: str | None = None) -> list[E.Edge]:
        """All edges, or those touching ``model``."""
        with self._read() as s:
            query = _edge_query()
            if model is not None:
                mid = _model_row(s, model).id
                query = query.where((EdgeRow.parent_id == mid) | (EdgeRow.child_id == mid))
            return [_edge(*r) for r in s.execute(query.order_by(EdgeRow.id))]

    def parents(self, name: str) -> list[E.Related]:
        return [r for r in self.related(name, "ancestors") if r.depth == 1]

    def children(self, name: str) -> list[E.Related]:
        return [r for r in self.related(name, "descendants") if r.depth == 1]

    def ancestors(self, name: str) -> list[E.Related]:
        return self.related(name, "ancestors")

    def descendants(self, name: str) -> list[E.Related]:
        return self.related(name, "descendants")

    def related(self, name: str, direction: Direction) -> list[E.Related]:
        """Models reachable from ``name`` along edges, with their shortest distance.

        One recursive CTE finds the reachable set and the edges inside it; distances are then
        a breadth-first pass in memory (a CTE that carries depths multiplies rows on DAGs).
        """
        with self._read() as s:
            start = _model_row(s, name).id
            names, adjacency = reachable_subgraph(s, start, direction)
        depth = shortest_depths(start, adjacency)
        found = [E.Related(names[i], d) for i, d in depth.items() if i != start]
        return sorted(found, key=lambda r: (r.depth, r.name))

    def generation(self, name: str) -> int:
        """1 for a model with no parents, else 1 + the longest chain of ancestors."""
        with self._read() as s:
            start = _model_row(s, name).id
            _, parents = reachable_subgraph(s, start, "ancestors")
        return longest_chain(start, parents)

    # ---- tokenizers ---------------------------------------------------------------------

    def add_tokenizer(
        self, name: str, path: str, fingerprint: str, vocab_size: int, params: dict[str, Any]
    ) -> E.Tokenizer:
        with self._write() as s:
            if s.scalar(select(TokenizerRow.id).where(TokenizerRow.name == name)) is not None:
                raise ConflictError(f"a tokenizer named {name!r} is already registered")
            row = TokenizerRow(
                name=name, path=path, fingerprint=fingerprint, vocab_size=vocab_size, params=params
            )
            s.add(row)
            s.flush()
            return _tokenizer(row)

    def tokenizer(self, name: str) -> E.Tokenizer:
        with self._read() as s:
            row = s.scalar(select(TokenizerRow).where(TokenizerRow.name == name))
            if row is None:
                known = ", ".join(s.scalars(select(TokenizerRow.name))) or "none"
                raise NotFoundError(f"no tokenizer named {name!r} (registered: {known})")
            return _tokenizer(row)

    def tokenizers(self) -> list[E.Tokenizer]:
        with self._read() as s:
            return [
                _tokenizer(r) for r in s.scalars(select(TokenizerRow).order_by(TokenizerRow.id))
            ]

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
                s.add(ShardRow(domain_id=row.id, **shard))
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
            return [_shard(r, d) for r, d in s.execute(query)]

    def domain_usage(self, name: str) -> E.DomainUsage:
        """What refers to domain ``name`` (see ``DomainUsage``)."""
        with self._read() as s:
            return _usage(s, _domain_row(s, name))

    def remove_domain(self, name: str, *, force: bool = False) -> E.DomainUsage:
        """Remove a domain with its shards and evaluations, in one transaction.

        Refused while plans, logit caches or running jobs use it, unless ``force``: then its
        plans and cache records go too and its running jobs are marked failed. Returns what it
        removed; the caller deletes the files (shards, caches).
        """
        with self._write() as s:
            row = _domain_row(s, name)
            usage = _usage(s, row)
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


def _usage(s: Session, row: DomainRow) -> E.DomainUsage:
    plans = [p.name for p in s.scalars(select(PlanRow)) if row.name in p.spec.get("domains", [])]
    caches = list(s.scalars(select(CacheRow.path).where(CacheRow.domain_id == row.id)))
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

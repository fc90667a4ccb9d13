"""The registry's records of work done: evaluations, runs, plans, proximity matrices and logit
caches (a mixin of ``Registry``, which owns the sessions)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.files import check_name
from lineage.owners import current_owner
from lineage.registry import entities as E
from lineage.registry.db import (
    RUN_STATUSES,
    CacheRow,
    DomainRow,
    EvaluationRow,
    ModelRow,
    PlanRow,
    ProximityRow,
    RunRow,
    utcnow,
)
from lineage.registry.locations import Locations
from lineage.registry.rows import _domain_row, _evaluation, _model_row, _run


class RecordsMixin:
    """Evaluations, runs, plans, proximity and caches; every call is one transaction (see
    ``Registry``)."""

    if TYPE_CHECKING:  # provided by Registry
        locations: Locations

        def _read(self) -> AbstractContextManager[Session]: ...

        def _write(self) -> AbstractContextManager[Session]: ...

    def add_evaluation(
        self,
        model: str,
        domain: str,
        *,
        loss: float,
        ppl: float,
        step: int = 0,
        n_tokens: int = 0,
        mlflow_run_id: str | None = None,
        protocol: E.EvalProtocol | None = None,
    ) -> E.Evaluation:
        """Record a perplexity; ``protocol``: the blocks it was measured on (comparisons and
        reuse of measurements go by it)."""
        with self._write() as s:
            row = EvaluationRow(
                model_id=_model_row(s, model).id,
                domain_id=_domain_row(s, domain).id,
                step=step,
                loss=loss,
                ppl=ppl,
                n_tokens=n_tokens,
                mlflow_run_id=mlflow_run_id,
                n_blocks=None if protocol is None else protocol.n_blocks,
                block_size=None if protocol is None else protocol.block_size,
                sample_digest=None if protocol is None else protocol.sample_digest,
            )
            s.add(row)
            s.flush()
            return _evaluation(row, model, domain)

    def evaluations(
        self, model: str | None = None, domain: str | None = None
    ) -> list[E.Evaluation]:
        with self._read() as s:
            query = (
                select(EvaluationRow, ModelRow.name, DomainRow.name)
                .join(ModelRow, ModelRow.id == EvaluationRow.model_id)
                .join(DomainRow, DomainRow.id == EvaluationRow.domain_id)
                .order_by(EvaluationRow.id)
            )
            if model is not None:
                query = query.where(ModelRow.name == model)
            if domain is not None:
                query = query.where(DomainRow.name == domain)
            return [_evaluation(r, m, d) for r, m, d in s.execute(query)]

    def start_run(
        self,
        kind: str,
        *,
        mlflow_run_id: str | None = None,
        config: dict[str, Any] | None = None,
        plan_id: int | None = None,
    ) -> E.Run:
        with self._write() as s:
            me = current_owner()
            row = RunRow(
                kind=kind, mlflow_run_id=mlflow_run_id, config=config or {}, plan_id=plan_id,
                owner_pid=me.pid, owner_host=me.host, owner_started=me.started,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return _run(row, None)

    def finish_run(
        self, run_id: int, *, status: str, model: str | None = None, error: str | None = None
    ) -> E.Run:
        """End a run: ``finished``, ``failed`` (with its ``error``) or ``killed``."""
        if status not in RUN_STATUSES:
            raise LineageError(f"run status must be one of {', '.join(RUN_STATUSES)}")
        with self._write() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFoundError(f"no run with id {run_id}")
            row.status, row.ended_at, row.error = status, utcnow(), error
            if model is not None:
                row.model_id = _model_row(s, model).id
            return _run(row, model)

    def reopen_run(self, mlflow_run_id: str) -> E.Run | None:
        """Mark the run of ``mlflow_run_id`` running again (a resumed job); None if unknown."""
        with self._write() as s:
            row = s.scalar(select(RunRow).where(RunRow.mlflow_run_id == mlflow_run_id))
            if row is None:
                return None
            row.status, row.ended_at, row.error = "running", None, None
            me = current_owner()
            row.owner_pid, row.owner_host, row.owner_started = me.pid, me.host, me.started
            return _run(row, None)

    def runs(self) -> list[E.Run]:
        with self._read() as s:
            query = select(RunRow, ModelRow.name).outerjoin(ModelRow).order_by(RunRow.id)
            return [_run(r, m) for r, m in s.execute(query)]

    def add_plan(self, name: str, student: str, spec: dict[str, Any]) -> E.Plan:
        check_name(name, "plan")
        with self._write() as s:
            if s.scalar(select(PlanRow.id).where(PlanRow.name == name)) is not None:
                raise ConflictError(f"a plan named {name!r} already exists")
            row = PlanRow(name=name, student_id=_model_row(s, student).id, spec=spec)
            s.add(row)
            s.flush()
            return E.Plan(row.id, name, student, spec, row.created_at)

    def plan(self, name_or_id: str | int) -> E.Plan:
        with self._read() as s:
            query = select(PlanRow, ModelRow.name).join(ModelRow, ModelRow.id == PlanRow.student_id)
            key = str(name_or_id)
            cond = PlanRow.id == int(key) if key.isdigit() else PlanRow.name == key
            found = s.execute(query.where(cond)).first()
            if found is None:
                raise NotFoundError(f"no plan {name_or_id!r} (see `lineage plan list`)")
            row, student = found
            return E.Plan(row.id, row.name, student, row.spec, row.created_at)

    def plans(self) -> list[E.Plan]:
        with self._read() as s:
            query = select(PlanRow, ModelRow.name).join(ModelRow, ModelRow.id == PlanRow.student_id)
            return [E.Plan(r.id, r.name, m, r.spec, r.created_at) for r, m in s.execute(query)]

    def save_proximity(
        self, measure: str, params: dict[str, Any], domains: list[str], matrix: list[list[float]]
    ) -> None:
        with self._write() as s:
            s.add(ProximityRow(measure=measure, params=params, domains=domains, matrix=matrix))

    def latest_proximity(self, measure: str) -> tuple[list[str], list[list[float]]] | None:
        with self._read() as s:
            row = s.scalar(
                select(ProximityRow)
                .where(ProximityRow.measure == measure)
                .order_by(ProximityRow.id.desc())
                .limit(1)
            )
            return None if row is None else (list(row.domains), [list(r) for r in row.matrix])

    def add_cache(
        self, path: str, teacher: str, top_k: int, manifest: dict[str, Any], domain: str | None
    ) -> E.Cache:
        stored = self.locations.store(path)
        with self._write() as s:
            s.execute(delete(CacheRow).where(CacheRow.path == stored))  # a rebuild replaces it
            row = CacheRow(
                path=stored,
                teacher_id=_model_row(s, teacher).id,
                top_k=top_k,
                manifest=manifest,
                domain_id=None if domain is None else _domain_row(s, domain).id,
            )
            s.add(row)
            s.flush()
            return E.Cache(
                row.id,
                self.locations.resolve(stored),
                teacher,
                domain,
                top_k,
                manifest,
                row.created_at,
            )

    def caches(self, teacher: str | None = None) -> list[E.Cache]:
        with self._read() as s:
            query = (
                select(CacheRow, ModelRow.name, DomainRow.name)
                .join(ModelRow, ModelRow.id == CacheRow.teacher_id)
                .outerjoin(DomainRow, DomainRow.id == CacheRow.domain_id)
                .order_by(CacheRow.id)
            )
            if teacher is not None:
                query = query.where(ModelRow.name == teacher)
            resolve = self.locations.resolve
            return [
                E.Cache(r.id, resolve(r.path), t, d, r.top_k, r.manifest, r.created_at)
                for r, t, d in s.execute(query)
            ]

"""The registry's ORM side: rows looked up by name, and rows turned into plain entities.

Private to ``lineage.registry``: ORM rows never leave the store, callers get
``lineage.registry.entities``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from lineage.errors import NotFoundError
from lineage.registry import entities as E
from lineage.registry.db import (
    DomainRow,
    EdgeRow,
    EvaluationRow,
    ModelRow,
    RunRow,
    ShardRow,
    TokenizerRow,
)
from lineage.registry.locations import Locations


def _model_row(s: Session, name: str) -> ModelRow:
    row = s.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        raise NotFoundError(f"no model named {name!r} (see `lineage model list`)")
    return row


def _model_id(s: Session, name: str) -> int:
    return _model_ids(s, name)[0]


def _model_ids(s: Session, *names: str) -> tuple[int, ...]:
    """The ids of ``names`` in one query (NotFoundError for the first unknown one)."""
    found = dict(
        s.execute(select(ModelRow.name, ModelRow.id).where(ModelRow.name.in_(names))).all()
    )
    for name in names:
        if name not in found:
            raise NotFoundError(f"no model named {name!r} (see `lineage model list`)")
    return tuple(found[name] for name in names)


def _domain_row(s: Session, name: str) -> DomainRow:
    row = s.scalar(select(DomainRow).where(DomainRow.name == name))
    if row is None:
        known = ", ".join(s.scalars(select(DomainRow.name))) or "none"
        raise NotFoundError(f"no domain named {name!r} (registered: {known})")
    return row


def _edge_query() -> Select[Any]:
    parent = select(ModelRow.id, ModelRow.name).subquery("parent")
    child = select(ModelRow.id, ModelRow.name).subquery("child")
    return (
        select(EdgeRow, parent.c.name, child.c.name)
        .join(parent, parent.c.id == EdgeRow.parent_id)
        .join(child, child.c.id == EdgeRow.child_id)
    )


def _edge(row: EdgeRow, parent: str, child: str) -> E.Edge:
    return E.Edge(
        row.id, parent, child, row.kind, dict(row.params), row.mlflow_run_id, row.created_at
    )


def _model(r: ModelRow, loc: Locations) -> E.Model:
    return E.Model(
        r.id,
        r.name,
        loc.resolve(r.path),
        r.family,
        r.objective,
        r.layers,
        r.d_model,
        r.heads,
        r.d_ffn,
        r.vocab_size,
        r.n_params,
        r.tokenizer_fingerprint,
        list(r.domains),
        r.description,
        r.created_at,
        r.hub_id,
        r.files,
        r.kv_heads,
    )


def _tokenizer(r: TokenizerRow, loc: Locations) -> E.Tokenizer:
    return E.Tokenizer(
        r.id, r.name, loc.resolve(r.path), r.fingerprint, r.vocab_size, dict(r.params), r.created_at
    )


def _domain(r: DomainRow) -> E.Domain:
    return E.Domain(
        r.id,
        r.name,
        r.description,
        list(r.sources),
        dict(r.card),
        dict(r.stats),
        r.content_digest,
        r.profile,
        r.created_at,
    )


def _shard(r: ShardRow, domain: str, loc: Locations) -> E.Shard:
    return E.Shard(
        r.id,
        domain,
        r.name,
        r.split,
        loc.resolve(r.path),
        r.n_bytes,
        r.n_documents,
        r.digest,
        r.profile,
    )


def _evaluation(r: EvaluationRow, model: str, domain: str) -> E.Evaluation:
    return E.Evaluation(
        r.id,
        model,
        domain,
        r.step,
        r.loss,
        r.ppl,
        r.n_tokens,
        r.mlflow_run_id,
        r.created_at,
        r.n_blocks,
        r.block_size,
        r.sample_digest,
    )


def _run(r: RunRow, model: str | None) -> E.Run:
    return E.Run(
        r.id,
        r.mlflow_run_id,
        r.kind,
        r.status,
        model,
        r.plan_id,
        dict(r.config),
        r.started_at,
        r.ended_at,
        r.error,
    )

"""Plain, frozen records the registry hands out (ORM rows never leave the store)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple


class _Record:
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


@dataclass(frozen=True)
class Tokenizer(_Record):
    id: int
    name: str
    path: str
    fingerprint: str
    vocab_size: int
    params: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Domain(_Record):
    id: int
    name: str
    description: str
    sources: list[Any]
    card: dict[str, Any]
    stats: dict[str, Any]
    content_digest: str | None
    profile: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True)
class Shard(_Record):
    id: int
    domain: str
    name: str
    split: str
    path: str
    n_bytes: int
    n_documents: int
    digest: str
    profile: dict[str, Any] | None


@dataclass(frozen=True)
class Model(_Record):
    id: int
    name: str
    path: str
    family: str
    objective: str
    layers: int
    d_model: int
    heads: int
    d_ffn: int
    vocab_size: int
    n_params: int
    tokenizer_fingerprint: str | None
    domains: list[Any]
    description: str
    created_at: datetime
    hub_id: str | None = None  # its Hugging Face Hub id, when it was published there
    files: dict[str, Any] | None = None  # name -> {sha256, size, mtime_ns} at registration
    kv_heads: int | None = None  # key/value heads (< heads: grouped-query attention)


@dataclass(frozen=True)
class Edge(_Record):
    id: int
    parent: str
    child: str
    kind: str
    params: dict[str, Any]
    mlflow_run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class Evaluation(_Record):
    id: int
    model: str
    domain: str
    step: int
    loss: float
    ppl: float
    n_tokens: int
    mlflow_run_id: str | None
    created_at: datetime
    n_blocks: int | None = None  # the protocol: blocks scored (None: recorded before it was)
    block_size: int | None = None  # tokens per block
    sample_digest: str | None = None  # sha256 of the scored blocks' token ids

    @property
    def protocol(self) -> EvalProtocol | None:
        if self.n_blocks is None or self.block_size is None or self.sample_digest is None:
            return None
        return EvalProtocol(self.n_blocks, self.block_size, self.sample_digest)


@dataclass(frozen=True)
class EvalProtocol(_Record):
    """What an evaluation scored: perplexities compare only under the same protocol (the same
    token blocks: their count, size and digest; ``lineage.models.evaluation.protocol_of``)."""

    n_blocks: int
    block_size: int
    sample_digest: str

    def short(self) -> str:
        return f"{self.n_blocks}x{self.block_size} {self.sample_digest[:8]}"


def comparable(
    evaluations: Iterable[Evaluation], models: Collection[str] | None = None
) -> dict[tuple[str, str], Evaluation]:
    """(model, domain) -> the evaluation to compare, like with like: per domain, the protocol
    under which the most of ``models`` (default: all) were evaluated (ties: more blocks, then
    the newest), and each model's latest evaluation under it. A model evaluated on the domain
    only on other blocks is left out rather than compared with numbers from other blocks;
    evaluations recorded before protocols were (None) form one group of their own."""
    by_domain: dict[str, list[Evaluation]] = {}
    for e in evaluations:
        if models is None or e.model in models:
            by_domain.setdefault(e.domain, []).append(e)
    out: dict[tuple[str, str], Evaluation] = {}
    for domain, evals in by_domain.items():
        groups: dict[EvalProtocol | None, list[Evaluation]] = {}
        for e in evals:
            groups.setdefault(e.protocol, []).append(e)
        best = max(
            groups.items(),
            key=lambda g: (
                len({e.model for e in g[1]}),
                g[0].n_blocks if g[0] is not None else 0,
                max(e.id for e in g[1]),
            ),
        )[1]
        for e in sorted(best, key=lambda e: e.id):
            out[(e.model, domain)] = e
    return out


@dataclass(frozen=True)
class Run(_Record):
    id: int
    mlflow_run_id: str | None
    kind: str
    status: str
    model: str | None
    plan_id: int | None
    config: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None
    error: str | None = None


@dataclass(frozen=True)
class Plan(_Record):
    id: int
    name: str
    student: str
    spec: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Cache(_Record):
    id: int
    path: str
    teacher: str
    domain: str | None
    top_k: int
    manifest: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class DomainUsage(_Record):
    """What refers to a domain: ``plans``, ``caches`` (their paths) and running jobs (``runs``,
    ids) hold it in use; ``evaluations`` and ``shards`` go with it; ``models`` trained on it
    keep its name in their history."""

    domain: str
    plans: list[str]
    caches: list[str]
    runs: list[int]
    evaluations: int
    shards: int
    models: list[str]

    @property
    def in_use(self) -> bool:
        return bool(self.plans or self.caches or self.runs)

    def describe(self) -> str:
        """``3 plans (a, b, c), 2 caches, 1 running job``: what holds the domain in use."""
        parts = []
        if self.plans:
            parts.append(f"{len(self.plans)} plan(s) ({', '.join(self.plans)})")
        if self.caches:
            parts.append(f"{len(self.caches)} logit cache(s)")
        if self.runs:
            parts.append(
                f"{len(self.runs)} running job(s) (run ids {', '.join(map(str, self.runs))})"
            )
        return ", ".join(parts)


class Related(NamedTuple):
    """A model reached by a lineage query, with its distance in edges (a named tuple: a query
    can return 100,000 of them, and a tuple is made several times faster than a dataclass)."""

    name: str
    depth: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

"""The registry's tables (SQLAlchemy 2 typed ORM) and the engine that serves them.

ORM rows never leave ``lineage.registry``: callers get the plain entities of
``lineage.registry.entities``. The schema changes only through the Alembic migrations in
``migrations/``.

**The write lock.** Every transaction that writes (a connection with the execution option
``lineage_write=True``: ``Registry.transaction()`` and every ``Registry`` write, and the
migrations) first takes the registry's one write lock, so the invariants that span rows — no
cycle among the edges, unique names checked with a clear message, the schema revision — are
checked and written by one writer at a time, whatever the backend:

- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock when the transaction begins;
- PostgreSQL: ``pg_advisory_xact_lock(WRITE_LOCK_KEY)`` as the transaction's first statement;
  PostgreSQL releases it at COMMIT or ROLLBACK, also when the client dies. Each later statement
  of the transaction (READ COMMITTED) sees every write committed before the lock was granted.

Row locks would not do: the cycle check reads the *absence* of a path, which no row lock
covers, and SERIALIZABLE would make every caller retry. Writers wait up to 30 s for the lock
(SQLite's busy timeout, PostgreSQL's ``lock_timeout``), then fail with a clear error. Readers
never wait.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.engine import make_url as parse_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lineage.errors import LineageError

EDGE_KINDS = ("ki", "grow", "adapt", "adapter")
RUN_STATUSES = ("running", "finished", "failed", "killed")
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


BACKENDS = ("sqlite", "postgresql")
WRITE_LOCK_KEY = int.from_bytes(b"lineage", "big")  # the advisory lock's 64-bit key
LOCK_WAIT_S = 30


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores text without an offset, so values are
    converted to UTC before they are written and read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime,
    }


class TokenizerRow(Base):
    __tablename__ = "tokenizers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    vocab_size: Mapped[int]
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DomainRow(Base):
    __tablename__ = "domains"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    sources: Mapped[list[Any]] = mapped_column(default=list)
    card: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # bytes, documents, words, split
    content_digest: Mapped[str | None] = mapped_column(String(64))
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShardRow(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(16))  # "train" | "valid"
    path: Mapped[str] = mapped_column(Text)
    n_bytes: Mapped[int]
    n_documents: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64))
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    family: Mapped[str] = mapped_column(String(64))
    objective: Mapped[str] = mapped_column(String(8))
    layers: Mapped[int]
    d_model: Mapped[int]
    heads: Mapped[int]
    d_ffn: Mapped[int]
    vocab_size: Mapped[int]
    n_params: Mapped[int]
    tokenizer_fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    domains: Mapped[list[Any]] = mapped_column(default=list)  # names of domains trained on
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    hub_id: Mapped[str | None] = mapped_column(String(200))  # e.g. "org/name" on the HF Hub
    # file name -> {sha256, size, mtime_ns} of config and weights at registration (None: older)
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    kv_heads: Mapped[int | None] = mapped_column(Integer)  # key/value heads (GQA); None: older


class EdgeRow(Base):
    __tablename__ = "edges"
    __table_args__ = (
        UniqueConstraint("parent_id", "child_id", "kind"),
        CheckConstraint("parent_id <> child_id", name="no_self_edge"),
        CheckConstraint(f"kind IN {EDGE_KINDS!r}", name="kind"),
        Index("ix_edges_child_parent", "child_id", "parent_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    child_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_model_domain", "model_id", "domain_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float] = mapped_column(Float)
    ppl: Mapped[float] = mapped_column(Float)
    n_tokens: Mapped[int] = mapped_column(Integer, default=0)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The protocol (None: recorded before 0008): blocks scored, their size, sha256 of their ids.
    n_blocks: Mapped[int | None] = mapped_column(Integer)
    block_size: Mapped[int | None] = mapped_column(Integer)
    sample_digest: Mapped[str | None] = mapped_column(String(64))


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # train, ki, grow, adapt, cache, eval, demo
    status: Mapped[str] = mapped_column(String(16), default="running")
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id", ondelete="SET NULL"))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)  # why a failed run failed
    # the process that runs it (lineage.owners): a RUNNING run whose process is gone is stale
    owner_pid: Mapped[int | None]
    owner_host: Mapped[str | None] = mapped_column(String(255))
    owner_started: Mapped[int | None] = mapped_column(BigInteger)


class ReservationRow(Base):
    """An output name taken by a running job (``lineage.registry.reservations``): no other job
    may write or register that name until the job registers it (the row goes in the same
    transaction) or its process is gone (a later job takes the row over and cleans up)."""

    __tablename__ = "reservations"
    __table_args__ = (UniqueConstraint("kind", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "model" (models, adapters) or "tokenizer"
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)  # the folder the job publishes
    job: Mapped[str] = mapped_column(String(32))  # train, grow, create, tokenizer, ...
    owner_pid: Mapped[int]
    owner_host: Mapped[str] = mapped_column(String(255))
    owner_started: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PlanRow(Base):
    __tablename__ = "plans"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProximityRow(Base):
    __tablename__ = "proximity"
    id: Mapped[int] = mapped_column(primary_key=True)
    measure: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    domains: Mapped[list[Any]] = mapped_column(default=list)
    matrix: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CacheRow(Base):
    __tablename__ = "caches"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    top_k: Mapped[int]
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegistryStateRow(Base):
    """One row: ``graph_version`` changes (by database triggers, see migration 0004) whenever a
    model or an edge is inserted, deleted or renamed, so a reader can tell whether the lineage
    graph it holds in memory is still current with one indexed read."""

    __tablename__ = "registry_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    graph_version: Mapped[int] = mapped_column(BigInteger, default=0)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` whose writers take the registry's write lock (module docstring)."""
    backend = parse_url(url).get_backend_name()
    if backend not in BACKENDS:
        raise LineageError(
            f"registry URL {url.split('://')[0]}://…: lineage's registry runs on "
            f"{' or '.join(BACKENDS)} (its write lock is made for those two)"
        )
    if backend == "postgresql":
        return _postgresql_engine(url)
    engine = create_engine(url, connect_args={"timeout": LOCK_WAIT_S})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself, so writers can take the lock up front (below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A deferred transaction that reads then writes can fail at once with "database is
        # locked" (no busy wait on lock upgrade); writers therefore BEGIN IMMEDIATE.
        immediate = conn.get_execution_options().get("lineage_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgresql_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _lock_timeout(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{LOCK_WAIT_S}s'")
        dbapi_conn.commit()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if conn.get_execution_options().get("lineage_write", False):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")

    return engine

"""Exclusive outputs: a job reserves its output name in the registry before it writes anything.

A reservation is a row (kind, name) naming the folder the job will publish and the process that
owns it (``lineage.owners``). The unique (kind, name) constraint and the registry's write lock
make taking one race-free on SQLite and PostgreSQL: of two jobs with the same output, one gets
the row and the other is refused at once. The job writes under a temporary name, publishes its
folder (a rename), then registers the result in one transaction that also deletes the
reservation (``Registry.add_model`` / ``add_tokenizer``): a kill at any point leaves either the
registered result or a reservation whose owner is gone. The next job for that name (a rerun, or
``train --resume``) takes such a stale reservation over: it deletes the unregistered folder and
temporary siblings the dead job left, marks that job's RUNNING runs failed, and starts afresh.
Reservations are not models: listings, routing and teacher choice never see them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lineage.errors import ConflictError
from lineage.files import check_name
from lineage.owners import Owner, current_owner, liveness
from lineage.registry.db import ModelRow, ReservationRow, RunRow, TokenizerRow, utcnow
from lineage.registry.locations import Locations

KINDS: dict[str, type[ModelRow] | type[TokenizerRow]] = {
    "model": ModelRow,
    "tokenizer": TokenizerRow,
}


def is_registered(s: Session, kind: str, name: str) -> bool:
    table = KINDS[kind]
    return s.scalar(select(table.id).where(table.name == name)) is not None


@dataclass(frozen=True)
class Reservation:
    kind: str
    name: str
    path: str
    job: str
    owner: Owner
    taken_over: bool = False  # it was a dead job's: its leftovers were to be cleaned up
    stale_runs: tuple[str, ...] = field(default=())  # MLflow ids of that job's runs, now failed


@dataclass(frozen=True)
class RunningRun:
    id: int
    kind: str
    mlflow_run_id: str | None
    owner: Owner


def owner_of(row: ReservationRow | RunRow) -> Owner:
    return Owner(int(row.owner_pid or 0), str(row.owner_host or ""), row.owner_started)


def fail_stale_runs(s: Session, owner: Owner, why: str) -> list[str]:
    """Mark ``owner``'s RUNNING runs failed (its process is gone); their MLflow run ids."""
    query = select(RunRow).where(RunRow.status == "running")
    if owner.pid:
        query = query.where(RunRow.owner_pid == owner.pid, RunRow.owner_host == owner.host)
    else:  # runs started before owners were recorded
        query = query.where(RunRow.owner_pid.is_(None))
    ids = []
    for run in s.scalars(query):
        run.status, run.ended_at, run.error = "failed", utcnow(), why
        ids.append(run.mlflow_run_id) if run.mlflow_run_id else None
    return ids


def refuse_if_reserved(s: Session, kind: str, name: str) -> None:
    """Inside a registering transaction: a live reservation of ``name`` by another process
    refuses it; one of this process (or of a dead one) is deleted with the commit."""
    row = s.scalar(
        select(ReservationRow).where(ReservationRow.kind == kind, ReservationRow.name == name)
    )
    if row is None:
        return
    owner = owner_of(row)
    if owner != current_owner() and liveness(owner) != "gone":
        raise ConflictError(_taken(row, owner))
    s.delete(row)


def _taken(row: ReservationRow, owner: Owner) -> str:
    since = row.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{row.kind} name {row.name!r} is taken by a running `{row.job}` job ({owner.describe()}, "
        f"since {since}); wait for it, or choose another name"
    )


class ReservationsMixin:
    """``Registry``'s reservations (the methods need its sessions and locations)."""

    locations: Locations

    if TYPE_CHECKING:

        def _read(self) -> AbstractContextManager[Session]: ...

        def _write(self) -> AbstractContextManager[Session]: ...

    def reserve_output(
        self, name: str, path: str | Path, *, job: str, kind: str = "model"
    ) -> Reservation:
        """Reserve ``name`` for this process, or take over a dead job's reservation of it;
        refused (ConflictError, at once) when it is registered or a live job holds it."""
        check_name(name, kind)
        me = current_owner()
        with self._write() as s:
            if is_registered(s, kind, name):
                raise ConflictError(f"a {kind} named {name!r} is already registered")
            row = s.scalar(
                select(ReservationRow).where(
                    ReservationRow.kind == kind, ReservationRow.name == name
                )
            )
            stale: list[str] = []
            if row is not None:
                owner = owner_of(row)
                if owner != me and liveness(owner) != "gone":
                    raise ConflictError(_taken(row, owner))
                why = f"its process ({owner.describe()}) is gone; {name!r} was taken over"
                stale = fail_stale_runs(s, owner, why) if owner != me else []
                s.delete(row)
                s.flush()
            stored = self.locations.store(path)
            s.add(
                ReservationRow(
                    kind=kind, name=name, path=stored, job=job,
                    owner_pid=me.pid, owner_host=me.host, owner_started=me.started,
                )
            )  # fmt: skip
            return Reservation(kind, name, str(path), job, me, row is not None, tuple(stale))

    def release_output(self, name: str, *, kind: str = "model") -> None:
        """Drop this process's reservation of ``name`` (none: nothing to do)."""
        me = current_owner()
        with self._write() as s:
            s.execute(
                delete(ReservationRow).where(
                    ReservationRow.kind == kind,
                    ReservationRow.name == name,
                    ReservationRow.owner_pid == me.pid,
                    ReservationRow.owner_host == me.host,
                )
            )

    def reservations(self) -> list[Reservation]:
        with self._read() as s:
            rows = s.scalars(select(ReservationRow).order_by(ReservationRow.id))
            return [
                Reservation(r.kind, r.name, self.locations.resolve(r.path), r.job, owner_of(r))
                for r in rows
            ]

    def fail_dead_runs(self, *, hosts: str = "this") -> list[str]:
        """Mark failed every RUNNING run whose process is gone (this host's; with
        ``hosts="all"`` other hosts' too, which cannot be checked from here); their MLflow ids.
        Every job does this when it starts, so a killed job's run does not stay RUNNING."""
        me = current_owner()
        with self._write() as s:
            running = s.scalars(select(RunRow).where(RunRow.status == "running"))
            dead = {
                owner
                for owner in map(owner_of, running)
                if owner != me
                and (
                    (owner.pid and liveness(owner) == "gone")
                    or (hosts == "all" and (not owner.pid or liveness(owner) == "elsewhere"))
                )
            }
            ids: list[str] = []
            for owner in dead:
                ids += fail_stale_runs(s, owner, f"its process ({owner.describe()}) is gone")
            return ids

    def running_runs(self) -> list[RunningRun]:
        """RUNNING runs with the process that runs them (pid 0: not recorded)."""
        with self._read() as s:
            rows = s.scalars(select(RunRow).where(RunRow.status == "running").order_by(RunRow.id))
            return [RunningRun(r.id, r.kind, r.mlflow_run_id, owner_of(r)) for r in rows]

    def drop_reservation(self, name: str, *, kind: str = "model") -> list[str]:
        """Delete a dead job's reservation and fail its RUNNING runs (``db check --repair``);
        returns those runs' MLflow ids."""
        with self._write() as s:
            row = s.scalar(
                select(ReservationRow).where(
                    ReservationRow.kind == kind, ReservationRow.name == name
                )
            )
            if row is None:
                return []
            owner = owner_of(row)
            s.delete(row)
            return fail_stale_runs(s, owner, f"its process ({owner.describe()}) is gone")


def leftovers(folder: Path) -> list[Path]:
    """What a killed job writing ``folder`` may have left: the folder itself and its temporary
    siblings (``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.*.partial``)."""
    parent, name = folder.parent, folder.name
    found = [folder] if folder.exists() else []
    if parent.is_dir():
        for pattern in (f".{name}.tmp-*", f".{name}.old-*", f".{name}.*.partial"):
            found += sorted(parent.glob(pattern))
    return found


def remove_paths(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def take_output(
    reg: ReservationsMixin, name: str, folder: Path, *, job: str, kind: str = "model"
) -> Reservation:
    """Reserve ``name`` (publishing to ``folder``) for this process. Taking over a dead job's
    reservation first deletes what it left; a folder already there without a reservation (no
    lineage job that reserved it wrote it) is refused."""
    res = reg.reserve_output(name, folder, job=job, kind=kind)
    if res.taken_over:
        remove_paths(leftovers(folder))
    elif folder.exists():
        reg.release_output(name, kind=kind)
        raise ConflictError(
            f"{folder} already exists but no {kind} {name!r} is registered; remove it (or run "
            "`lineage db check --repair`) or choose another name"
        )
    return res


@contextmanager
def holding(reg: ReservationsMixin, res: Reservation, folder: Path) -> Iterator[Reservation]:
    """Hold ``res`` for the block: if it raises, the unregistered folder and temporaries are
    deleted and the name released; registering the result (in the block) releases it with the
    same commit."""
    try:
        yield res
    except BaseException:
        try:
            if not _registered(reg, res.kind, res.name):
                remove_paths(leftovers(folder))
            reg.release_output(res.name, kind=res.kind)
        except Exception:  # the registry may be what failed: the job's own error is the one
            pass  # to see, and a later job takes the stale reservation over
        raise
    reg.release_output(res.name, kind=res.kind)


@contextmanager
def reserved_output(
    reg: ReservationsMixin, name: str, folder: Path, *, job: str, kind: str = "model"
) -> Iterator[Reservation]:
    """``take_output`` then ``holding`` it for the block."""
    with holding(reg, take_output(reg, name, folder, job=job, kind=kind), folder) as res:
        yield res


def _registered(reg: ReservationsMixin, kind: str, name: str) -> bool:
    with reg._read() as s:
        return is_registered(s, kind, name)

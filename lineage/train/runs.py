"""A job's records: its MLflow run and its registry run row, ended whatever happens.

Every job that makes something (train, adapt, grow, cache build) runs inside :func:`recorded`.
If the job raises — before, during or after training — both records end as failed (killed on
Ctrl-C, or SIGTERM as the CLI maps it) with the error attached: the MLflow run as FAILED with a
``lineage.error`` tag, the registry row as ``failed`` with its ``error``. A run is never left
RUNNING by an exception. Interrupts that arrive while the records are being closed wait until
they are (``torchrun`` sends SIGTERM to the other ranks as soon as one fails).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lineage.registry.entities import Run
from lineage.registry.store import Registry
from lineage.train.tracking import (
    MlflowTracker,
    NullTracker,
    Tracker,
    mlflow_client,
    strategy_color,
)

if TYPE_CHECKING:
    from lineage.workspace import Workspace

log = logging.getLogger(__name__)

ERROR_TAG = "lineage.error"
_MAX_ERROR_CHARS = 5000  # MLflow's limit on a tag value is larger; a message needs no more


@dataclass
class JobRecord:
    """The two records of one job; ``succeed`` ends them as finished."""

    registry: Registry
    tracker: Tracker
    run: Run | None  # None on non-main processes, which write no records
    done: bool = False

    def succeed(self, model: str | None = None) -> None:
        """End both records as finished; ``model`` is what the job registered."""
        if self.done:
            return
        self.tracker.finish("FINISHED")
        if self.run is not None:
            self.registry.finish_run(self.run.id, status="finished", model=model)
        self.done = True

    def fail(self, exc: BaseException) -> None:
        """End both records as failed (killed for Ctrl-C) with the error; never raises, so the
        job's own exception is the one the caller sees."""
        if self.done:
            return
        self.done = True
        killed = isinstance(exc, KeyboardInterrupt)
        message = error_text(exc)
        with interrupts_deferred():
            try:
                self.tracker.set_tags({ERROR_TAG: message})
                self.tracker.finish("KILLED" if killed else "FAILED")
            except Exception as inner:  # the tracking server may be what failed
                log.warning("could not mark the MLflow run failed: %s", inner)
            if self.run is not None:
                try:
                    status = "killed" if killed else "failed"
                    self.registry.finish_run(self.run.id, status=status, error=message)
                except Exception as inner:
                    log.warning("could not mark registry run %s failed: %s", self.run.id, inner)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back (not lost) in the main thread until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_ERROR_CHARS]


@contextmanager
def recorded(
    registry: Registry,
    kind: str,
    tracker: Tracker,
    *,
    config: Mapping[str, Any],
    main: bool = True,
    resume: bool = False,
) -> Iterator[JobRecord]:
    """Open the registry run row of a job tracked by ``tracker`` (reopen it when ``resume``)
    and end both records on the way out: finished if the body did not raise (and did not call
    ``succeed`` itself), failed with the error if it did."""
    run = None
    if main:
        stale = registry.fail_dead_runs()  # runs of killed jobs: failed, not RUNNING for ever
        if stale and isinstance(tracker, MlflowTracker):
            fail_mlflow_runs(tracker.tracking_uri, stale)
        if resume and tracker.run_id is not None:
            run = registry.reopen_run(tracker.run_id)
        if run is None:
            run = registry.start_run(kind, mlflow_run_id=tracker.run_id, config=dict(config))
    record = JobRecord(registry, tracker, run)
    try:
        yield record
    except BaseException as exc:
        record.fail(exc)
        raise
    record.succeed()


def job_tracker(
    ws: Workspace, run_name: str, tags: Mapping[str, Any], *, main: bool = True
) -> Tracker:
    """A fresh MLflow run in the workspace's experiment (a null tracker off the main process),
    drawn in its strategy's colour when it has one."""
    if not main:
        return NullTracker()
    if "lineage.strategy" in tags:
        tags = {"mlflow.runColor": strategy_color(str(tags["lineage.strategy"])), **tags}
    return MlflowTracker(
        ws.tracking_uri,
        ws.config.tracking.experiment,
        run_name,
        tags=tags,
        artifact_location=ws.expand(ws.config.tracking.artifacts),
    )


def fail_mlflow_runs(tracking_uri: str, run_ids: Sequence[str]) -> None:
    """End the MLflow runs of jobs whose process is gone (their registry rows are failed
    already) as FAILED with the reason, so that none stays RUNNING for ever."""
    if not run_ids:
        return
    client = mlflow_client(tracking_uri)
    for run_id in run_ids:
        try:
            client.set_tag(run_id, ERROR_TAG, "its process was killed (a later job took over)")
            client.set_terminated(run_id, "FAILED")
        except Exception as exc:  # a run the tracking store does not know: nothing to end
            log.warning("could not mark MLflow run %s failed: %s", run_id, exc)

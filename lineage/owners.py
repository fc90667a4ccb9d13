"""Who runs a job: process id, host and the process's start time, so that a later process can
tell whether the owner of a reservation or a RUNNING run is gone (its pid no longer runs, or now
names another process) rather than only slow. Only owners on this host can be judged."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Liveness = Literal["alive", "gone", "elsewhere"]


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: int | None  # the process's start time (clock ticks after boot); None if unknown

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def process_started(pid: int) -> int | None:
    """Start time of process ``pid`` from ``/proc/<pid>/stat`` (field 22), None if it does not
    run (or this system has no ``/proc``). With the pid it names one process for good: a pid
    reused after the owner died has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "(comm)", which may hold spaces
    return int(fields[19])  # field 22 overall; fields after the comm start at field 3


def current_owner() -> Owner:
    """This process (looked up once per pid: a forked child is another owner)."""
    return _owner(os.getpid())


@cache
def _owner(pid: int) -> Owner:
    return Owner(pid, socket.gethostname(), process_started(pid))


def liveness(owner: Owner) -> Liveness:
    """``alive``, ``gone`` (its process no longer runs here) or ``elsewhere`` (another host:
    cannot be told from here)."""
    if owner.host != socket.gethostname():
        return "elsewhere"
    if owner.pid <= 0:
        return "gone"
    started = process_started(owner.pid)
    if started is None:
        try:  # no /proc: whether the pid runs at all
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "alive"
        return "alive" if not os.path.exists("/proc/self") else "gone"
    return "alive" if owner.started is None or started == owner.started else "gone"

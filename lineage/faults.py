"""Fault injection for crash-safety tests: ``fault_point("grow.saved")`` marks a step boundary of
a job; it does nothing unless the environment variable ``LINEAGE_FAULT`` names that point, and
then the process kills itself with SIGKILL there (no ``finally``, no ``atexit``: what a power
cut or the OOM killer leaves). ``tests/test_faults.py`` runs each job in a subprocess killed at
each of its points and checks that the workspace is untouched or complete and a rerun succeeds.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "LINEAGE_FAULT"


def fault_point(name: str) -> None:
    """SIGKILL this process if ``LINEAGE_FAULT`` is ``name`` (a no-op otherwise)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

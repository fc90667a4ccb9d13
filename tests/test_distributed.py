"""What a process knows of its launch before anything is initialised, and how the CLI behaves on
a rank other than 0 (the multi-process runs themselves: test_multiprocess.py, test_scaling.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import lineage.cli as cli
from lineage.distributed import (
    DEFAULT_TIMEOUT_S,
    launch_rank,
    launch_summary,
    launch_world_size,
    on_main,
    process_info,
    timeout_s,
)
from lineage.errors import LineageError


def test_rank_and_world_size_come_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (launch_rank(), launch_world_size()) == (0, 1)
    assert launch_summary() == "1 process (no multi-process launcher)"
    monkeypatch.setenv("PMI_RANK", "3")  # MPI's name for it
    monkeypatch.setenv("PMI_SIZE", "4")
    assert (launch_rank(), launch_world_size()) == (3, 4)
    monkeypatch.setenv("RANK", "1")  # torchrun's wins
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launch_summary() == "2 processes, this is rank 1; backend gloo, FSDP"


def test_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINEAGE_DIST_TIMEOUT", raising=False)
    assert timeout_s() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv("LINEAGE_DIST_TIMEOUT", "42.5")
    assert timeout_s() == 42.5
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv("LINEAGE_DIST_TIMEOUT", bad)
        with pytest.raises(LineageError, match="LINEAGE_DIST_TIMEOUT"):
            timeout_s()


def test_one_process_is_rank_0_of_1_and_runs_main_steps_itself() -> None:
    info = process_info()
    assert (info.rank, info.world_size) == (0, 1) and str(info).startswith("1 process on ")
    assert on_main(lambda: 7, "adding") == 7
    with pytest.raises(ValueError, match="as is"):  # the main's own error, unchanged
        on_main(lambda: int("as is"), "parsing")


def test_only_rank_0_writes_standard_output() -> None:
    code = "from lineage.cli import main; main()"
    outs = []
    for rank in ("0", "1"):
        env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2"}
        proc = subprocess.run(
            [sys.executable, "-c", code, "--version"], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0].startswith("lineage ") and outs[1] == ""


def test_sigterm_interrupts_unless_an_error_is_being_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(KeyboardInterrupt):
        cli._on_sigterm(signal.SIGTERM, None)
    again: list[tuple[float, object, tuple[object, ...]]] = []

    class Timer:
        daemon = False

        def __init__(self, delay: float, fn: object, args: tuple[object, ...]) -> None:
            again.append((delay, fn, args))

        def start(self) -> None:
            pass

    monkeypatch.setattr(threading, "Timer", Timer)
    try:
        raise RuntimeError("a peer died")
    except RuntimeError:
        cli._on_sigterm(signal.SIGTERM, None)  # returns: the failure is being recorded
    assert again == [(1.0, os.kill, (os.getpid(), signal.SIGTERM))]  # it will come again

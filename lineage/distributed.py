"""Which process this is when a job runs on several (``torchrun``, ``accelerate launch``), and the
few things every rank must agree on.

Every multi-process job goes through :func:`process_state`: Accelerate's ``PartialState``
initialised for the CPU when there is no GPU (otherwise each CPU rank believes it is alone and
trains the whole job by itself) and with a timeout on the process group, so a rank whose peer
died does not wait forever in a collective. The main process (rank 0) is the only one that writes
the registry, MLflow, published files and standard output; :func:`on_main` runs a step there and
hands every rank its result — or its error, so all ranks fail together instead of waiting.

torch and accelerate are imported lazily: the CLI reads :func:`launch_rank` before either loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from lineage.errors import LineageError

T = TypeVar("T")

TIMEOUT_ENV_VAR = "LINEAGE_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 600.0  # torch's own default for NCCL; long enough for the main's writes
# Where launchers put the global rank: torchrun / accelerate launch, then MPI implementations.
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return default


def launch_rank() -> int:
    """This process's global rank as the launcher set it (0 when not launched as several)."""
    return _env_int(_RANK_VARS, 0)


def launch_world_size() -> int:
    """The number of processes the launcher started (1 when not launched as several)."""
    return _env_int(_WORLD_VARS, 1)


def launch_summary() -> str:
    """How the launcher started this process, read from its environment alone (nothing is
    initialised): world size, rank and the backend the process group will use."""
    world = launch_world_size()
    if world == 1:
        return "1 process (no multi-process launcher)"
    import torch

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return f"{world} processes, this is rank {launch_rank()}; backend {backend}" + (
        ", FSDP" if fsdp else ""
    )


def timeout_s() -> float:
    """The process-group timeout: $LINEAGE_DIST_TIMEOUT seconds, else 600."""
    text = os.environ.get(TIMEOUT_ENV_VAR)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise LineageError(f"${TIMEOUT_ENV_VAR} must be a number of seconds > 0, got {text!r}")
    return value


def process_state() -> Any:
    """Accelerate's ``PartialState`` of this process, set up the first time it is asked for:
    GPU ranks use NCCL, CPU ranks gloo (``cpu=True`` when CUDA is absent), every collective
    times out after :func:`timeout_s`. One process without a launcher is rank 0 of 1."""
    import torch
    from accelerate import PartialState

    timeout = timedelta(seconds=timeout_s())
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)


@dataclass(frozen=True)
class ProcessInfo:
    """How this job runs: what `lineage doctor` and a run's first log line state."""

    rank: int
    world_size: int
    backend: str | None  # gloo, nccl, …; None for one process
    distributed_type: str  # Accelerate's: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
    device: str

    def __str__(self) -> str:
        if self.world_size == 1:
            return f"1 process on {self.device}"
        return (
            f"{self.world_size} processes ({self.distributed_type}, {self.backend}) on "
            f"{self.device}; this is rank {self.rank}"
        )


def process_info(state: Any = None) -> ProcessInfo:
    """The :class:`ProcessInfo` of ``state`` (an Accelerator or PartialState; default: this
    process's, initialised if needed)."""
    state = state if state is not None else process_state()
    kind = getattr(state, "distributed_type", None)
    backend = getattr(getattr(state, "state", state), "backend", None)
    return ProcessInfo(
        rank=int(state.process_index),
        world_size=int(state.num_processes),
        backend=backend,
        distributed_type=str(getattr(kind, "value", kind)),
        device=str(state.device),
    )


def barrier() -> None:
    """Wait until every rank arrives (nothing to wait for in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every rank (a picklable object)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(step: Callable[[], T], what: str) -> T:
    """Run ``step`` on the main process only and return its result on every rank.

    If it raises, the main process re-raises that error and every other rank raises a
    LineageError naming ``what``: all ranks leave together instead of waiting in the next
    collective for a main process that has gone.
    """
    state = process_state()
    if state.num_processes == 1:
        return step()
    error: BaseException | None = None
    outcome: tuple[bool, Any] = (True, None)
    if state.is_main_process:
        try:
            outcome = (True, step())
        except Exception as exc:  # shared below, then re-raised here unchanged
            error, outcome = exc, (False, f"{type(exc).__name__}: {exc}")
    ok, value = broadcast(outcome)
    if error is not None:
        raise error
    if not ok:
        raise LineageError(f"{what} failed on the main process: {value}")
    return value

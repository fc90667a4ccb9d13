"""Starting lineage on two local processes from a test, the way the README says: ``torchrun``, or
``accelerate launch`` with the repository's FSDP config (the venv's own launchers)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "configs" / "fsdp.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(args: list[str], *, fsdp: bool = False) -> list[str]:
    """``torchrun --nproc_per_node 2 --master_port P <args>``, or with ``fsdp``
    ``accelerate launch --config_file configs/fsdp.yaml --num_processes 2
    --main_process_port P <args>``."""
    bin_dir = Path(sys.executable).parent
    port = str(free_port())
    if fsdp:
        return [
            str(bin_dir / "accelerate"),
            "launch",
            "--config_file",
            str(FSDP_CONFIG),
            "--num_processes",
            "2",
            "--main_process_port",
            port,
            *args,
        ]
    return [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", port, *args]


def launch_env(**extra: str) -> dict[str, str]:
    """One thread per process; collectives give up after 120 s (never a hanging test)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "LINEAGE_DIST_TIMEOUT": "120", **extra}

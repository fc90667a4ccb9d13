"""`lineage ui` serves the workspace's MLflow store on 127.0.0.1 (a real server, bounded wait)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lineage.cli.ui import ui_command
from lineage.workspace import Workspace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ui_command_is_light_and_local(ws: Workspace) -> None:
    cmd, env = ui_command(ws, 5001)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{ws.root}/mlflow.db"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


@pytest.mark.slow
def test_ui_serves_health(ws: Workspace) -> None:
    port = free_port()
    lineage = Path(sys.executable).with_name("lineage")
    proc = subprocess.Popen(
        [str(lineage), "-w", str(ws.root), "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status != 200:
            time.sleep(1)
            assert proc.poll() is None, "the UI exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
            except OSError:
                continue
        assert status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

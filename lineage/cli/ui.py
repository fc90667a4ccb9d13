"""``lineage ui``: the MLflow UI on this workspace's tracking store, on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from lineage.cli.common import console, workspace
from lineage.workspace import Workspace


def ui_command(ws: Workspace, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a light MLflow UI (one worker, no job runner)."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        ws.tracking_uri,
        "--default-artifact-root",
        ws.expand(ws.config.tracking.artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # Background jobs would start a task queue beside the server: about 0.5 GB without it.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return cmd, env


def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI on the workspace's runs (compare SL, KI, replay; forgetting metrics)."""
    cmd, env = ui_command(workspace(ctx), port)
    console.print(f"MLflow UI on http://127.0.0.1:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # the UI replaces this process: no idle parent holding memory

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


def runs_page(ws: Workspace, port: int) -> str:
    """The address of the workspace's runs in the UI's model-training view.

    MLflow 3's UI opens every experiment in its GenAI view (traces, prompts) unless the address
    (or the sidebar switch) asks for ``workflowType=machine_learning``; the experiment also
    carries ``mlflow.experimentKind`` (``lineage.train.tracking.ensure_experiment``)."""
    from mlflow import MlflowClient

    from lineage.train.tracking import ensure_experiment

    client = MlflowClient(tracking_uri=ws.tracking_uri)
    exp_id = ensure_experiment(
        client, ws.config.tracking.experiment, ws.expand(ws.config.tracking.artifacts)
    )
    return f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI on the workspace's runs (compare SL, KI, replay; forgetting metrics)."""
    ws = workspace(ctx)
    cmd, env = ui_command(ws, port)
    console.print(f"MLflow UI: {runs_page(ws, port)}  (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # the UI replaces this process: no idle parent holding memory

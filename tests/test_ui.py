"""`lineage ui` serves the workspace's MLflow store on 127.0.0.1, and a real browser sees the runs
and their forgetting curves there (scripts/ui_screenshots.py, headless Chromium)."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lineage.cli.ui import runs_page, ui_command
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


def test_ui_prints_the_runs_page_in_the_model_training_view(ws: Workspace) -> None:
    url = runs_page(ws, 5001)
    assert url.startswith("http://127.0.0.1:5001/#/experiments/")
    assert url.endswith("/runs?workflowType=machine_learning")
    from mlflow import MlflowClient

    exp = MlflowClient(ws.tracking_uri).get_experiment_by_name(ws.config.tracking.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def load_script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "ui_screenshots.py"
    spec = importlib.util.spec_from_file_location("ui_screenshots", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.integration
def test_a_real_browser_sees_the_runs_and_their_forgetting_curves(tmp_path: Path) -> None:
    """scripts/ui_screenshots.py on a small workspace (four adaptations of one model: SL, KI,
    KI + replay, LoRA): headless Chromium opens `lineage ui` and the pages show every run, in
    the model-training view, with no hidden parent run, and the forgetting curves of the four
    runs overlaid (MLflow's metric page and chart view)."""
    script = load_script()
    root = tmp_path / "ws"
    script.build_workspace(root, steps=8, adapt_steps=8, docs=120)
    out = tmp_path / "shots"
    texts = script.take(root, out, free_port())
    runs = ["g1-sl", "g1-ki", "g1-ki-replay", "g1-lora"]
    for name in ("runs", "forgetting", "charts"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000, name
    assert all(r in texts["runs"] for r in [*runs, "g1", "expert-cs"])
    assert "Model training" in texts["runs"] and "Prompts" not in texts["runs"]  # not GenAI
    assert "plan " not in texts["runs"]  # no parent run per plan
    assert all(f"{r} (forgetting_ratio/literature)" in texts["forgetting"] for r in runs)
    assert "forgetting_ratio/literature" in texts["charts"]
    assert all(r in texts["charts"] for r in runs)

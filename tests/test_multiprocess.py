"""`lineage` on two CPU processes (gloo), started exactly as README's "Scaling out" says:
``torchrun --nproc_per_node 2 --master_port P -m lineage.cli ...`` and ``accelerate launch
--config_file configs/fsdp.yaml ...``: training (SL, KI from a cache, a two-teacher plan, FSDP),
cache building and adaptation. Each job leaves one model, one MLflow run, one set of edges
and one JSON document on stdout, and both ranks end with the same weights — those saved. A rank
killed with SIGKILL fails the job everywhere (records FAILED, nothing registered) and
``--resume`` then finishes it with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from launch import launch_command, launch_env
from mlflow import MlflowClient

from lineage.inherit.cache_build import state_digest
from lineage.inherit.plans import create_plan
from lineage.models.modeling import load_model
from lineage.train.parallel import DIGEST_ENV_VAR
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, run_training
from lineage.workspace import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TRAIN = ["--batch-size", "4", "--block-size", "32", "--eval-blocks", "4", "--json"]


def workspace(template: Path, where: Path) -> Path:
    shutil.copytree(template, where)
    return where


def lineage(ws: Path, *args: str, fsdp: bool = False, digests: Path | None = None) -> Any:
    """Run ``lineage -w ws <args>`` on two processes; returns the completed process."""
    cmd = launch_command(["-m", "lineage.cli", "-w", str(ws), *args], fsdp=fsdp)
    env = launch_env(**({DIGEST_ENV_VAR: str(digests)} if digests else {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


def succeeded(proc: Any) -> Any:
    """The one JSON document the job printed (rank 0 alone writes stdout)."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)  # raises if there were two documents


def mlflow_runs(ws: Path, name: str) -> list[Any]:
    w = Workspace.open(ws)
    client = MlflowClient(w.tracking_uri)
    experiment = client.get_experiment_by_name(w.config.tracking.experiment)
    w.close()
    return [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == name]


def rank_digests(folder: Path) -> list[str]:
    return [json.loads((folder / f"rank-{r}.json").read_text())["sha256"] for r in (0, 1)]


def assert_one_result(ws: Path, output: str, summary: dict[str, Any], digests: Path) -> Workspace:
    """One model (registered once, saved once), one finished MLflow run and registry run, and
    both ranks hold the saved weights."""
    w = Workspace.open(ws)
    reg = w.registry
    assert summary["model"]["name"] == output and [m.name for m in reg.models()].count(output) == 1
    (run,) = mlflow_runs(ws, output)
    assert run.info.status == "FINISHED" and run.info.run_id == summary["run_id"]
    (row,) = [r for r in reg.runs() if r.mlflow_run_id == run.info.run_id]
    assert row.status == "finished"
    saved = state_digest(load_model(Path(reg.model(output).path)).state_dict())
    assert rank_digests(digests) == [saved, saved]
    return w


def test_self_learning_then_a_rank_killed_and_resumed(
    family_template: Path, tmp_path: Path
) -> None:
    args = ["train", "-m", "student", "-o", "s2", "-d", "cs", "--steps", "20"]
    args += ["--eval-every", "10", "--checkpoint-every", "2", *TRAIN]
    straight = workspace(family_template, tmp_path / "straight")
    proc = lineage(straight, *args, digests=tmp_path / "d-straight")
    summary = succeeded(proc)
    assert "training on 2 processes (MULTI_CPU, gloo)" in proc.stderr
    w = assert_one_result(straight, "s2", summary, tmp_path / "d-straight")
    assert w.registry.edges("s2") == []  # from a random init: a new family member
    w.close()

    killed = workspace(family_template, tmp_path / "killed")
    victim = kill_rank_one_after_a_checkpoint(killed, args)
    w = Workspace.open(killed)
    assert not w.registry.has_model("s2") and not (killed / "models" / "s2").exists()
    (run,) = mlflow_runs(killed, "s2")
    assert run.info.status in ("FAILED", "KILLED")
    (row,) = [r for r in w.registry.runs() if r.mlflow_run_id == run.info.run_id]
    assert row.status in ("failed", "killed") and row.error
    w.close()
    assert victim < 20

    resumed = succeeded(lineage(killed, *args, "--resume", digests=tmp_path / "d-resumed"))
    assert resumed["run_id"] == run.info.run_id  # the same MLflow run, finished now
    assert_one_result(killed, "s2", resumed, tmp_path / "d-resumed").close()
    assert rank_digests(tmp_path / "d-resumed") == rank_digests(tmp_path / "d-straight")


def kill_rank_one_after_a_checkpoint(ws: Path, args: list[str]) -> int:
    """Start the job, SIGKILL rank 1 once the first checkpoint is published; return that step."""
    cmd = launch_command(["-m", "lineage.cli", "-w", str(ws), *args])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=launch_env())
    checkpoints = ws / "runs" / "s2" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("step-*/manifest.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    step = min(int(p.parent.name[5:]) for p in checkpoints.glob("step-*/manifest.json"))
    (rank1,) = [c for c in psutil.Process(proc.pid).children() if c.environ().get("RANK") == "1"]
    rank1.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0, "the job must fail when one of its processes is killed"
    return step


def test_cache_built_on_two_processes_then_ki_from_it_then_adapted(
    family_template: Path, tmp_path: Path
) -> None:
    ws = workspace(family_template, tmp_path / "ws")
    built = succeeded(
        lineage(
            ws,
            "cache",
            "build",
            "--teacher",
            "teacher-lit",
            "-d",
            "cs",
            "--block-size",
            "32",
            "--json",
        )
    )["caches"]
    w = Workspace.open(ws)
    caches = w.registry.caches("teacher-lit")
    assert sorted(c["path"] for c in built) == sorted(c.path for c in caches)  # each once
    assert len(caches) == len(w.registry.shards("cs", split="train")) >= 1
    (cache_run,) = mlflow_runs(ws, "cache teacher-lit")
    assert cache_run.info.status == "FINISHED"
    w.close()

    args = ["train", "-m", "student", "-o", "s-ki", "-d", "cs", "--strategy", "ki"]
    args += ["-t", "teacher-lit", "--steps", "6", "--eval-every", "3", "--checkpoint-every", "3"]
    summary = succeeded(lineage(ws, *args, *TRAIN, digests=tmp_path / "d"))
    w = assert_one_result(ws, "s-ki", summary, tmp_path / "d")
    edges = w.registry.edges("s-ki")
    assert [(e.parent, e.kind) for e in edges] == [("teacher-lit", "ki")]
    assert len(w.registry.caches("teacher-lit")) == len(caches)  # trained from those caches
    w.close()

    args = ["adapt", "s-ki", "-d", "bio", "--strategy", "sl", "-o", "s-bio", "--steps", "4"]
    args += ["--eval-every", "2", "--checkpoint-every", "2"]
    (adapted,) = succeeded(lineage(ws, *args, *TRAIN, digests=tmp_path / "d-adapt"))
    assert adapted["model"] == "s-bio" and "forgetting/cs" in adapted["forgetting"]
    summary = {"model": {"name": adapted["model"]}, "run_id": adapted["run_id"]}
    w = assert_one_result(ws, "s-bio", summary, tmp_path / "d-adapt")
    assert [(e.parent, e.kind) for e in w.registry.edges("s-bio")] == [("s-ki", "adapt")]
    client = MlflowClient(w.tracking_uri)
    history = client.get_metric_history(adapted["run_id"], "forgetting/cs")
    assert sorted(m.step for m in history) == [0, 2, 4]  # one curve point per evaluation, rank 0's
    assert len(w.registry.evaluations(model="s-bio")) == len(adapted["final"])
    w.close()


def test_multi_teacher_plan_on_two_processes(family_template: Path, tmp_path: Path) -> None:
    ws = workspace(family_template, tmp_path / "ws")
    w = Workspace.open(ws)
    # Experts trained until they beat the shards' unigram perplexity (the router refuses less).
    config = TrainConfig(steps=60, batch_size=8, lr=5e-3, eval_every=0, eval_blocks=4)
    for domain in ("literature", "cs"):
        job = TrainJob("student", f"expert-{domain}", (domain,), block_size=32, config=config)
        run_training(w, job, progress=False)
    plan = create_plan(
        w,
        student="student",
        domains=["literature", "cs"],
        teachers=["expert-literature", "expert-cs"],
        steps=6,
    )
    taught = {s["teacher"] for s in plan.spec["shards"]} - {None}
    assert taught == {"expert-literature", "expert-cs"}  # both teach
    assert plan.name == "student-literature-cs"  # as README's command names it
    w.close()

    args = ["train", "-m", "student", "-o", "s-plan", "--strategy", "ki", "--plan", plan.name]
    args += ["--eval-every", "3", "--checkpoint-every", "3"]
    summary = succeeded(lineage(ws, *args, *TRAIN, digests=tmp_path / "d"))
    w = assert_one_result(ws, "s-plan", summary, tmp_path / "d")
    edges = sorted((e.parent, e.kind) for e in w.registry.edges("s-plan"))
    assert edges == [("expert-cs", "ki"), ("expert-literature", "ki")]
    assert set(summary["teachers"]) == {"expert-cs", "expert-literature"}
    for teacher in ("expert-cs", "expert-literature"):  # built during training, registered once
        paths = [c.path for c in w.registry.caches(teacher)]
        assert paths and len(paths) == len(set(paths))
    w.close()


def test_fsdp_through_accelerate_launch(family_template: Path, tmp_path: Path) -> None:
    ws = workspace(family_template, tmp_path / "ws")
    args = ["train", "-m", "student", "-o", "s-fsdp", "-d", "cs", "--steps", "6"]
    args += ["--eval-every", "3", "--checkpoint-every", "3"]
    proc = lineage(ws, *args, *TRAIN, fsdp=True, digests=tmp_path / "d")
    summary = succeeded(proc)
    assert "training on 2 processes (FSDP, gloo)" in proc.stderr
    assert_one_result(ws, "s-fsdp", summary, tmp_path / "d").close()
    (latest,) = sorted((ws / "runs" / "s-fsdp" / "checkpoints").glob("step-00000006"))
    shards = sorted(p.name for p in (latest / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard

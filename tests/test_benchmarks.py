"""The GPU benchmark's CPU smoke mode runs end to end, so the script cannot rot unseen: every
phase is timed, the last line is the JSON summary, nothing is written outside its temp folder
(and $OUT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, cwd: Path, timeout: int, **env: str) -> Any:
    """``benchmarks/<script> args`` in its own process on one thread; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_bench_gpu_smoke(tmp_path: Path) -> None:
    proc = run_bench("bench_gpu.py", "--smoke", cwd=tmp_path, timeout=600, OUT=str(tmp_path))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["smoke"] and summary["device"] == "cpu"
    assert {"tokenizer", "blocks", "total"} <= set(summary["phases_s"])
    for family in ("roberta", "gpt2"):
        modes = summary["results"][family]
        assert modes["sl"]["tokens_per_s"] > 0 and modes["ki"]["tokens_per_s"] > 0
        assert modes["ki_over_sl"] == pytest.approx(modes["ki"]["step_s"] / modes["sl"]["step_s"])
        assert 0 < modes["sl"]["mfu"] < 1 and modes["sl"]["targets_per_step"] > 0
    assert "needs 2" in summary["scaling"]["skipped"]
    assert json.loads((tmp_path / "bench_gpu.json").read_text()) == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_gpu.json"]  # nothing else


@pytest.mark.slow
def test_bench_cache_agreement_smoke(tmp_path: Path) -> None:
    """v1 vs v2 cache agreement: the script trains from both formats per seed and reports."""
    out = tmp_path / "agreement.json"
    proc = run_bench(
        "bench_cache_agreement.py", "--smoke", "--seeds", "2", "--out", str(out),
        cwd=tmp_path, timeout=900,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["seeds"] == 2 and result["setup"]["quick"]
    for v in ("v1", "v2"):
        assert len(result[v]["final_ppl"]) == 2 and all(p > 1 for p in result[v]["final_ppl"])
    bytes_per_token = result["cache_bytes_per_token"]
    assert bytes_per_token["v2"] < bytes_per_token["v1"] / 2
    diff = result["final_ppl_diff"]
    assert diff["per_seed"] == pytest.approx(
        [b - a for a, b in zip(result["v1"]["final_ppl"], result["v2"]["final_ppl"], strict=True)]
    )
    assert "final_ppl: v1" in proc.stdout and "the spread" in proc.stdout


@pytest.mark.slow
def test_bench_real_checkpoint_smoke(tmp_path: Path) -> None:
    """The real-checkpoint journey on a tiny local Llama (GQA, tied, 1k BPE) through the CLI:
    every step timed, the measured plan's verdict, a 3-block cache the KI run reads without
    building another, the adapter scored through its base, forgetting reported."""
    proc = run_bench(
        "bench_real_checkpoint.py", "--smoke", "--workdir", str(tmp_path / "w"),
        cwd=tmp_path, timeout=900,
    )  # fmt: skip
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = [s["step"] for s in summary["steps"]]
    assert steps[:3] == ["domains", "domain bio", "register"] and steps[-1] == "forgetting"
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in summary["steps"])
    assert summary["checkpoint"]["shape"]["kv_heads"] == 2
    cache = summary["cache"]
    assert cache["blocks"] == [3] and cache["shard_blocks"][0] > 3
    assert cache["estimated_s"] > 0 and cache["bytes"] > 0 and cache["build_job_s"] > 0
    assert summary["ki_caches_built"] == []  # KI read the 3 cached blocks, built nothing
    assert summary["adapter_eval"] > 1 and "forgetting/cs" in summary["forgetting"]
    assert summary["plan"] and all(p["reasons"] for p in summary["plan"])


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its reaper has not waited for)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_a_killed_real_checkpoint_benchmark_leaves_no_step_running(tmp_path: Path) -> None:
    """Its steps run as child processes; kill -9 of the benchmark takes them down too."""
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, time; sys.path.insert(0, sys.argv[1]);"
            "from bench_real_checkpoint import die_with_parent;"
            "child = subprocess.Popen(['sleep', '120'], preexec_fn=die_with_parent);"
            "print(child.pid, flush=True); time.sleep(120)"
        ), str(ROOT / "benchmarks")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _running(child)
    parent.kill()
    parent.wait(10)
    for _ in range(100):
        if not _running(child):
            break
        time.sleep(0.05)
    assert not _running(child)

"""A step's loss is the sum of its per-target terms over all micro-batches and processes divided
by their global number of targets: gradient accumulation (2 x B) and two processes (DDP and FSDP,
2 x B each) give the gradients of one process with batch 2B — for MLM, where the micro-batches
hold different numbers of masked targets, and causal LM; self-learning and KI from a cached and
an online teacher. A rank that cannot run a step stops every rank in it. FSDP training resumes
bit for bit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from launch import launch_command, launch_env
from scaling_cases import CASES, build_caches, step_gradients

CHILD = Path(__file__).parent / "scaling_child.py"


def assert_same_gradients(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, grad in want.items():
        assert grad.abs().sum() > 0, f"{name}: no gradient at all (the comparison would be void)"
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_accumulating_two_micro_batches_gives_the_gradient_of_one_twice_as_large(
    case: str, tmp_path: Path
) -> None:
    caches = build_caches(tmp_path, (case.split("-")[0],)) if "cached" in case else {}
    whole, _ = step_gradients(case, caches, batch_size=8, grad_accum=1)
    accumulated, targets = step_gradients(case, caches, batch_size=4, grad_accum=2)
    if case.startswith("mlm"):
        assert targets[0] != targets[1]  # unequal micro-batches: a mean of means would differ
    assert_same_gradients(accumulated, whole)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """The caches, and each case's gradients with one process and batch 8."""
    root = tmp_path_factory.mktemp("scaling")
    caches = build_caches(root)
    return root, {case: step_gradients(case, caches, 8, 1)[0] for case in CASES}


def run_child(args: list[str], *, fsdp: bool) -> None:
    cmd = launch_command([str(CHILD), *args], fsdp=fsdp)  # both launchers run it with python
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=launch_env())
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_give_the_gradient_of_one_with_twice_the_batch(
    one_process: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
    fsdp: bool,
) -> None:
    root, reference = one_process
    run_child(["grads", str(tmp_path), str(root), "4"], fsdp=fsdp)
    for case in CASES:
        ranks = [torch.load(tmp_path / f"{case}-rank{r}.pt") for r in (0, 1)]
        if case.startswith("mlm"):
            assert ranks[0]["targets"] != ranks[1]["targets"]  # the ranks' counts differ
        for rank in ranks:
            assert_same_gradients(rank["grads"], reference[case])
        for name, grad in ranks[0]["grads"].items():  # synchronised: equal on both ranks
            assert torch.equal(grad, ranks[1]["grads"][name]), name
    # Rank 1 cannot run a step: both ranks stop in that step's first collective.
    failures = [(tmp_path / f"failure-rank{r}.txt").read_text() for r in (0, 1)]
    assert "process 1 cannot run this step" in failures[0]
    assert "vocabulary mismatch" in failures[1] and "token id 300" in failures[1]
    # A step only the main process takes (registering a cache, storing a plan): every rank
    # gets its result, and its error fails them all.
    shared = [json.loads((tmp_path / f"on-main-rank{r}.json").read_text()) for r in (0, 1)]
    assert shared[0]["value"] == shared[1]["value"] == "made by rank 0"
    assert shared[0]["error"] == "ValueError: the registry is gone"
    assert shared[1]["error"] == (
        "LineageError: registering it failed on the main process: ValueError: the registry is gone"
    )


@pytest.mark.slow
def test_fsdp_training_resumes_bit_for_bit(tmp_path: Path) -> None:
    run_child(["resume", str(tmp_path)], fsdp=True)
    digests = [json.loads((tmp_path / f"resume-rank{r}.json").read_text()) for r in (0, 1)]
    assert digests[0] == digests[1]
    assert digests[0]["crashed"] is None  # the crash happened (at step 4 of 6)
    assert list((tmp_path / "resumed" / "checkpoints").glob("step-*/pytorch_model_fsdp_0"))
    assert digests[0]["resumed"] == digests[0]["straight"]

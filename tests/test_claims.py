"""benchmarks/claims.py: the multi-seed claims harness runs its smallest mode end to end through
the real trainer, resumes without rerunning finished cells, and renders mean ± sd tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def claims() -> ModuleType:
    spec = importlib.util.spec_from_file_location("claims", BENCH / "claims.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = module
    spec.loader.exec_module(module)
    return module


def test_summary_and_markdown_from_the_json(claims: ModuleType) -> None:
    data = {
        "quick": False,
        "cells": {
            f"gpt2/ki/{s}": {
                "metrics": {"sl/final_ppl": ppl, "ki-linear-k10/steps_saved": saved},
                "seconds": 60.0 * (s + 1),
            }
            for s, (ppl, saved) in enumerate([(100.0, 0.25), (104.0, None), (102.0, 0.35)])
        },
    }
    stats = claims.summary(data)[("gpt2", "ki")]
    assert stats["sl/final_ppl"]["mean"] == pytest.approx(102.0)
    assert stats["sl/final_ppl"]["sd"] == pytest.approx(2.0)
    saved = stats["ki-linear-k10/steps_saved"]
    assert saved["values"] == [0.25, None, 0.35] and saved["n"] == 2
    assert saved["mean"] == pytest.approx(0.30)
    text = claims.render_markdown(data)
    assert "**gpt2, ki** (3 seed(s), 120 s per seed)" in text
    assert "| sl/final_ppl | 102.00 ± 2.00 | 100.00, 104.00, 102.00 |" in text
    assert "| ki-linear-k10/steps_saved | 30 % ± 7 % | 25 %, never, 35 % |" in text


def test_quick_mode_runs_resumes_and_plots(
    claims: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smallest mode: one claim, one family, one seed, through the real trainer."""
    argv = ["--quick", "--family", "gpt2", "--seeds", "1", "--claims", "growth"]
    data = claims.main([*argv, "--out", str(tmp_path)])
    cell = data["cells"]["gpt2/growth/0"]
    metrics = cell["metrics"]
    assert cell["seconds"] > 0
    want = {"fpi/loss_after_growth", "copy/loss_after_growth", "scratch/final_ppl", "FPI/final_ppl"}
    assert want <= set(metrics)
    # Width and depth grown: FPI stays near the source's loss, far below a random model's.
    assert abs(metrics["fpi/loss_after_growth"] - metrics["source/loss_after_growth"]) < 1.0
    assert json.loads((tmp_path / "claims_quick.json").read_text())["cells"].keys() == {
        "gpt2/growth/0"
    }
    assert (tmp_path / "claims_gpt2_growth_quick.png").stat().st_size > 0

    def boom(*_: object) -> None:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setitem(claims.CELLS, "growth", boom)
    again = claims.main([*argv, "--out", str(tmp_path)])
    assert again["cells"] == data["cells"]
    with pytest.raises(SystemExit):  # quick and full cells never share a JSON
        claims.load(tmp_path / "claims_quick.json", "full")
    with pytest.raises(SystemExit):
        claims.load(tmp_path / "claims_quick.json", "medium")


@pytest.mark.slow
def test_accumulation_runs_three_generations(claims: ModuleType, tmp_path: Path) -> None:
    """G1 -> G2 (SL, KI) -> G3 (SL, KI from G1, G2-SL, G2-KI) at a few steps each, through the
    real trainer; G3's savings are measured against G3 taught by G2-SL."""
    import bench_accumulation
    from bench_ki_results import Setup

    setup = Setup(
        steps=6, teacher_steps=6, vocab_size=300, block_size=32, batch_size=4, eval_every=3,
        eval_blocks=4, docs=120, valid_every=10, quick=True,
    )  # fmt: skip
    metrics = bench_accumulation.experiment(tmp_path / "ws", setup)
    runs = ["g1", "g2-sl", "g2-ki", "g3-sl", "g3-from-g1", "g3-from-g2-sl", "g3-from-g2-ki"]
    assert all(0 < metrics[f"{r}/final_ppl"] < setup.vocab_size * 2 for r in runs)  # type: ignore[operator]
    saved = {k for k in metrics if k.endswith("steps_saved")}
    assert saved == {f"{r}/steps_saved" for r in runs[3:] if r != "g3-from-g2-sl"}
    assert all(v is None or v < 1 for k, v in metrics.items() if k in saved)
    assert claims.CELLS["accumulation"] is claims.accumulation_cell


def test_two_runs_sharing_the_json_keep_each_others_cells(
    claims: ModuleType, tmp_path: Path
) -> None:
    """Two processes adding cells to one JSON at once (a run per core) lose none of them."""
    import multiprocessing

    path = tmp_path / "claims_medium.json"

    def writer(family: str) -> None:
        for seed in range(150):
            cell = {"metrics": {"sl/final_ppl": float(seed)}, "seconds": 0.0}
            claims.add_cell(path, "medium", claims.cell_key(family, "ki", seed), cell)

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=writer, args=(f,)) for f in claims.FAMILIES]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 300
    assert cells["roberta/ki/149"]["metrics"] == {"sl/final_ppl": 149.0}


def test_the_runs_of_a_cell(claims: ModuleType) -> None:
    """K = full is the online teacher (no cache of every logit); ``only`` picks runs."""
    from bench_ki_results import Setup, runs

    every = runs(Setup())
    assert list(every) == [
        "sl", "ki-linear-k10", "ki-heaviside", "ki-constant", "ki-linear-k1", "ki-linear-k100"
    ]  # fmt: skip
    full = runs(Setup(top_k_large=0, only=("sl", "ki-linear-kfull")))
    assert list(full) == ["sl", "ki-linear-kfull"]
    assert full["ki-linear-kfull"]["teacher_mode"] == "online"
    assert "top_k" not in full["ki-linear-kfull"]  # so no cache is built for it
    with pytest.raises(ValueError, match="ki-linear-k7"):
        runs(Setup(only=("ki-linear-k7",)))
    assert claims.CELLS["kfull"] is claims.kfull_cell


@pytest.mark.slow
def test_a_kfull_cell_trains_from_the_whole_distribution(
    claims: ModuleType, tmp_path: Path
) -> None:
    """The quick kfull cell: SL and KI from an online teacher, and nothing cached."""
    metrics = claims.kfull_cell(tmp_path / "ws", "gpt2", 0, "quick")
    assert set(metrics) == {
        "teacher/final_ppl", "sl/final_ppl", "ki-linear-kfull/final_ppl",
        "ki-linear-kfull/steps_saved",
    }  # fmt: skip
    assert all(0 < metrics[k] < 1000 for k in metrics if k.endswith("final_ppl"))  # type: ignore[operator]
    assert not list((tmp_path / "ws").rglob("topk_*.npy"))  # no teacher cache was built


def test_a_run_skips_cells_another_process_added_meanwhile(
    claims: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "claims_medium.json"
    ran: list[int] = []

    def cell(_root: Path, family: str, seed: int, _setting: str) -> dict[str, float]:
        ran.append(seed)
        if seed == 0:  # meanwhile another process finishes seed 1
            other = {"metrics": {"sl/final_ppl": 1.0}, "seconds": 0.0}
            claims.add_cell(path, "medium", claims.cell_key(family, "growth", 1), other)
        return {"sl/final_ppl": float(seed)}

    monkeypatch.setitem(claims.CELLS, "growth", cell)
    data = claims.run_cells(path, claims.wanted(["gpt2"], ["growth"], 3), "medium")
    assert ran == [0, 2]
    assert sorted(data["cells"]) == ["gpt2/growth/0", "gpt2/growth/1", "gpt2/growth/2"]

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
        claims.load(tmp_path / "claims_quick.json", quick=False)

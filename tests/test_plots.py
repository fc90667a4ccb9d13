"""lineage.report.plots: the error-bar figure says how many seeds each bar stands on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lineage.report import plots


def test_error_bars_count_the_seeds_that_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Any] = []
    save = plots.save_figure

    def keep(fig: Any, path: Path) -> Path:
        drawn.append([t.get_text() for ax in fig.axes for t in ax.texts])
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    saved = {
        "sl": {"mean": None, "sd": None, "values": [None, None, None]},
        "ki": {"mean": 0.4, "sd": None, "values": [None, 0.4, None]},
        "aki": {"mean": 0.5, "sd": 0.1, "values": [0.4, 0.5, 0.6]},
    }
    path = plots.error_bars({"steps_saved": saved}, tmp_path / "bars.png", title="t")
    assert path.stat().st_size > 0
    assert drawn == [["none", "1/3"]]  # every seed of aki reached: no label

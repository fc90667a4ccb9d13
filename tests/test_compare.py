import math

from lineage.report.compare import curve, saving, steps_to_reach

HISTORY = [{"step": 0, "ppl/a": 100.0}, {"step": 10, "ppl/a": 50.0}, {"step": 20, "ppl/a": 25.0}]


def test_curve_and_reach() -> None:
    assert curve(HISTORY, "a") == ([0, 10, 20], [100.0, 50.0, 25.0])
    assert steps_to_reach(HISTORY, "a", 100.0) == 0
    assert steps_to_reach(HISTORY, "a", 50.0) == 10
    # halfway in log space between 50 (step 10) and 25 (step 20)
    assert steps_to_reach(HISTORY, "a", math.sqrt(50 * 25)) == 15
    assert steps_to_reach(HISTORY, "a", 10.0) is None
    assert steps_to_reach(HISTORY, "missing", 10.0) is None


def test_saving() -> None:
    assert saving(100, 73) == 0.27
    assert saving(100, None) is None

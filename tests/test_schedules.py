"""Inheritance-rate schedules: the paper's formulas, Table 6 defaults, and the auto schedule."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest

from lineage.inherit.schedules import (
    AutoInheritance,
    InheritanceSchedule,
    guided_steps_for,
    inheritance_rate,
    paired_gap,
)


@pytest.mark.parametrize(
    ("step", "alpha_T", "expected"),
    [
        (0, 3.0, 1.0),
        (100, 3.0, 1.0 - 3.0 * 100 / 1000),
        (250, 2.0, 0.5),
        (333, 3.0, 1.0 - 0.999),
        (500, 2.0, 0.0),  # guidance ends at T / α_T = 500
        (900, 2.0, 0.0),  # clamped at 0, never negative
        (1000, 0.5, 0.5),  # α_T < 1: guidance outlasts the run
    ],
)
def test_linear_formula(step: int, alpha_T: float, expected: float) -> None:
    got = inheritance_rate(step, schedule="linear", total_steps=1000, alpha_T=alpha_T)
    assert got == pytest.approx(expected)


def test_linear_paper_example() -> None:
    # MEDIUM → BASE: 35k guided steps of 125k, i.e. α_T = 125/35.
    alpha_T = 125 / 35
    assert inheritance_rate(0, total_steps=125_000, alpha_T=alpha_T) == 1.0
    assert inheritance_rate(17_500, total_steps=125_000, alpha_T=alpha_T) == pytest.approx(0.5)
    assert inheritance_rate(35_000, total_steps=125_000, alpha_T=alpha_T) == pytest.approx(0.0)
    assert inheritance_rate(60_000, total_steps=125_000, alpha_T=alpha_T) == 0.0


@pytest.mark.parametrize("guided", [1, 7, 350, 1000, 4000])
def test_guided_steps_equals_alpha_T(guided: int) -> None:
    total = 1000
    for step in (0, 1, 5, 100, 349, 350, 999, 1000):
        by_g = inheritance_rate(step, total_steps=total, guided_steps=guided)
        by_a = inheritance_rate(step, total_steps=total, alpha_T=total / guided)
        assert by_g == pytest.approx(by_a, abs=1e-12)
    sched = InheritanceSchedule(kind="linear", total_steps=total, guided_steps=guided)
    assert sched.guidance_end == min(guided, total)
    assert sched.rate(sched.guidance_end) == (0.0 if guided <= total else sched.rate(total))


def test_linear_is_monotone_with_constant_slope() -> None:
    sched = InheritanceSchedule(kind="linear", total_steps=200, alpha_T=2.5)
    rates = [sched.rate(t) for t in range(201)]
    drops = [a - b for a, b in itertools.pairwise(rates)]
    assert all(d >= 0 for d in drops)
    assert max(drops) == pytest.approx(2.5 / 200)
    assert sched.guidance_end == 80


def test_heaviside_switch() -> None:
    kw = {"schedule": "heaviside", "total_steps": 100, "switch_step": 35}
    assert [inheritance_rate(t, **kw) for t in (0, 34, 35, 36, 100)] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert InheritanceSchedule(kind="heaviside", total_steps=100, switch_step=35).guidance_end == 35
    assert inheritance_rate(0, schedule="heaviside", total_steps=100, switch_step=0) == 0.0


def test_constant() -> None:
    assert inheritance_rate(0, schedule="constant", total_steps=10) == 0.5  # paper's 1 : 1
    assert inheritance_rate(7, schedule="constant", total_steps=10, constant=0.2) == 0.2
    assert InheritanceSchedule(kind="constant", total_steps=10, constant=0.0).guidance_end == 0
    assert InheritanceSchedule(kind="constant", total_steps=10).guidance_end == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cosine", "total_steps": 10, "alpha_T": 1.0}, "unknown schedule"),
        ({"total_steps": 10}, "needs alpha_T or guided_steps"),
        ({"total_steps": 10, "alpha_T": 1.0, "guided_steps": 5}, "not both"),
        ({"total_steps": 0, "alpha_T": 1.0}, "total_steps"),
        ({"total_steps": 10, "alpha_T": 0.0}, "alpha_T"),
        ({"total_steps": 10, "alpha_T": math.inf}, "alpha_T"),
        ({"total_steps": 10, "guided_steps": 0}, "guided_steps"),
        ({"total_steps": 10, "guided_steps": 2.5}, "guided_steps"),
        ({"schedule": "heaviside", "total_steps": 10}, "switch_step"),
        ({"schedule": "heaviside", "total_steps": 10, "switch_step": -1}, "switch_step"),
        ({"schedule": "heaviside", "total_steps": 10, "switch_step": 3, "alpha_T": 1.0}, "apply"),
        ({"schedule": "constant", "total_steps": 10, "constant": 1.5}, "constant"),
        ({"schedule": "constant", "total_steps": 10, "switch_step": 3}, "heaviside"),
        ({"schedule": "auto", "total_steps": 10}, "AutoInheritance"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        inheritance_rate(1, **kwargs)


@pytest.mark.parametrize("step", [-1, 1.5, True])
def test_bad_step(step: object) -> None:
    with pytest.raises(ValueError, match="step"):
        inheritance_rate(step, total_steps=10, alpha_T=1.0)  # type: ignore[arg-type]


def test_schedule_dict_round_trip() -> None:
    for sched in (
        InheritanceSchedule(kind="linear", total_steps=125_000, guided_steps=35_000),
        InheritanceSchedule(kind="heaviside", total_steps=100, switch_step=35),
        InheritanceSchedule(kind="auto", total_steps=500, alpha_T=1.5, margin=0.02, patience=2),
    ):
        again = InheritanceSchedule.from_dict(json.loads(json.dumps(sched.to_dict())))
        assert again == sched
    with pytest.raises(ValueError, match="unknown schedule fields"):
        InheritanceSchedule.from_dict({"kind": "constant", "total_steps": 3, "slope": 1})
    with pytest.raises(ValueError, match="kind and total_steps"):
        InheritanceSchedule.from_dict({"kind": "constant"})


def test_guided_steps_for_table6() -> None:
    def mlm(t: int, s: int, total: int) -> int:
        return guided_steps_for(t, s, total, objective="mlm")

    assert mlm(9, 12, 125_000) == 35_000  # MEDIUM → BASE
    assert mlm(4, 12, 125_000) == 22_000  # H_4 → BASE
    assert mlm(12, 24, 125_000) == 40_000  # BASE → LARGE
    assert mlm(18, 24, 125_000) == 65_000  # BASE_PLUS → LARGE
    assert mlm(9, 12, 1_000) == 280  # the same ratio at another length
    # Between the depth-ablation points, and deeper teachers guide longer.
    assert mlm(5, 12, 125_000) == 28_500
    series = [mlm(h, 12, 10_000) for h in (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12)]
    assert series == sorted(series)
    assert mlm(12, 12, 1000) == 520  # beyond the evidence: the last fraction
    assert mlm(1, 200, 10) == 1  # at least one step
    with pytest.raises(ValueError, match="teacher_layers"):
        mlm(0, 12, 100)
    with pytest.raises(ValueError, match="total_steps"):
        mlm(6, 12, 0)
    with pytest.raises(ValueError, match="objective"):
        guided_steps_for(6, 12, 100, objective="seq2seq")


def test_guided_steps_for_gpt_rows() -> None:
    """Causal LMs take papers/003's GPT rows (T = 62.5k), not RoBERTa's fractions."""

    def clm(t: int, s: int, total: int) -> int:
        return guided_steps_for(t, s, total, objective="clm")

    assert clm(9, 12, 62_500) == 10_000  # GPT_73M → GPT_124M (RoBERTa's row: 17,500)
    assert clm(12, 18, 62_500) == 15_000  # GPT_124M → GPT_209M (RoBERTa's row: 27,500)
    assert clm(36, 40, 62_500) == 20_000
    assert guided_steps_for(12, 18, 125_000, objective="mlm") == 55_000
    # Unlisted pairs: the MLM curve scaled to the GPT rows (shorter, still monotone in depth).
    series = [clm(h, 12, 10_000) for h in (1, 2, 4, 6, 8, 10, 11)]
    assert series == sorted(series)
    assert all(
        clm(h, 12, 10_000) < guided_steps_for(h, 12, 10_000, objective="mlm") for h in (2, 5, 7)
    )
    assert clm(2, 4, 600) == 98  # the benchmarks' 2 → 4 layer pair (MLM: 168)


def _auto(**kw: object) -> AutoInheritance:
    args: dict = {"kind": "auto", "total_steps": 1000, "anneal_steps": 50} | kw
    return AutoInheritance(InheritanceSchedule(**args))


def _losses(ppl: float, blocks: int = 16, spread: float = 0.0, seed: int = 0) -> list[float]:
    """Per-block summed losses of 10 targets each whose mean is log(ppl); ``spread``: the
    per-block noise (nats per target), zero-mean over the blocks."""
    noise = np.random.default_rng(seed).normal(0.0, spread, blocks)
    return list(10 * (math.log(ppl) + noise - noise.mean()))


def _observe(auto: AutoInheritance, step: int, student: float, teacher: float, **kw: Any) -> Any:
    blocks = kw.get("blocks", 16)
    return auto.observe(
        step, _losses(student, **kw), _losses(teacher, blocks=blocks), [10] * blocks
    )


def test_auto_stays_at_base_while_teacher_better() -> None:
    flat, linear = _auto(), _auto(guided_steps=800)
    for step in range(0, 600, 20):
        _observe(flat, step, 20.0 - step / 100, 12.0)
        _observe(linear, step, 20.0 - step / 100, 12.0)
    assert flat.anneal_start is None and flat.events == ()
    assert all(flat.rate(t) == 1.0 for t in range(1000))
    assert all(linear.rate(t) == linear.schedule.rate(t) for t in range(1000))


@pytest.mark.parametrize("base", [{}, {"alpha_T": 1.25}])
def test_auto_anneals_smoothly_after_surpassing(base: dict) -> None:
    auto = _auto(patience=2, **base)
    ppl = {0: 5.0, 100: 15.0, 200: 9.0, 300: 11.0, 400: 9.5, 500: 9.0}
    for step, student in ppl.items():
        _observe(auto, step, student, 10.0)
    assert [(e.step, e.reason) for e in auto.events] == [
        (200, "student_ahead"),  # step 0 (far ahead: 5 vs 10) never counts
        (300, "streak_reset"),
        (400, "student_ahead"),
        (500, "anneal_start"),
    ]
    assert auto.events[-1].gap == pytest.approx(math.log(9.0 / 10.0))
    assert auto.events[-1].student_ppl == pytest.approx(9.0)
    assert auto.anneal_start == 500
    rates = [auto.rate(t) for t in range(1001)]
    assert rates[500] == auto.schedule.rate(500)  # no cliff at the switch
    drops = [a - b for a, b in itertools.pairwise(rates)]
    assert all(d >= -1e-12 for d in drops)  # never rises
    assert max(drops) <= 1 / 50 + 1e-12  # no step drops by more than 1 / anneal_steps
    assert rates[550] == 0.0 and rates[549] > 0.0
    assert all(r == 0.0 for r in rates[550:])


def test_auto_margin_and_once_annealed_stays() -> None:
    auto = _auto(margin=0.1, patience=1)
    _observe(auto, 10, 9.5, 10.0)  # ahead, but not by 10 %
    assert auto.anneal_start is None
    _observe(auto, 20, 8.9, 10.0)
    assert auto.anneal_start == 20
    assert _observe(auto, 30, 50.0, 10.0) is None  # the anneal is final
    assert auto.rate(100) == 0.0


def test_auto_needs_the_gap_beyond_its_standard_error() -> None:
    """The same mean gap (student 3 % ahead) is a decision only when the blocks agree on it."""
    noisy, clear = _auto(patience=1), _auto(patience=1)
    for step in (10, 20, 30):
        _observe(noisy, step, 9.7, 10.0, spread=0.5, seed=step)  # SE ≈ 0.13 nats > gap 0.03
        _observe(clear, step, 9.7, 10.0, spread=0.01, seed=step)
    assert noisy.events == () and noisy.anneal_start is None
    assert clear.anneal_start == 10
    assert clear.events[0].se < 0.01 and clear.events[0].gap == pytest.approx(math.log(0.97))


def test_auto_identical_models_never_surpass() -> None:
    """A student computing its teacher's function up to float noise (FPI growth) is not ahead,
    however small the noise: the practical margin holds even when the SE is ~1e-8."""
    auto = _auto(patience=1)
    rng = np.random.default_rng(0)
    teacher = _losses(50.0, spread=0.3)
    for step in range(0, 200, 10):
        student = list(np.asarray(teacher) - np.abs(rng.normal(0, 1e-6, 16)))  # always lower
        auto.observe(step, student, teacher, [10] * 16)
    assert auto.events == () and auto.anneal_start is None


def test_paired_gap_is_the_cluster_robust_ratio_estimate() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(5, 15, 40)
    teacher = rng.normal(4.0, 0.3, 40) * counts
    student = teacher + rng.normal(-0.05, 0.1, 40) * counts
    gap, se = paired_gap(student, teacher, counts)
    d = student - teacher
    assert gap == pytest.approx(d.sum() / counts.sum())
    resid = d - gap * counts
    assert se == pytest.approx(np.sqrt(40 / 39 * (resid**2).sum()) / counts.sum())
    # Equal counts: the plain standard error of the per-block mean differences.
    even = np.full(40, 10)
    gap, se = paired_gap(student, teacher, even)
    per_block = (student - teacher) / 10
    assert se == pytest.approx(per_block.std(ddof=1) / np.sqrt(40))
    assert paired_gap(teacher, teacher, counts) == (0.0, 0.0)
    assert paired_gap([1.0], [2.0], [4]) == (-0.25, math.inf)  # one block: no evidence


def test_auto_bad_observations() -> None:
    auto = _auto(patience=2)
    assert _observe(auto, 10, 5.0, 6.0) is not None
    assert _observe(auto, 10, 5.0, 6.0) is None  # a re-evaluation of the same step counts once
    assert auto.anneal_start is None
    with pytest.raises(ValueError, match="move forward"):
        _observe(auto, 9, 5.0, 6.0)
    with pytest.raises(ValueError, match="finite"):
        auto.observe(20, [float("nan")] * 2, [1.0, 1.0], [1, 1])
    with pytest.raises(ValueError, match="equal"):
        auto.observe(20, [1.0, 2.0], [1.0], [1, 1])
    with pytest.raises(ValueError, match="targets"):
        auto.observe(20, [1.0], [1.0], [0])
    with pytest.raises(ValueError, match="auto schedule"):
        AutoInheritance(InheritanceSchedule(kind="constant", total_steps=10))
    with pytest.raises(ValueError, match="z must"):
        InheritanceSchedule(kind="auto", total_steps=10, z=-1.0)


def test_auto_resume_gives_identical_rates() -> None:
    observations = [(s, 20.0 - s / 80, 12.0) for s in range(0, 1000, 25)]
    straight = _auto(alpha_T=0.8, patience=3, margin=0.05)
    for obs in observations:
        _observe(straight, *obs)
    first = _auto(alpha_T=0.8, patience=3, margin=0.05)
    for obs in observations[:29]:  # stop mid-streak: ahead at 700, patience 3
        _observe(first, *obs)
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = _auto(alpha_T=0.8, patience=3, margin=0.05)
    resumed.load_state_dict(saved)
    for obs in observations[29:]:
        _observe(resumed, *obs)
    assert first.state_dict()["streak"] == 1
    assert straight.anneal_start == 750
    assert resumed.events == straight.events
    assert [resumed.rate(t) for t in range(1001)] == [straight.rate(t) for t in range(1001)]
    with pytest.raises(ValueError, match="different schedule"):
        _auto(alpha_T=0.9).load_state_dict(saved)

"""Comparing runs the way the paper does (pure): steps to reach a target perplexity, savings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def curve(history: Sequence[Mapping[str, float]], domain: str) -> tuple[list[int], list[float]]:
    """(steps, ppl) of one domain from a training history (rows with ``step`` and ``ppl/<d>``)."""
    rows = [r for r in history if f"ppl/{domain}" in r]
    return [int(r["step"]) for r in rows], [float(r[f"ppl/{domain}"]) for r in rows]


def steps_to_reach(
    history: Sequence[Mapping[str, float]], domain: str, target: float
) -> int | None:
    """First evaluated step whose perplexity is at or below ``target``; None if never reached.

    Linear interpolation between evaluations (in step, on log-perplexity) so coarse evaluation
    intervals do not round every run up to the same beat.
    """
    import math

    steps, ppls = curve(history, domain)
    for i, (s, p) in enumerate(zip(steps, ppls, strict=True)):
        if p <= target:
            if i == 0:
                return s
            s0, p0 = steps[i - 1], ppls[i - 1]
            frac = (math.log(p0) - math.log(target)) / max(math.log(p0) - math.log(p), 1e-12)
            return round(s0 + frac * (s - s0))
    return None


def saving(baseline_steps: int, steps: int | None) -> float | None:
    """Share of the baseline's steps saved (0.27 = 27 % fewer); None when never reached."""
    return None if steps is None else 1 - steps / baseline_steps

"""The inheritance rate α_t: how much the student trusts its teacher at step t (papers/001).

Eq. 3 weighs the losses as (1 − α_t)·L_SELF + α_t·L_KI. The paper's schedules (§2, §3.1):

- ``linear`` α_t = max(1 − α_T·t/T, 0): guidance fades out and ends at step T/α_T (the paper's
  choice; Table 6 states the guided duration G, i.e. α_T = T/G);
- ``heaviside`` α_t = 1 before a switch step, 0 from it on;
- ``constant`` α_t = c (the paper's "1 : 1" is c = 0.5).

``auto`` goes beyond the paper, whose limitation (1) is that α_T must be guessed: it holds α at
its base (a linear schedule, or 1) while the teacher is better on held-out data and anneals α
to 0 once the student has surpassed it (``AutoInheritance``). "Surpassed" is a paired test on
the same held-out targets: the student's mean loss must be below the teacher's by more than
``z`` standard errors and by a practical margin, at ``patience`` consecutive evaluations after
step 0 (a student grown from its teacher by FPI computes the same function, and must not end
guidance on float noise). Everything here is pure or, for ``AutoInheritance``, stateful without
I/O; the trainer measures both models at the same precision and logs the events.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SCHEDULE_KINDS",
    "TABLE6",
    "AutoInheritance",
    "InheritanceEvent",
    "InheritanceSchedule",
    "guided_steps_for",
    "inheritance_rate",
    "paired_gap",
]

SCHEDULE_KINDS = ("linear", "heaviside", "constant", "auto")

# papers/001 App. B, Table 6: steps of teacher-guided learning for RoBERTa (MLM), all runs 125k
# steps in total (§3.1 "All models are pre-trained for 125k steps"). Rows: (teacher layers,
# student layers, guided steps, total steps, the pair). Keyed by depth, so the width ablation
# (RoBERTa_D_d → BASE, 12 → 12 layers, 28k–85k) is left out — depth cannot tell those apart.
_TABLE6_MLM: tuple[tuple[int, int, int, int, str], ...] = (
    (4, 12, 22_000, 125_000, "RoBERTa_H_4 → BASE"),
    (6, 12, 35_000, 125_000, "RoBERTa_H_6 → BASE"),
    (8, 12, 55_000, 125_000, "RoBERTa_H_8 → BASE"),
    (9, 12, 35_000, 125_000, "RoBERTa_MEDIUM (9 layers, width 576) → BASE"),
    (10, 12, 65_000, 125_000, "RoBERTa_H_10 → BASE"),
    (12, 18, 55_000, 125_000, "RoBERTa_BASE → BASE_PLUS"),
    (12, 24, 40_000, 125_000, "RoBERTa_BASE → LARGE"),
    (18, 24, 65_000, 125_000, "RoBERTa_BASE_PLUS → LARGE"),
)
# papers/003 (NAACL version) Table 7, the GPT (causal LM) rows. The paper states the teachers'
# budget, 62.5k steps at batch 2,048 (§4.1 "All the teacher models are pre-trained for 62.5k
# steps"), not the students'; we take the students' T to be the same 62.5k.
_TABLE6_CLM: tuple[tuple[int, int, int, int, str], ...] = (
    (9, 12, 10_000, 62_500, "GPT_73M → GPT_124M"),
    (12, 18, 15_000, 62_500, "GPT_124M → GPT_209M"),
    (18, 24, 18_000, 62_500, "GPT_209M → GPT_354M"),
    (24, 36, 16_000, 62_500, "GPT_354M → GPT_773M"),
    (36, 40, 20_000, 62_500, "GPT_773M → GPT_1B"),
)
# Other depth pairs (MLM): the guided fraction G/T as a function of the depth ratio
# teacher/student, read off the depth ablation H_4..H_10 → BASE (the rows where only the
# teacher's depth changes): 22k, 35k, 55k, 65k of 125k. (0, 0): no teacher, no guidance. Past
# the last point the paper has no evidence, so the fraction stays at its last value.
_DEPTH_RATIO_TO_FRACTION: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (4 / 12, 22 / 125),
    (6 / 12, 35 / 125),
    (8 / 12, 55 / 125),
    (10 / 12, 65 / 125),
)


def _mlm_curve(ratio: float) -> float:
    """The MLM guided fraction at depth ratio teacher/student (piecewise linear)."""
    points = _DEPTH_RATIO_TO_FRACTION
    for (r0, f0), (r1, f1) in itertools.pairwise(points):
        if ratio <= r1:
            return f0 + (f1 - f0) * (ratio - r0) / (r1 - r0)
    return points[-1][1]


# The GPT rows guide for a shorter share of the run than the RoBERTa curve at the same depth
# ratio, and show no trend of their own over their narrow range of ratios (2/3 – 0.9): other
# causal pairs take the MLM curve scaled by the median ratio of the GPT rows to it (≈ 0.58).
_CLM_SCALE = statistics.median(g / t / _mlm_curve(tl / sl) for tl, sl, g, t, _ in _TABLE6_CLM)
TABLE6 = {"mlm": _TABLE6_MLM, "clm": _TABLE6_CLM}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_step(step: object) -> int:
    if not _is_int(step) or step < 0:  # type: ignore[operator]
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    return step  # type: ignore[return-value]


def guided_steps_for(
    teacher_layers: int, student_layers: int, total_steps: int, *, objective: str
) -> int:
    """Default teacher-guided duration G (papers/001 Table 6, papers/003 Table 7) for a run of
    ``total_steps``, per objective: the RoBERTa rows for ``"mlm"``, the GPT rows for ``"clm"``.

    A depth pair listed for the objective gets its own ratio G/T; any other pair the ratio
    interpolated over the depth ratio teacher/student (deeper teachers guide longer), scaled
    for causal LMs to their rows (``_CLM_SCALE``). Returns an int in [1, total_steps].
    """
    for name, value in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if objective not in TABLE6:
        raise ValueError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    rows = TABLE6[objective]
    fractions = [g / t for tl, sl, g, t, _ in rows if (tl, sl) == (teacher_layers, student_layers)]
    if fractions:
        fraction = fractions[0]
    else:
        fraction = _mlm_curve(teacher_layers / student_layers)
        if objective == "clm":
            fraction *= _CLM_SCALE
    return min(max(round(fraction * total_steps), 1), total_steps)


@dataclass(frozen=True, kw_only=True)
class InheritanceSchedule:
    """A planned inheritance-rate schedule; plans and the trainer store it (``to_dict``)."""

    kind: str  # one of SCHEDULE_KINDS
    total_steps: int  # T, the student's planned number of training steps
    alpha_T: float | None = None  # linear (auto: optional base): guidance ends at step T/α_T
    guided_steps: int | None = None  # linear (auto: optional base): instead of α_T, ends at G
    switch_step: int | None = None  # heaviside: α = 1 before this step, 0 from it on
    constant: float = 0.5  # constant: α at every step (paper's 1 : 1 = 0.5)
    margin: float = 0.01  # auto: student PPL must be below teacher PPL × (1 − margin) ...
    z: float = 2.0  # auto: ... and its mean loss below the teacher's by z standard errors ...
    patience: int = 2  # auto: ... at this many consecutive observations (step 0 never counts)
    anneal_steps: int | None = None  # auto: steps from surpassing to α = 0 (None: T // 10)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.kind!r} (known: {', '.join(SCHEDULE_KINDS)})")
        if not _is_int(self.total_steps) or self.total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {self.total_steps!r}")
        if self.alpha_T is not None and not (math.isfinite(self.alpha_T) and self.alpha_T > 0):
            raise ValueError(f"alpha_T must be a positive number, got {self.alpha_T!r}")
        if self.guided_steps is not None and (
            not _is_int(self.guided_steps) or self.guided_steps < 1
        ):
            raise ValueError(f"guided_steps must be an integer >= 1, got {self.guided_steps!r}")
        slope_given = (self.alpha_T is not None) + (self.guided_steps is not None)
        if slope_given == 2:
            raise ValueError("give alpha_T or guided_steps, not both (alpha_T = T / guided_steps)")
        if self.kind == "linear" and slope_given == 0:
            raise ValueError("the linear schedule needs alpha_T or guided_steps")
        if self.kind in ("heaviside", "constant") and slope_given:
            raise ValueError(f"alpha_T / guided_steps do not apply to the {self.kind} schedule")
        if self.kind == "heaviside":
            if not _is_int(self.switch_step) or self.switch_step < 0:  # type: ignore[operator]
                raise ValueError(f"heaviside needs switch_step >= 0, got {self.switch_step!r}")
        elif self.switch_step is not None:
            raise ValueError(f"switch_step applies only to heaviside, not {self.kind}")
        if not 0.0 <= self.constant <= 1.0:
            raise ValueError(f"constant must lie in [0, 1], got {self.constant!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must lie in [0, 1), got {self.margin!r}")
        if not (math.isfinite(self.z) and self.z >= 0):
            raise ValueError(f"z must be a number >= 0, got {self.z!r}")
        if not _is_int(self.patience) or self.patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
        if self.anneal_steps is not None and (
            not _is_int(self.anneal_steps) or self.anneal_steps < 1
        ):
            raise ValueError(f"anneal_steps must be an integer >= 1, got {self.anneal_steps!r}")

    def rate(self, step: int) -> float:
        """α_t at ``step`` (>= 0; past ``total_steps`` the formula carries on).

        For ``auto`` this is the base rate, before any observation: ``AutoInheritance`` gives
        the adaptive one.
        """
        t = _check_step(step)
        if self.kind == "heaviside":
            assert self.switch_step is not None
            return 1.0 if t < self.switch_step else 0.0
        if self.kind == "constant":
            return float(self.constant)
        if self.guided_steps is not None:
            return max(1.0 - t / self.guided_steps, 0.0)
        if self.alpha_T is not None:
            return max(1.0 - self.alpha_T * t / self.total_steps, 0.0)
        return 1.0  # auto without a linear base

    @property
    def guidance_end(self) -> int:
        """The step from which α_t = 0 for the rest of the run (``total_steps`` if it never is).

        For ``auto`` it is the base's end: an upper bound, the student may surpass earlier.
        """
        if self.kind == "heaviside":
            assert self.switch_step is not None
            end = self.switch_step
        elif self.kind == "constant":
            end = 0 if self.constant == 0 else self.total_steps
        elif self.guided_steps is not None:
            end = self.guided_steps
        elif self.alpha_T is not None:
            end = math.ceil(self.total_steps / self.alpha_T)
        else:
            end = self.total_steps
        return min(end, self.total_steps)

    @property
    def anneal_length(self) -> int:
        """Auto: steps from surpassing the teacher to α = 0."""
        return (
            self.anneal_steps if self.anneal_steps is not None else max(self.total_steps // 10, 1)
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InheritanceSchedule:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown schedule fields: {', '.join(sorted(unknown))}")
        if "kind" not in data or "total_steps" not in data:
            raise ValueError("a schedule needs at least kind and total_steps")
        return cls(**data)

    @classmethod
    def from_options(
        cls, options: dict[str, Any], *, total_steps: int, default_steps: int
    ) -> InheritanceSchedule:
        """A teacher's schedule from ``--schedule key=value`` fields (``kind`` defaults to
        linear) over the defaults: linear/auto guided for ``default_steps``, heaviside switching
        there. ValueError names the bad field (``total_steps`` is the run's, not an option)."""
        params = dict(options)
        unknown = set(params) - {f.name for f in dataclasses.fields(cls)} - {"total_steps"}
        if unknown or "total_steps" in params:
            bad = ", ".join(sorted(unknown | ({"total_steps"} & set(params))))
            raise ValueError(f"unknown schedule fields: {bad}")
        kind = params.pop("kind", "linear")
        if kind in ("linear", "auto") and "alpha_T" not in params and "guided_steps" not in params:
            params["guided_steps"] = default_steps
        elif kind == "heaviside":
            params.setdefault("switch_step", default_steps)
        try:
            return cls(kind=kind, total_steps=total_steps, **params)
        except TypeError as exc:  # a value of the wrong type, e.g. constant=abc
            raise ValueError(f"bad schedule value ({exc})") from exc


def inheritance_rate(
    step: int,
    *,
    schedule: str = "linear",
    total_steps: int,
    alpha_T: float | None = None,
    guided_steps: int | None = None,
    switch_step: int | None = None,
    constant: float = 0.5,
) -> float:
    """α_t at ``step`` for the paper's schedules (``linear``, ``heaviside``, ``constant``).

    linear: max(1 − α_T·t/T, 0), or with ``guided_steps`` G: max(1 − t/G, 0) (α_T = T/G).
    """
    if schedule == "auto":
        raise ValueError("the auto schedule depends on observations: use AutoInheritance")
    plan = InheritanceSchedule(
        kind=schedule,
        total_steps=total_steps,
        alpha_T=alpha_T,
        guided_steps=guided_steps,
        switch_step=switch_step,
        constant=constant,
    )
    return plan.rate(step)


def paired_gap(
    student: Sequence[float], teacher: Sequence[float], counts: Sequence[int]
) -> tuple[float, float]:
    """Mean per-target loss difference student − teacher (nats) on the same targets, and its
    standard error.

    ``student``/``teacher``: [B] summed cross-entropy of each held-out block, ``counts``: [B]
    targets per block. Tokens of one block are not independent, so the error treats blocks as
    clusters (the ratio estimator's cluster-robust variance): with d_b the block's summed
    difference, n_b its targets, N = Σ n_b and m = Σ d_b / N,
    SE = sqrt(B / (B − 1) · Σ (d_b − m·n_b)²) / N. One block: SE = inf (no evidence).
    """
    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if not (s.shape == t.shape == n.shape and s.ndim == 1 and len(s) > 0):
        raise ValueError(f"need equal, non-empty [B] arrays, got {s.shape}, {t.shape}, {n.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))) or np.any(n < 0) or n.sum() <= 0:
        raise ValueError("losses must be finite and the blocks must hold targets")
    total = float(n.sum())
    d = s - t
    mean = float(d.sum()) / total
    blocks = len(d)
    if blocks < 2:
        return mean, math.inf
    resid = d - mean * n
    return mean, math.sqrt(blocks / (blocks - 1) * float(resid @ resid)) / total


@dataclass(frozen=True)
class InheritanceEvent:
    """A change in an auto schedule's state, for the trainer to log."""

    step: int
    reason: str  # "student_ahead" (a streak begins), "streak_reset", "anneal_start"
    student_ppl: float
    teacher_ppl: float
    gap: float = math.nan  # mean loss difference student − teacher (nats); < 0: student ahead
    se: float = math.nan  # its standard error


@dataclass
class _AutoState:
    streak: int = 0  # consecutive observations with the student ahead
    anneal_start: int | None = None  # step at which annealing began
    last_step: int | None = None  # last observed step
    events: list[InheritanceEvent] = field(default_factory=list)


class AutoInheritance:
    """Adaptive α_t for one teacher: base rate while the teacher is better, then a linear
    anneal to 0 over ``anneal_length`` steps once the student has surpassed it.

    The trainer calls ``observe`` at evaluation intervals with both models' per-block losses
    on the same held-out targets of that teacher's shards (measured at the same precision), and
    ``rate`` every step. The student is ahead when its mean loss is below the teacher's by
    more than ``z`` standard errors (``paired_gap``) and by log(1 − margin) nats; after
    ``patience`` such evaluations in a row the anneal begins, and is final. Step 0 never counts:
    nothing has been trained, so "ahead" there only says how the student was initialised. α
    never drops by more than 1/anneal_length per step beyond the base's own slope.
    """

    def __init__(self, schedule: InheritanceSchedule) -> None:
        if schedule.kind != "auto":
            raise ValueError(f"AutoInheritance needs an auto schedule, got {schedule.kind!r}")
        self.schedule = schedule
        self._state = _AutoState()

    @property
    def events(self) -> tuple[InheritanceEvent, ...]:
        return tuple(self._state.events)

    @property
    def anneal_start(self) -> int | None:
        return self._state.anneal_start

    def ahead(self, gap: float, se: float) -> bool:
        """Is a student with mean loss difference ``gap`` ± ``se`` ahead of its teacher?"""
        return gap + self.schedule.z * se < math.log1p(-self.schedule.margin)

    def observe(
        self,
        step: int,
        student: Sequence[float],
        teacher: Sequence[float],
        counts: Sequence[int],
    ) -> InheritanceEvent | None:
        """Record an evaluation at ``step``: per-block summed losses of the student and the
        teacher on the same targets, ``counts`` targets per block. Returns the event it caused.

        Step 0 and a second observation at the last observed step (a resumed run re-evaluating
        its last step, so one evaluation never counts twice) are ignored.
        """
        t = _check_step(step)
        gap, se = paired_gap(student, teacher, counts)
        st = self._state
        if st.last_step is not None and t < st.last_step:
            raise ValueError(f"observations must move forward: step {t} after {st.last_step}")
        if t == 0 or t == st.last_step or st.anneal_start is not None:
            st.last_step = t
            return None
        st.last_step = t
        reason: str | None = None
        if self.ahead(gap, se):
            st.streak += 1
            if st.streak >= self.schedule.patience:
                st.anneal_start, reason = t, "anneal_start"
            elif st.streak == 1:
                reason = "student_ahead"
        elif st.streak:
            st.streak, reason = 0, "streak_reset"
        if reason is None:
            return None
        total = float(np.sum(counts))
        event = InheritanceEvent(
            t,
            reason,
            student_ppl=math.exp(float(np.sum(student)) / total),
            teacher_ppl=math.exp(float(np.sum(teacher)) / total),
            gap=gap,
            se=se,
        )
        st.events.append(event)
        return event

    def rate(self, step: int) -> float:
        """α_t: the base rate, capped after the anneal start by a linear ramp to 0."""
        base = self.schedule.rate(step)
        start = self._state.anneal_start
        if start is None or step <= start:
            return base
        ramp = max(1.0 - (step - start) / self.schedule.anneal_length, 0.0)
        return min(base, self.schedule.rate(start) * ramp)

    def state_dict(self) -> dict[str, Any]:
        """Plain (JSON-ready) state for an exact resume."""
        st = self._state
        return {
            "schedule": self.schedule.to_dict(),
            "streak": st.streak,
            "anneal_start": st.anneal_start,
            "last_step": st.last_step,
            "events": [dataclasses.asdict(e) for e in st.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if InheritanceSchedule.from_dict(state["schedule"]) != self.schedule:
            raise ValueError("state was saved for a different schedule")
        self._state = _AutoState(
            streak=int(state["streak"]),
            anneal_start=state["anneal_start"],
            last_step=state["last_step"],
            events=[InheritanceEvent(**e) for e in state["events"]],
        )

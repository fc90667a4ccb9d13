"""Inheritance plans: which teacher teaches each training shard, and how (papers/001 Eq. 4).

A plan fixes, for one student and the train shards of some domains, the teacher the router
chose per shard (or none: self-learning, α = 0) with the scores that chose it, each teacher's
inheritance-rate schedule (default: linear, guided for the Table 6 duration of its depth
pair), the total steps, the temperature τ and the top-K of the teacher's cached logits. The
spec is a versioned JSON-ready dict stored in the registry; ``PlanSpec`` validates it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lineage.errors import LineageError
from lineage.files import check_name
from lineage.inherit.schedules import SCHEDULE_KINDS, InheritanceSchedule, guided_steps_for
from lineage.registry.entities import Model, Plan, Shard
from lineage.registry.modelinfo import ENCODER, check_has_lm_head
from lineage.routing.router import Assignment, Router, RouterWeights

if TYPE_CHECKING:
    from lineage.registry.store import Registry
    from lineage.workspace import Workspace

__all__ = ["PLAN_VERSION", "PlanSpec", "ShardPlan", "create_plan", "load_plan", "make_schedule"]

PLAN_VERSION = 1  # bump when the spec's layout changes


@dataclass(frozen=True)
class ShardPlan:
    """One train shard of the plan: its teacher (None: self-learning) and that teacher's α_t."""

    shard_id: int
    domain: str  # the domain the shard belongs to
    name: str
    path: str
    nearest_domain: str | None  # the router's nearest domain for the shard
    proximity: float
    teacher: str | None
    schedule: dict[str, Any] | None  # InheritanceSchedule.to_dict(); None without a teacher
    guided_steps: int  # steps with α_t > 0 (0 without a teacher)
    scores: tuple[dict[str, Any], ...] = ()  # CandidateScore.to_dict(), best first

    def __post_init__(self) -> None:
        if (self.teacher is None) != (self.schedule is None):
            raise ValueError(f"shard {self.name!r}: a schedule goes with a teacher, and only then")
        if self.schedule is not None:
            guided = InheritanceSchedule.from_dict(self.schedule).guidance_end
            if guided != self.guided_steps:
                raise ValueError(
                    f"shard {self.name!r}: guided_steps {self.guided_steps} != {guided}"
                )
        elif self.guided_steps != 0:
            raise ValueError(f"shard {self.name!r}: no teacher, so guided_steps must be 0")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = [dict(s) for s in self.scores]
        return out


@dataclass(frozen=True)
class PlanSpec:
    """A validated plan spec; ``to_dict`` is what the registry stores."""

    student: str
    domains: tuple[str, ...]
    steps: int  # total training steps T of the student
    temperature: float  # τ of the KI term
    top_k: int  # teacher logits kept per position (papers/001 §3.1: K = 10 loses little)
    teachers: str | tuple[str, ...]  # "auto" (every compatible model) or the names offered
    schedule: str  # kind of every teacher's schedule (lineage.inherit.schedules.SCHEDULE_KINDS)
    schedule_params: dict[str, Any]  # overrides of the defaults, as given
    shards: tuple[ShardPlan, ...]
    weights: dict[str, float] = field(default_factory=lambda: RouterWeights().to_dict())
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise ValueError(f"unsupported plan version {self.version!r} (this is {PLAN_VERSION})")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.schedule!r} ({', '.join(SCHEDULE_KINDS)})")
        if not self.domains or not self.shards:
            raise ValueError("a plan needs at least one domain and one shard")
        if isinstance(self.teachers, str) and self.teachers != "auto":
            raise ValueError(f"teachers must be 'auto' or a list of names, got {self.teachers!r}")
        RouterWeights(**self.weights)
        for shard in self.shards:
            if shard.teacher == self.student:
                raise ValueError(f"shard {shard.name!r}: the student cannot teach itself")
            if shard.schedule is not None and shard.schedule["total_steps"] != self.steps:
                raise ValueError(f"shard {shard.name!r}: schedule total_steps != {self.steps}")
        self.schedules()  # one schedule per teacher

    def schedules(self) -> dict[str, InheritanceSchedule]:
        """Each teacher's schedule (what the trainer takes), checked equal across its shards."""
        out: dict[str, InheritanceSchedule] = {}
        for shard in self.shards:
            if shard.teacher is None or shard.schedule is None:
                continue
            sched = InheritanceSchedule.from_dict(shard.schedule)
            if out.setdefault(shard.teacher, sched) != sched:
                raise ValueError(f"teacher {shard.teacher!r} has different schedules across shards")
        return out

    @property
    def teachers_used(self) -> list[str]:
        """Teachers that teach at least one shard, in first-use order."""
        return list(dict.fromkeys(s.teacher for s in self.shards if s.teacher is not None))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["domains"] = list(self.domains)
        out["teachers"] = self.teachers if isinstance(self.teachers, str) else list(self.teachers)
        out["shards"] = [s.to_dict() for s in self.shards]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanSpec:
        """Inverse of ``to_dict``; ValueError for a malformed or unknown-version spec."""
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"unsupported plan version {data.get('version')!r}")
        try:
            shards = tuple(
                ShardPlan(**{**s, "scores": tuple(s.get("scores", ()))}) for s in data["shards"]
            )
            teachers = data["teachers"]
            return cls(
                **{k: v for k, v in data.items() if k not in ("shards", "domains", "teachers")},
                domains=tuple(data["domains"]),
                teachers=teachers if isinstance(teachers, str) else tuple(teachers),
                shards=shards,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed plan spec: {exc}") from exc


def make_schedule(
    kind: str, params: Mapping[str, Any], *, teacher: Model, student: Model, steps: int
) -> InheritanceSchedule:
    """A teacher's schedule: ``params`` over the defaults (linear, and auto's base: guided for
    the Table 6 duration of the depth pair and the student's objective; heaviside: switch at
    that step; constant: c = 0.5)."""
    given = dict(params)
    default = guided_steps_for(teacher.layers, student.layers, steps, objective=student.objective)
    if kind in ("linear", "auto") and "alpha_T" not in given:
        given.setdefault("guided_steps", default)
    elif kind == "heaviside":
        given.setdefault("switch_step", default)
    try:
        return InheritanceSchedule(kind=kind, total_steps=steps, **given)
    except (TypeError, ValueError) as exc:
        raise LineageError(f"bad {kind} schedule parameters {dict(params)}: {exc}") from exc


def _check_tokenizers(teacher: Model, student: Model) -> None:
    check_has_lm_head(teacher.name, teacher.objective, "a KI teacher")
    check_has_lm_head(student.name, student.objective, "a KI student")
    if teacher.tokenizer_fingerprint is None or student.tokenizer_fingerprint is None:
        missing = teacher.name if teacher.tokenizer_fingerprint is None else student.name
        raise LineageError(
            f"model {missing!r} has no tokenizer fingerprint: cannot check that "
            f"teacher {teacher.name!r} and student {student.name!r} share one"
        )
    if teacher.tokenizer_fingerprint != student.tokenizer_fingerprint:
        raise LineageError(
            f"teacher {teacher.name!r} (tokenizer {teacher.tokenizer_fingerprint[:12]}) and "
            f"student {student.name!r} (tokenizer {student.tokenizer_fingerprint[:12]}) use "
            "different tokenizers; knowledge inheritance needs one vocabulary"
        )


def compatible_teachers(reg: Registry, student: Model) -> list[Model]:
    """What ``teachers="auto"`` offers: every other model with the student's tokenizer and
    objective, except LoRA adapters (they need their base model to run)."""
    adapters = {e.child for e in reg.edges() if e.kind == "adapter"}
    return [
        m
        for m in reg.models()
        if m.name != student.name
        and m.name not in adapters
        and m.objective == student.objective
        and m.objective != ENCODER
        and m.tokenizer_fingerprint is not None
        and m.tokenizer_fingerprint == student.tokenizer_fingerprint
    ]


def _teachers(reg: Registry, student: Model, teachers: str | Sequence[str]) -> list[Model]:
    """The teacher candidates: explicit names are checked; "auto" keeps compatible models."""
    if isinstance(teachers, str):
        if teachers != "auto":
            raise LineageError(f"teachers must be 'auto' or a list of names, got {teachers!r}")
        return compatible_teachers(reg, student)
    chosen = []
    for name in dict.fromkeys(teachers):
        if name == student.name:
            raise LineageError(f"{name!r} is the student; a model cannot teach itself")
        model = reg.model(name)  # NotFoundError for an unknown model
        _check_tokenizers(model, student)
        chosen.append(model)
    return chosen


def _free_name(reg: Registry, base: str) -> str:
    taken = {p.name for p in reg.plans()}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _train_shards(reg: Registry, domains: Sequence[str]) -> list[Shard]:
    if not domains:
        raise LineageError("give at least one domain to plan for")
    shards = []
    for domain in dict.fromkeys(domains):
        found = reg.shards(domain, split="train")  # NotFoundError for an unknown domain
        if not found:
            raise LineageError(f"domain {domain!r} has no train shards to plan for")
        shards += found
    return shards


def _shard_plan(shard: Shard, a: Assignment, sched: InheritanceSchedule | None) -> ShardPlan:
    return ShardPlan(
        shard_id=shard.id,
        domain=shard.domain,
        name=shard.name,
        path=shard.path,
        nearest_domain=a.domain,
        proximity=a.proximity,
        teacher=a.teacher,
        schedule=None if sched is None else sched.to_dict(),
        guided_steps=0 if sched is None else sched.guidance_end,
        scores=tuple(s.to_dict() for s in a.scores),
    )


def create_plan(
    ws: Workspace,
    *,
    student: str,
    domains: Sequence[str],
    teachers: str | Sequence[str] = "auto",
    steps: int = 10_000,
    schedule: str = "linear",
    schedule_params: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    top_k: int = 10,
    name: str | None = None,
    weights: RouterWeights | None = None,
    measure: bool = True,
) -> Plan:
    """Route every train shard of ``domains`` to a teacher and store the plan in the registry.

    Refuses unknown models and domains, a teacher equal to the student, teachers whose
    tokenizer differs from the student's, and domains without train shards. ``measure``
    (default): teacher and student perplexities measured on a sample of each shard (loads the
    models); without it a teacher is eligible only where the registry holds both perplexities
    on the shard's nearest domain (the router refuses the rest, naming what is missing).
    """
    if name is not None:
        check_name(name, "plan")
    if not (isinstance(steps, int) and steps >= 1):
        raise LineageError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(temperature) and temperature > 0) or top_k < 1:
        raise LineageError(f"need temperature > 0 and top_k >= 1, got {temperature}, {top_k}")
    if schedule not in SCHEDULE_KINDS:
        raise LineageError(f"unknown schedule {schedule!r} ({', '.join(SCHEDULE_KINDS)})")
    reg = ws.registry
    stud = reg.model(student)
    check_has_lm_head(stud.name, stud.objective, "a KI student")
    shards = _train_shards(reg, domains)
    cands = _teachers(reg, stud, teachers)
    params = dict(schedule_params or {})
    # One schedule per teacher (its depth sets the Table 6 default); bad parameters fail here.
    schedules = {
        m.name: make_schedule(schedule, params, teacher=m, student=stud, steps=steps) for m in cands
    }
    weights = weights or RouterWeights()
    router = Router.from_workspace(
        ws, teachers=list(schedules), student=student, measure=measure, weights=weights
    )
    plans = [
        _shard_plan(shard, a, schedules.get(a.teacher or ""))
        for shard, a in zip(shards, router.route(shards), strict=True)
    ]
    try:
        spec = PlanSpec(
            student=student,
            domains=tuple(dict.fromkeys(domains)),
            steps=steps,
            temperature=temperature,
            top_k=top_k,
            teachers=teachers if isinstance(teachers, str) else tuple(teachers),
            schedule=schedule,
            schedule_params=params,
            shards=tuple(plans),
            weights=weights.to_dict(),
        )
    except ValueError as exc:
        raise LineageError(f"invalid plan: {exc}") from exc
    # the default name joins the domains with '-' ('+' is outside the name rule of every name)
    plan_name = name if name is not None else _free_name(reg, f"{student}-{'-'.join(spec.domains)}")
    return reg.add_plan(plan_name, student, spec.to_dict())


def load_plan(ws: Workspace, name_or_id: str | int) -> PlanSpec:
    """A stored plan's validated spec."""
    plan = ws.registry.plan(name_or_id)
    try:
        return PlanSpec.from_dict(plan.spec)
    except ValueError as exc:
        raise LineageError(f"plan {plan.name!r}: {exc}") from exc

"""What a training job asks for (``TrainJob``) and what it gives back (``TrainOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lineage.errors import LineageError
from lineage.files import check_name
from lineage.inherit.cache_build import DEFAULT_MASK_DRAWS
from lineage.inherit.schedules import InheritanceSchedule
from lineage.inherit.teachers import TEACHER_MODES
from lineage.models.shapes import DEFAULT_BLOCK_SIZE
from lineage.registry.entities import Model
from lineage.train.config import TrainConfig, TrainResult
from lineage.train.lora import LoraSpec

STRATEGIES = ("sl", "ki")


@dataclass(frozen=True)
class TrainJob:
    """What to train; every field one line of help (the CLI mirrors them)."""

    student: str  # registered model the weights start from
    output: str  # name of the new model (registered at the end)
    domains: tuple[str, ...] = ()  # target domains (taken from the plan when one is given)
    strategy: str = "sl"  # "sl" (self-learning) or "ki" (knowledge inheritance)
    teachers: tuple[str, ...] = ()  # KI shortcut: these teachers teach every target shard
    plan: str | None = None  # a stored plan: per-shard teachers, schedules, steps
    schedule: dict[str, Any] = field(default_factory=dict)  # InheritanceSchedule fields (shortcut)
    teacher_mode: str = "cached"  # "cached" (top-K logit cache) or "online" (teacher forward)
    top_k: int = 10  # teacher logits kept per target in the cache
    mask_probability: float = 0.15  # MLM: share of tokens masked (training shards and cache)
    mask_draws: int = DEFAULT_MASK_DRAWS  # MLM teacher cache: masks per block, draw = epoch mod N
    block_size: int = DEFAULT_BLOCK_SIZE  # tokens per training block
    data_fraction: float = 1.0  # use only this share of each target shard (data-scarce runs)
    config: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = False  # continue the interrupted run of the same output name
    replay: float = 0.0  # share of batches drawn from the student's source domains ("reviewing")
    replay_domains: tuple[str, ...] = ()  # domains to replay (default: the student's sources)
    self_ki: bool = False  # replay batches are taught by the student's own (pre-run) predictions
    self_ki_alpha: float = 0.5  # constant inheritance rate of that self-KI term
    lora: LoraSpec | None = None  # train a LoRA adapter (saved under adapters/), not all weights
    build_caches: bool = True  # build missing teacher caches (False: refuse, naming them)
    study: str | None = None  # groups runs that compare (MLflow tag lineage.study); default:
    # "train <student> on <domains>"

    def __post_init__(self) -> None:
        check_name(self.output, "output")
        if self.strategy not in STRATEGIES:
            raise LineageError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.teacher_mode not in TEACHER_MODES:
            raise LineageError(f"teacher mode must be one of {', '.join(TEACHER_MODES)}")
        if self.strategy == "sl" and (self.teachers or self.plan):
            raise LineageError("self-learning takes no --teacher or --plan (use --strategy ki)")
        if self.strategy == "ki" and not (self.teachers or self.plan):
            raise LineageError("KI needs a --teacher or a --plan")
        if self.teachers and self.plan:
            raise LineageError("give --teacher or --plan, not both")
        if not self.plan and not self.domains:
            raise LineageError("name at least one --domain to train on")
        if not 0 < self.data_fraction <= 1:
            raise LineageError(f"data fraction must be in (0, 1], got {self.data_fraction}")
        if not 0 < self.mask_probability < 1:
            raise LineageError(f"mask rate must be in (0, 1), got {self.mask_probability}")
        if self.mask_draws < 1:
            raise LineageError(f"mask draws must be at least 1, got {self.mask_draws}")
        if self.student == self.output:
            raise LineageError("the output must get a new name (models are never overwritten)")
        if not 0 <= self.replay < 1:
            raise LineageError(f"replay share must be in [0, 1), got {self.replay}")
        if (self.self_ki or self.replay_domains) and self.replay == 0:
            raise LineageError("--self-ki and replay domains need a replay share (--replay R > 0)")
        if not 0 < self.self_ki_alpha <= 1:
            raise LineageError(f"self-KI alpha must be in (0, 1], got {self.self_ki_alpha}")
        if set(self.replay_domains) & set(self.domains):
            raise LineageError("a replayed domain cannot also be a target domain")
        self._check_schedule()

    def _check_schedule(self) -> None:
        """``--schedule`` fields through the schedule's own checks, before any work."""
        if not self.schedule:
            return
        if self.strategy != "ki" or self.plan:
            raise LineageError(
                "--schedule sets the --teacher shortcut's schedule (a plan has its own)"
            )
        try:
            InheritanceSchedule.from_options(
                self.schedule, total_steps=self.config.steps, default_steps=1
            )
        except ValueError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in self.schedule.items())
            raise LineageError(f"--schedule {shown}: {exc}") from exc


@dataclass(frozen=True)
class TrainOutcome:
    model: Model | None  # None on non-main processes
    result: TrainResult
    run_id: str | None
    teachers: dict[str, dict[str, Any]]  # teacher -> edge parameters
    caches: list[dict[str, Any]] = field(default_factory=list)  # PlannedCache.to_dict, each

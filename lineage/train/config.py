"""One training run's settings (``TrainConfig``) and what it returns (``TrainResult``), with the
inheritance-schedule and held-out-sample types the training loop takes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lineage.config import check_seed
from lineage.errors import LineageError
from lineage.models.evaluation import EvalResult

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run (defaults: papers/001 App. B)."""

    steps: int = 1000  # optimizer steps to reach
    batch_size: int = 32  # blocks per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-4  # peak learning rate
    warmup_ratio: float = 0.1  # share of steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01  # AdamW decay (not on biases and norm weights)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0  # seeds torch, numpy and python (dropout, initial state)
    eval_every: int = 200  # evaluate every N steps (and at the start and end); 0 = end only
    eval_blocks: int = 64  # blocks of each eval set scored per evaluation
    eval_batch_size: int = 32  # blocks per evaluation forward pass
    checkpoint_every: int = 500  # checkpoint every N steps (and at the end); 0 = never
    keep_checkpoints: int = 2  # newest checkpoints kept
    temperature: float = 1.0  # KI softmax temperature τ
    compile: bool = False  # torch.compile the student's backbone
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    log_every: int = 10  # log step metrics (window means) every N steps
    two_stage_layers: int = 0  # Alg. 2 l_b: sub-models of l_b, 2·l_b, … layers first; 0 = off
    two_stage_fraction: float = 0.5  # share of the steps spent on sub-models (E_b / E)

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_blocks", "eval_batch_size")
        for name in (*positive, "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise LineageError(f"train config: {name} must be >= 1")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise LineageError(f"train config: {name} must be >= 0")
        floats = ("lr", "warmup_ratio", "weight_decay", "eps", "clip", "temperature")
        for name in (*floats, "two_stage_fraction"):
            if not math.isfinite(getattr(self, name)):
                raise LineageError(f"train config: {name} must be a finite number")
        check_seed(self.seed)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise LineageError("train config: lr must be a positive number")
        if not 0 <= self.warmup_ratio < 1:
            raise LineageError("train config: warmup_ratio must be in [0, 1)")
        if self.weight_decay < 0 or self.clip < 0 or self.eps <= 0 or self.temperature <= 0:
            raise LineageError("train config: weight_decay, clip >= 0; eps, temperature > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise LineageError("train config: betas must be two numbers in [0, 1)")
        if self.precision not in PRECISIONS:
            raise LineageError(f"train config: precision must be one of {', '.join(PRECISIONS)}")
        if self.two_stage_layers < 0 or not 0 <= self.two_stage_fraction <= 1:
            raise LineageError("train config: two_stage_layers >= 0, two_stage_fraction in [0, 1]")


class RateSchedule(Protocol):
    """An inheritance-rate schedule (lineage.inherit.schedules); AutoInheritance also has
    ``observe``."""

    def rate(self, step: int) -> float: ...


@dataclass(frozen=True)
class AutoSample:
    """Held-out blocks on which an AutoInheritance teacher and the student are compared.

    The loop measures the teacher once, with the same evaluation (precision, masks) as the
    student, so the two are compared target by target."""

    blocks: np.ndarray  # [n, T] token blocks of the teacher's domain
    teacher: Any = None  # the teacher's model (PreTrainedModel); None = the online teacher


@dataclass
class TrainResult:
    step: int  # final optimizer step
    final_eval: dict[str, EvalResult]  # per eval set, at the final step
    history: list[dict[str, float]]  # one row per evaluation: step, ppl/<domain>, ...
    tokens_per_s: float  # training tokens per second, evaluation and checkpoints excluded
    wall_time_s: float  # this call, start to end
    eval_time_s: float  # of which evaluation
    tokens: int  # training tokens processed by this call (all processes)
    run_id: str | None  # the tracker's run
    model_dir: Path  # where the final model was saved
    resumed_from: int | None = None  # checkpoint step this call started from

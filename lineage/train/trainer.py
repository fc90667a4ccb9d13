"""The training loop: self-learning and Knowledge Inheritance through one loss path.

Every step computes the student's logits at the target positions only and calls
``lineage.inherit.losses.ki_loss`` with the batch's inheritance rate α (0, and no teacher, for
self-learning or when the teacher's schedule has ended). The teacher signal is the batch's
cached top-K logits or, for an online teacher, a no-grad forward on the same inputs.

Hugging Face Accelerate owns devices, autocast, gradient accumulation, DDP and FSDP, so the same
code runs under ``torchrun`` and ``accelerate launch`` (``lineage.train.parallel``); only the
main process writes the tracker, the published checkpoints and the final model. Checkpoints hold
everything a run depends on (weights, optimizer, scheduler, every rank's RNGs, sampler position,
schedule states), so a resumed run on CPU reaches the same weights bit for bit as an
uninterrupted one.

Two-stage training (papers/004 Alg. 2, ``TrainConfig.two_stage_layers``): for the first
``two_stage_fraction`` of the steps each step runs one sub-model (the bottom l_b, 2·l_b, …
layers with the shared head) and updates only its top l_b layers and the head; then the full
model trains.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from lineage.corpora.batches import Batch
from lineage.distributed import process_info
from lineage.errors import LineageError
from lineage.models.evaluation import EvalResult
from lineage.train.config import PRECISIONS, AutoSample, RateSchedule, TrainConfig, TrainResult
from lineage.train.loop import Loop, Window, param_groups, stage_one_frozen
from lineage.train.parallel import write_rank_digest
from lineage.train.tracking import Tracker

__all__ = [
    "PRECISIONS",
    "AutoSample",
    "RateSchedule",
    "TrainConfig",
    "TrainResult",
    "param_groups",
    "stage_one_frozen",
    "train",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _failure_status(tracker: Tracker) -> Iterator[None]:
    """Mark the tracker's run FAILED/KILLED if training raises; OOM gets a hint."""
    try:
        yield
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except torch.OutOfMemoryError as exc:
        tracker.finish("FAILED")
        raise LineageError(
            "out of GPU memory: lower batch_size (and raise grad_accum to keep the effective "
            "batch), use precision bf16, or a smaller eval_batch_size"
        ) from exc
    except BaseException:
        tracker.finish("FAILED")
        raise


def train(
    model: nn.Module,
    *,
    config: TrainConfig,
    sampler: Iterator[Batch],
    eval_sets: Mapping[str, np.ndarray],
    objective: str,
    sources: Sequence[str] = (),
    out_dir: Path,
    checkpoint_dir: Path,
    tracker: Tracker,
    schedules: Mapping[str, RateSchedule] | None = None,
    online_teachers: Mapping[str, PreTrainedModel] | None = None,
    resume: bool = False,
    progress: bool = True,
    tokenizer: Any = None,
    auto_samples: Mapping[str, AutoSample] | None = None,
    accelerator: Any = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` (a Hugging Face LM, or a PEFT model over one; updated in place) for
    ``config.steps`` steps.

    ``sampler`` yields :class:`Batch` es (a MixtureSampler; it must have ``state_dict`` for
    checkpoints). ``eval_sets``: domain -> [n, T] blocks, scored every ``eval_every`` steps as
    ``ppl/<domain>``; ``sources`` names those that are earlier domains of the model, whose
    forgetting since step 0 is logged at every evaluation (``forgetting/<d>``,
    ``forgetting_ratio/<d>``, ``backward_transfer``). ``schedules``: teacher name -> inheritance schedule for batches that name
    that teacher. ``tokenizer`` is saved with the model and gives MLM evaluation its mask id.
    ``auto_samples``: teacher -> held-out sample for AutoInheritance schedules. ``on_step`` is
    called after every optimizer step with the step number. The final model is saved to
    ``out_dir``. If training raises, the tracker's run is finished as FAILED (KILLED on
    Ctrl-C); on success the caller finishes it (after logging anything else).
    """
    started = time.perf_counter()
    loop = Loop(
        model,
        config,
        sampler,
        objective=objective,
        eval_sets=eval_sets,
        sources=sources,
        schedules=schedules,
        auto_samples=auto_samples,
        tokenizer=tokenizer,
        accelerator=accelerator,
        tracker=tracker,
        online_teachers=online_teachers,
    )
    with _failure_status(loop.tracker):
        loop.validate()
        if loop.main:
            log.info("training on %s", process_info(loop.acc))
        loop.prepare()
        resumed_from = loop.resume(Path(checkpoint_dir)) if resume else None
        if resumed_from is None:
            loop.log_start()
        final = _run(loop, Path(checkpoint_dir), progress, on_step)
        loop.save_model(Path(out_dir))
        write_rank_digest(loop.acc, loop.wrapper)
    train_time = max(loop.train_time, 1e-9)
    return TrainResult(
        step=loop.step,
        final_eval=final,
        history=loop.history,
        tokens_per_s=loop.tokens / train_time,
        wall_time_s=time.perf_counter() - started,
        eval_time_s=loop.eval_time,
        tokens=loop.tokens,
        run_id=loop.tracker.run_id,
        model_dir=Path(out_dir),
        resumed_from=resumed_from,
    )


def _run(
    loop: Loop, checkpoint_dir: Path, progress: bool, on_step: Callable[[int], None] | None
) -> dict[str, EvalResult]:
    """Steps until ``config.steps``, with evaluation, logging and checkpoints on their beats."""
    from tqdm.auto import tqdm

    c = loop.config
    final: dict[str, EvalResult] = {}
    if loop.step == 0 and (c.eval_every > 0 or loop.sources):
        final = loop.evaluate_all()  # the starting point: source-domain PPL before adapting
    bar = tqdm(total=c.steps, initial=loop.step, disable=not (progress and loop.main), unit="step")
    window = Window()
    while loop.step < c.steps:
        loop.optimizer_step(window)
        done = loop.step == c.steps
        if loop.step % c.log_every == 0 or done:
            loop.log_window(window)
            bar.set_postfix(loss=f"{loop.last_loss:.3f}")
            loop.tokens += window.tokens
            loop.train_time += window.seconds
            window = Window()
        if (c.eval_every and loop.step % c.eval_every == 0) or done:
            final = loop.evaluate_all()
        if c.checkpoint_every and (loop.step % c.checkpoint_every == 0 or done):
            loop.checkpoint(checkpoint_dir)
        bar.update(1)
        if on_step is not None:
            on_step(loop.step)
    bar.close()
    if not final:
        final = loop.evaluate_all()  # resumed at the very end: score the final weights here
    return final

"""The training loop's state and the phases of a step (``Loop``), over Hugging Face Accelerate.

``lineage.train.trainer.train`` drives it: validate, prepare (optimizer, scheduler, devices),
resume, then per step micro-steps with the KI loss, the optimizer step (two-stage sub-models
included), evaluation, logging and checkpoints. The optimisation pieces it uses — AdamW
parameter groups, the learning-rate schedule, Alg. 2's frozen parameters — are here too.

A step's loss is the sum of its per-target terms over all its micro-batches and processes
divided by their global number of targets (``lineage.train.parallel.global_targets``), so
gradient accumulation and data parallelism give the gradient of one large batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from lineage.corpora.batches import IGNORE_INDEX, Batch
from lineage.corpora.tokenizer import TokenizerInfo, save_tokenizer
from lineage.distributed import on_main
from lineage.errors import LineageError
from lineage.growth.maps import family_of
from lineage.growth.twostage import submodel_layers, trainable_layer_range, truncate_depth
from lineage.inherit.losses import KILoss, ki_loss
from lineage.models.evaluation import EvalResult, evaluate
from lineage.models.modeling import TargetLogits, check_vocab, embedding_rows, position_limit
from lineage.train.checkpoints import (
    TrainingState,
    atomic_dir,
    latest_checkpoint,
    load_checkpoint,
    remove_partial,
    save_checkpoint,
)
from lineage.train.config import AutoSample, RateSchedule, TrainConfig
from lineage.train.curves import forgetting_since
from lineage.train.parallel import (
    fill_deepspeed_auto,
    full_state_dict,
    global_targets,
    is_sharded,
    make_accelerator,
    reduce_sums,
)
from lineage.train.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    """Transformers' linear schedule: the learning rate rises from 0 over the first
    ``warmup_ratio`` of the steps, then falls linearly to 0 at ``steps``."""
    from transformers import get_scheduler

    return get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(config.steps * config.warmup_ratio),
        num_training_steps=config.steps,
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on biases and norm weights (ndim < 2)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def stage_one_frozen(model: PreTrainedModel, depth: int, l_b: int) -> list[nn.Parameter]:
    """What Alg. 2 keeps fixed while a sub-model of ``depth`` layers trains: the blocks outside
    its top ``l_b`` (trainable_layer_range) and the input embeddings.

    The shared head trains; with tied embeddings that includes the word embeddings (they are
    the head's output matrix). Norms outside the blocks (GPT-2's ln_f, Llama's norm) feed the
    head in every sub-model, so they count as head.
    """
    blocks = cast(nn.ModuleList, model.get_submodule(family_of(model.config).layers_path))
    keep = {id(p) for i in trainable_layer_range(depth, l_b) for p in blocks[i].parameters()}
    base = model.base_model
    for name, child in [*model.named_children(), *base.named_children()]:
        input_side = isinstance(child, nn.Embedding) or "embed" in name
        holds_blocks = any(m is blocks for m in child.modules())
        if child is not base and not input_side and not holds_blocks:
            keep |= {id(p) for p in child.parameters()}
    return [p for p in model.parameters() if id(p) not in keep]


def _tokenizer_info(tokenizer: Any, sampler: Any) -> TokenizerInfo | None:
    """From the tokenizer, else from the sampler's block shards (they carry one)."""
    if tokenizer is not None:
        return TokenizerInfo.of(tokenizer)
    for shard in getattr(sampler, "shards", []):
        if isinstance(getattr(shard, "tokenizer", None), TokenizerInfo):
            return shard.tokenizer
    return None


@dataclass
class Window:
    """Weighted sums over the steps since the last log line; values stay on the device until
    read (converting each step would synchronise the GPU every micro-batch)."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    sums: dict[str, torch.Tensor | float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        """Add ``value`` (a sum over ``weight`` items: a loss summed over its targets)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def means(self, acc: Any = None) -> dict[str, float]:
        """Sum / weight per key, over every process when given their accelerator."""
        sums, weights = (
            reduce_sums(acc, self.sums, self.weights)
            if acc is not None
            else ({k: float(v) for k, v in self.sums.items()}, self.weights)
        )
        return {k: v / weights[k] for k, v in sums.items() if weights[k] > 0}


class Loop:
    """The state of one ``train`` call; methods are the phases of a step."""

    def __init__(self, model: nn.Module, config: TrainConfig, sampler: Any, **kw: Any) -> None:
        """``kw``: :func:`train`'s keyword arguments that describe the run."""
        self.config = config
        self.sampler = sampler
        self.objective: str = kw["objective"]
        self.eval_sets: dict[str, np.ndarray] = dict(kw["eval_sets"])
        self.sources: tuple[str, ...] = tuple(kw.get("sources") or ())  # forgetting measured on
        self.schedules: dict[str, RateSchedule] = dict(kw["schedules"] or {})
        self.auto_samples: dict[str, AutoSample] = dict(kw["auto_samples"] or {})
        self.tokenizer = kw["tokenizer"]
        self.info = _tokenizer_info(self.tokenizer, sampler)
        self.acc = kw["accelerator"] or make_accelerator(config)
        self.main = bool(self.acc.is_main_process)
        self.sharded = is_sharded(self.acc)
        self.tracker: Tracker = kw["tracker"] if self.main else NullTracker()
        # A PEFT model trains its base in place (the LoRA layers live there) and saves itself.
        self.exported: nn.Module = model
        peft = hasattr(model, "get_base_model")
        base = cast(nn.Module, model.get_base_model()) if peft else model  # type: ignore[operator]
        self.model = cast(PreTrainedModel, base)  # the unwrapped Hugging Face model
        self.vocab = embedding_rows(base)
        self.teachers = dict(kw["online_teachers"] or {})
        self.teacher_evals: dict[str, EvalResult] = {}  # auto schedules: measured once
        self.history: list[dict[str, float]] = []
        self.step = 0
        self.tokens = 0
        self.eval_time = 0.0
        self.train_time = 0.0
        self.last_loss = float("nan")
        self.frozen: dict[int, list[nn.Parameter]] = {}  # two-stage: sub-model depth -> fixed

    # --- setup -------------------------------------------------------------------------------

    def validate(self) -> None:
        """Refuse a run that would fail later: missing schedules, teachers, vocabularies."""
        if self.objective not in ("mlm", "clm"):
            raise LineageError(f"objective must be 'mlm' or 'clm', got {self.objective!r}")
        if self.info is not None:
            check_vocab(self.model, self.info.vocab_size)
        if self.objective == "mlm" and self.eval_sets and self.info is None:
            raise LineageError("MLM evaluation needs the tokenizer (for its mask token)")
        for name, blocks in self.eval_sets.items():
            check_vocab(self.model, int(np.max(blocks)) + 1, f"eval set {name!r}")
        if self.acc.gradient_accumulation_steps != self.config.grad_accum:
            raise LineageError("the accelerator's gradient_accumulation_steps != grad_accum")
        ranks = (getattr(self.sampler, "rank", 0), getattr(self.sampler, "world_size", 1))
        if ranks != (self.acc.process_index, self.acc.num_processes):
            raise LineageError(
                f"the sampler was built for rank {ranks[0]} of {ranks[1]}, this is process "
                f"{self.acc.process_index} of {self.acc.num_processes}: pass rank/world_size"
            )
        for shard in getattr(self.sampler, "shards", []):
            if shard.teacher is not None and shard.teacher not in self.schedules:
                raise LineageError(
                    f"shard {shard.name!r} is taught by {shard.teacher!r} but no inheritance "
                    "schedule was given for that teacher"
                )
        if self.config.two_stage_layers:
            submodel_layers(self.model.config.num_hidden_layers, self.config.two_stage_layers)
            if self.acc.num_processes > 1:  # DDP expects every parameter in every step
                raise LineageError("two-stage training runs in one process only")
        if self.sharded and self.exported is not self.model:
            raise LineageError("LoRA adapters train under one process or DDP, not FSDP/DeepSpeed")
        for name, schedule in self.schedules.items():
            if hasattr(schedule, "observe") and name not in self.auto_samples:
                raise LineageError(f"automatic schedule for {name!r} needs a held-out sample")
        for name, teacher in self.teachers.items():
            rows, own = embedding_rows(teacher, output=True), embedding_rows(self.model, True)
            if rows != own:
                raise LineageError(
                    f"online teacher {name!r} predicts {rows} tokens, the student {own}: "
                    "vocabularies differ"
                )

    def prepare(self) -> None:
        """Optimizer, scheduler, wrapping for the device/DDP; teachers to the device."""
        from accelerate.utils import set_seed

        c = self.config
        set_seed(c.seed)
        self.model.train()
        if c.compile:
            self.model.base_model.compile()  # in place: parameter names are unchanged
        optimizer = torch.optim.AdamW(
            param_groups(self.model, c.weight_decay), lr=c.lr, betas=c.betas, eps=c.eps
        )
        self.scheduler = lr_scheduler(optimizer, c)
        fill_deepspeed_auto(self.acc, c)
        self.wrapper, self.optimizer = self.acc.prepare(TargetLogits(self.model), optimizer)
        for teacher in self.teachers.values():
            teacher.to(self.acc.device).eval().requires_grad_(False)

    def resume(self, checkpoint_dir: Path) -> int | None:
        """Load the newest valid checkpoint; returns its step (None: nothing to resume)."""

        # The main process picks (and verifies) it; every rank loads the same one.
        def newest() -> Path | None:
            for partial in remove_partial(checkpoint_dir):
                log.info("removed %s, a checkpoint the interrupted run did not finish", partial)
            return latest_checkpoint(checkpoint_dir)

        found = on_main(newest, "finding the checkpoint")
        if found is None:
            log.info("no checkpoint in %s: starting from step 0", checkpoint_dir)
            return None
        path = Path(found)
        state = load_checkpoint(  # latest_checkpoint has just verified it
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            verified=True,
            accelerator=self.acc,
        )
        self.sampler.load_state_dict(state.sampler)
        for name, saved in state.schedules.items():
            if name in self.schedules and hasattr(self.schedules[name], "load_state_dict"):
                self.schedules[name].load_state_dict(saved)  # type: ignore[attr-defined]
        self.step = state.step
        self.history = list(state.extra.get("history", []))
        run_id = self.tracker.run_id
        if self.main and state.run_id and run_id and state.run_id != run_id:
            log.warning("checkpoint belongs to run %s, logging to run %s", state.run_id, run_id)
        log.info("resumed from %s (step %d)", path, state.step)
        return state.step

    def log_start(self) -> None:
        params = {"train": asdict(self.config), "objective": self.objective}
        params["schedules"] = {k: type(v).__name__ for k, v in self.schedules.items()}
        self.tracker.log_params(params)
        for name, blocks in self.eval_sets.items():
            source = str(getattr(blocks, "filename", None) or f"eval/{name}")
            digest = hashlib.sha256(np.ascontiguousarray(blocks).tobytes()).hexdigest()
            self.tracker.log_dataset(f"eval/{name}", digest, source, context="eval")

    # --- one step ----------------------------------------------------------------------------

    def teacher_signal(self, batch: Batch, alpha: float) -> dict[str, Any]:
        """ki_loss's teacher arguments for this batch ({} when α = 0 or no teacher)."""
        if alpha <= 0 or batch.teacher is None:
            return {}
        cached = batch.teacher_topk()  # decoded here, on the training device, if coded
        if cached is not None:
            return {"teacher_topk_indices": cached[0], "teacher_topk_logits": cached[1]}
        teacher = self.teachers.get(batch.teacher)
        if teacher is None:
            raise LineageError(
                f"shard {batch.shard!r}: teacher {batch.teacher!r} has no cached logits and is "
                "not among the online teachers"
            )
        with torch.no_grad(), self.acc.autocast():
            head = TargetLogits(teacher, fp32_head=True)  # the KI target in float32 (fix 5)
            logits = head(batch.input_ids, batch.attention_mask, batch.labels)
        return {"teacher_logits": logits}

    def batch_problem(self, batch: Batch) -> str | None:
        """Why this batch cannot be trained on (None: it can)."""
        top = int(batch.input_ids.max()) if batch.input_ids.numel() else -1
        if top >= self.vocab:
            return (
                f"vocabulary mismatch: shard {batch.shard!r} holds token id {top}, the model's "
                f"embedding has {self.vocab} rows"
            )
        return None

    def micro_step(self, batch: Batch, targets: int, window: Window) -> KILoss:
        """Forward, KI loss, backward for one micro-batch whose step has ``targets`` targets over
        all its micro-batches and processes; accumulates window statistics."""
        batch = batch.to(self.acc.device)
        schedule = self.schedules.get(batch.teacher) if batch.teacher else None
        alpha = float(schedule.rate(self.step)) if schedule is not None else 0.0
        logits = self.wrapper(batch.input_ids, batch.attention_mask, batch.labels)  # [N, V]
        labels = batch.labels[batch.labels != IGNORE_INDEX]  # [N]
        teacher = self.teacher_signal(batch, alpha)
        out = ki_loss(
            logits,
            labels,
            alpha=alpha if teacher else 0.0,
            temperature=self.config.temperature,
            normaliser=float(max(targets, 1)),
            **teacher,
        )
        # out.total is this micro-batch's share of the step's mean loss. Accelerate divides by
        # grad_accum (DeepSpeed's engine does it itself) and DDP/FSDP average over the ranks:
        # scaling by both leaves the gradient of Σ terms / targets over the whole step.
        self.acc.backward(out.total * (self.acc.num_processes * self.config.grad_accum))
        n = float(out.n_targets)
        window.add("loss", out.total * max(targets, 1), n)
        window.add("loss_self", out.self_loss * n, n)
        if batch.teacher is not None:
            window.add(f"alpha/{batch.teacher}", alpha)
        if teacher:
            window.add("loss_ki", out.ki_loss * n, n)
            window.add(f"loss_ki/{batch.teacher}", out.ki_loss * n, n)
        window.tokens += batch.input_ids.numel() * self.acc.num_processes
        return out

    def accumulate(self, window: Window) -> None:
        """The step's micro-batches, forward and backward: the gradients of its global mean loss
        are left in the parameters' ``.grad`` (synchronised across processes)."""
        batches = [next(self.sampler) for _ in range(self.config.grad_accum)]
        problems = [p for p in map(self.batch_problem, batches) if p is not None]
        counts = [b.n_targets for b in batches]
        targets = global_targets(self.acc, counts, problems[0] if problems else None)
        for batch in batches:
            with self.acc.accumulate(self.wrapper):
                self.micro_step(batch, targets, window)

    def submodel_depth(self) -> int | None:
        """Alg. 2's first stage: this step's sub-model depth, drawn from (seed, step) alone so a
        resumed run draws the same; None when two-stage is off or in the full-model stage."""
        c = self.config
        if not c.two_stage_layers or self.step >= round(c.steps * c.two_stage_fraction):
            return None
        depths = submodel_layers(self.model.config.num_hidden_layers, c.two_stage_layers)
        return depths[int(np.random.default_rng((c.seed, self.step)).integers(len(depths)))]

    def optimizer_step(self, window: Window) -> None:
        """``grad_accum`` micro-batches, clipping, one AdamW and scheduler step."""
        start = time.perf_counter()
        depth = self.submodel_depth()
        with truncate_depth(self.model, depth) if depth else contextlib.nullcontext():
            self.accumulate(window)
        if depth is not None:
            if depth not in self.frozen:
                self.frozen[depth] = stage_one_frozen(
                    self.model, depth, self.config.two_stage_layers
                )
            for param in self.frozen[depth]:
                param.grad = None  # AdamW skips it: no update, no decay, no moment change
            window.add("submodel_depth", float(depth))
        assert self.acc.sync_gradients
        if self.config.clip > 0:
            self.acc.clip_grad_norm_(self.wrapper.parameters(), self.config.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        window.steps += 1
        window.seconds += time.perf_counter() - start

    # --- evaluation, logging, checkpoints ----------------------------------------------------

    def _eval(self, model: nn.Module, blocks: np.ndarray) -> EvalResult:
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.acc.mixed_precision)
        if model is self.model and self.sharded:
            model = self.wrapper  # FSDP: through the root module, which gathers the shards
        return evaluate(
            model,
            blocks,
            objective=self.objective,
            batch_size=self.config.eval_batch_size,
            tokenizer=self.info,
            device=self.acc.device,
            max_blocks=self.config.eval_blocks,
            autocast_dtype=half,
        )

    def evaluate_all(self) -> dict[str, EvalResult]:
        """Every eval set (targets and sources), forgetting on the sources since step 0, then
        automatic schedules; one history row, logged at this step."""
        start = time.perf_counter()
        results = {name: self._eval(self.model, blocks) for name, blocks in self.eval_sets.items()}
        row: dict[str, float] = {"step": float(self.step)}
        for name, res in results.items():
            row[f"ppl/{name}"] = res.ppl
            row[f"eval_loss/{name}"] = res.loss
        first = self.history[0] if self.history and self.history[0]["step"] == 0 else None
        if first is not None or self.step == 0:
            row.update(forgetting_since(first or row, row, self.sources))
        for name, schedule in self.schedules.items():
            if hasattr(schedule, "observe"):
                row.update(self.observe_auto(name, schedule))
        if self.history and self.history[-1]["step"] == row["step"]:
            self.history[-1] = row  # evaluated twice at one step (a resumed run's last step)
        else:
            self.history.append(row)
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, self.step)
        self.eval_time += time.perf_counter() - start
        return results

    def teacher_eval(self, name: str) -> EvalResult:
        """The teacher's losses on its held-out sample, measured once like the student's (the
        same device, autocast and masks), so the two compare target by target."""
        if name not in self.teacher_evals:
            sample = self.auto_samples[name]
            teacher = sample.teacher if sample.teacher is not None else self.teachers.get(name)
            if teacher is None:
                raise LineageError(f"teacher {name!r}: give its model in the held-out sample")
            teacher.to(self.acc.device).eval()
            self.teacher_evals[name] = self._eval(teacher, sample.blocks)
            if sample.teacher is not None:  # measured: the loop needs it no more
                self.auto_samples[name] = dataclasses.replace(sample, teacher=None)
        return self.teacher_evals[name]

    def observe_auto(self, name: str, schedule: Any) -> dict[str, float]:
        """Student vs teacher on the teacher's held-out sample (paired per block); logs events."""
        teacher = self.teacher_eval(name)
        student = self._eval(self.model, self.auto_samples[name].blocks)
        # Every rank must take the same decision: average the (nearly equal) measurements.
        sums = torch.tensor(student.block_losses, dtype=torch.float64, device=self.acc.device)
        losses = self.acc.reduce(sums, "mean").cpu().tolist()
        seen = len(schedule.events)
        schedule.observe(self.step, losses, teacher.block_losses, teacher.block_targets)
        for i, event in enumerate(list(schedule.events)[seen:], start=seen):
            self.tracker.set_tags({f"ki_event.{name}.{i}": str(event)})
        student_ppl = math.exp(sum(losses) / max(teacher.n_tokens, 1))
        return {f"auto/{name}/student_ppl": student_ppl, f"auto/{name}/teacher_ppl": teacher.ppl}

    def log_window(self, window: Window) -> None:
        metrics = window.means(self.acc)  # every rank: the sums are all-reduced
        self.last_loss = metrics.get("loss", float("nan"))
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["tokens_per_s"] = window.tokens / max(window.seconds, 1e-9)
        self.tracker.log_metrics(metrics, self.step)

    def checkpoint(self, checkpoint_dir: Path) -> None:
        """Every rank: its part of the checkpoint (see lineage.train.checkpoints)."""
        schedules = {
            k: s.state_dict() for k, s in self.schedules.items() if hasattr(s, "state_dict")
        }
        state = TrainingState(
            self.step,
            self.sampler.state_dict(),
            schedules,
            run_id=self.tracker.run_id,
            extra={"history": self.history},
        )
        save_checkpoint(
            checkpoint_dir,
            state,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            keep=self.config.keep_checkpoints,
            accelerator=self.acc,
        )

    def save_model(self, out_dir: Path) -> None:
        """The final model (safetensors) and tokenizer, written by the main process; sharded
        weights are gathered first (every rank takes part)."""
        state = full_state_dict(self.acc, self.wrapper, self.model) if self.sharded else None
        if self.main:
            # never overwrite: the output name is reserved (lineage.registry.reservations), so
            # a folder already there is a registered model's and must stay as it is
            with atomic_dir(Path(out_dir)) as tmp:
                if state is not None:
                    self.model.save_pretrained(str(tmp), state_dict=state)
                else:
                    self.exported.save_pretrained(str(tmp))  # type: ignore[operator]
                if self.tokenizer is not None:
                    save_tokenizer(self.tokenizer, tmp, position_limit(self.model.config))
        self.acc.wait_for_everyone()

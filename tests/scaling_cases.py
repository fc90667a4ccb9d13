"""Gradient cases shared by tests/test_scaling.py and the processes it launches
(tests/scaling_child.py): tiny students without dropout, MLM and causal, self-learning and KI
from a cached or an online teacher, and the gradients of one optimizer step of lineage's loop.

Every process builds the same models and data from seeds, so the gradients of 2 processes x
batch B, of 1 process x B accumulated twice and of 1 process x 2B can be compared exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from lineage.corpora.batches import BlockShard, MixtureSampler
from lineage.corpora.tokenizer import TokenizerInfo
from lineage.distributed import process_state
from lineage.errors import LineageError
from lineage.inherit.cache import CacheMeta, open_cache
from lineage.inherit.cache_build import build_cache, state_digest
from lineage.inherit.schedules import InheritanceSchedule
from lineage.models.modeling import build_config, load_model
from lineage.train.loop import Loop, Window
from lineage.train.tracking import NullTracker
from lineage.train.trainer import TrainConfig, train

INFO = TokenizerInfo(vocab_size=300, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))
BLOCKS = np.random.default_rng(0).integers(5, 300, size=(24, 32), dtype=np.uint16)
FAMILY = {"mlm": "roberta", "clm": "gpt2"}
CASES = [f"{objective}-{mode}" for objective in FAMILY for mode in ("sl", "cached", "online")]
_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop")


def tiny(objective: str, seed: int, dropout: bool = False) -> PreTrainedModel:
    """A 2-layer, width-64 model of the objective's family (without dropout unless asked)."""
    config = build_config(FAMILY[objective], "tiny", 300, 32)
    for name in (*_DROPOUT, "attn_pdrop"):
        if hasattr(config, name) and not dropout:
            setattr(config, name, 0.0)
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    torch.manual_seed(seed)
    return auto.from_config(config)


def build_caches(root: Path, objectives: tuple[str, ...] = tuple(FAMILY)) -> dict[str, Path]:
    """The teacher's top-10 cache over BLOCKS, per objective (run once, in one process)."""
    out = {}
    for objective in objectives:
        path = root / f"cache-{objective}"
        build_cache(
            tiny(objective, seed=7),
            BLOCKS,
            path,
            objective=objective,  # type: ignore[arg-type]
            meta=CacheMeta(teacher_name="t"),
            top_k=10,
            mask_token_id=INFO.mask_id,
            special_ids=INFO.special_ids,
            vocab_size=INFO.vocab_size,
            progress=False,
        )
        out[objective] = path
    return out


def _loop(objective: str, sampler: Any, config: TrainConfig, mode: str = "sl") -> Loop:
    loop = Loop(
        tiny(objective, seed=1),
        config,
        sampler,
        objective=objective,
        eval_sets={},
        schedules={"t": InheritanceSchedule(kind="constant", constant=0.4, total_steps=1)}
        if mode != "sl"
        else {},
        auto_samples=None,
        tokenizer=None,
        accelerator=None,
        tracker=NullTracker(),
        online_teachers={"t": tiny(objective, seed=7)} if mode == "online" else None,
    )
    loop.validate()
    loop.prepare()
    return loop


def failing_step() -> str:
    """One step in which rank 1's batch holds a token id the model does not have: every rank
    must raise at once (rank 1 its own error, the others naming rank 1), none may wait."""
    state = process_state()
    blocks = BLOCKS.copy()
    if state.process_index == 1:
        blocks[:, 0] = 300  # the vocabulary is 0..299
    shard = BlockShard("a", blocks, "clm", INFO)
    sampler = MixtureSampler(
        [shard], batch_size=4, seed=5, rank=state.process_index, world_size=state.num_processes
    )
    loop = _loop("clm", sampler, TrainConfig(steps=1, batch_size=4, precision="fp32"))
    try:
        loop.accumulate(Window())
    except LineageError as exc:
        return str(exc)
    return "no error"


def step_gradients(
    case: str, caches: dict[str, Path], batch_size: int, grad_accum: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Gradients of the first optimizer step of ``case`` (full tensors, by parameter name) and
    the target counts of this process's micro-batches. Under several processes each takes its
    slice of every batch, as ``lineage train`` does."""
    objective, mode = case.split("-")
    state = process_state()
    if mode == "cached":
        shard: Any = open_cache(caches[objective]).shard("a", "t")
    else:
        shard = BlockShard("a", BLOCKS, objective, INFO, teacher="t" if mode == "online" else None)
    sampler = MixtureSampler(
        [shard],
        batch_size=batch_size,
        seed=5,  # its first two MLM micro-batches of 4 hold 30 and 15 targets
        rank=state.process_index,
        world_size=state.num_processes,
    )
    counts = _CountingSampler(sampler)
    config = TrainConfig(steps=1, batch_size=batch_size, grad_accum=grad_accum, precision="fp32")
    loop = _loop(objective, counts, config, mode)
    loop.accumulate(Window())
    grads = {}
    for name, param in loop.model.named_parameters():
        assert param.grad is not None, name
        grad = param.grad
        grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad.clone()
    return grads, counts.targets


class _CountingSampler:
    """The sampler, noting each batch's number of targets."""

    def __init__(self, inner: MixtureSampler) -> None:
        self.inner, self.targets = inner, []
        self.rank, self.world_size, self.shards = inner.rank, inner.world_size, inner.shards

    def __iter__(self) -> _CountingSampler:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        self.targets.append(batch.n_targets)
        return batch


def train_digest(root: Path, crash_at: int | None = None, resume: bool = False) -> str | None:
    """Train an MLM student with dropout for 6 steps (checkpoints every 2) under this process
    group and return the digest of the saved model; ``crash_at``: raise on every rank after
    that step instead (returns None); ``resume``: continue from the newest checkpoint."""

    def crash(step: int) -> None:
        if step == crash_at:
            raise RuntimeError("power cut")

    state = process_state()
    sampler = MixtureSampler(
        [BlockShard("a", BLOCKS, "mlm", INFO)],
        batch_size=4,
        seed=3,
        rank=state.process_index,
        world_size=state.num_processes,
    )
    config = TrainConfig(
        steps=6, batch_size=4, lr=3e-3, eval_every=0, checkpoint_every=2, precision="fp32"
    )
    try:
        train(
            tiny("mlm", seed=11 if resume else 1, dropout=True),
            config=config,
            sampler=sampler,
            eval_sets={},
            objective="mlm",
            out_dir=root / "model",
            checkpoint_dir=root / "checkpoints",
            tracker=NullTracker(),
            resume=resume,
            progress=False,
            on_step=crash,
        )
    except RuntimeError as exc:
        if crash_at is None or "power cut" not in str(exc):
            raise
        return None
    return state_digest(load_model(root / "model").state_dict())


def shared_from_main() -> dict[str, str]:
    """on_main: the main process's result reaches every rank; its error fails every rank."""
    from lineage.distributed import on_main

    state = process_state()
    out = {"value": on_main(lambda: f"made by rank {state.process_index}", "making it")}

    def fail() -> str:
        raise ValueError("the registry is gone")

    try:
        on_main(fail, "registering it")
    except (ValueError, LineageError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out

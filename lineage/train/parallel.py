"""The training loop on several processes: the Accelerator, who holds which state, and what the
ranks exchange besides gradients.

- **Accelerator**: CPU ranks run on gloo (``lineage.distributed.process_state``); FSDP asked for
  through Accelerate's environment (``accelerate launch --use_fsdp`` or a config file) also
  runs on CPU ranks — accelerate 1.15 enables FSDP only for GPU-like distributed types and
  silently trains CPU ranks with DDP instead, although FSDP2 (``fully_shard``) works on gloo.
  DeepSpeed configs with ``auto`` micro-batch size and clipping get the run's values.
- **Sharded state** (FSDP, DeepSpeed): each rank holds part of the weights and optimizer state,
  so checkpoints go through ``accelerator.save_state`` and the final model through a gathered
  full state dict; DDP replicas are saved by the main process alone.
- **The global target count**: every optimizer step all-reduces the number of prediction
  targets of its micro-batches (one small collective), so the loss is normalised by the count
  over all micro-batches and ranks; a rank whose batch is unusable says so in the same
  collective and every rank stops with it instead of waiting in the next one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lineage.distributed import process_state
from lineage.errors import LineageError
from lineage.inherit.cache_build import state_digest
from lineage.train.config import TrainConfig

# Test-only: a folder where every rank writes the sha256 of the weights it ends with.
DIGEST_ENV_VAR = "LINEAGE_TEST_RANK_DIGESTS"
_WRAPPED = "lm."  # TargetLogits keeps the language model as its attribute ``lm``


def mixed_precision(precision: str) -> str:
    """Accelerate's mixed-precision name for TrainConfig.precision (auto: bf16 on CUDA)."""
    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def make_accelerator(config: TrainConfig) -> Any:
    """The run's Accelerator: the process group of :func:`process_state`, gradient accumulation
    over ``config.grad_accum`` micro-batches, FSDP on CPU ranks when it was asked for."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    process_state()  # CPU ranks on gloo, with the timeout, before Accelerate sets anything up
    plugin = GradientAccumulationPlugin(num_steps=config.grad_accum, sync_with_dataloader=False)
    try:
        acc = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=mixed_precision(config.precision),
            gradient_accumulation_plugin=plugin,
        )
    except ValueError as exc:  # the process-wide state was set up with another precision
        raise LineageError(f"cannot set up Accelerate: {exc}") from exc
    _fsdp_on_cpu(acc)
    return acc


def _fsdp_on_cpu(acc: Any) -> None:
    """Honour ``ACCELERATE_USE_FSDP`` on CPU ranks (see the module docstring): switch the state
    to FSDP with a plugin read from the same environment (FSDP2 only). The plugin is made anew
    for every run: Accelerate's keeps the first model's block classes for the whole process."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    kinds = (DistributedType.MULTI_CPU, DistributedType.FSDP)
    if not wanted or acc.device.type != "cpu" or acc.distributed_type not in kinds:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise LineageError("FSDP on CPU processes needs FSDP2: set fsdp_version: 2")
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def fill_deepspeed_auto(acc: Any, config: TrainConfig) -> None:
    """A DeepSpeed config's ``auto`` micro-batch size and clipping from this run (lineage's
    sampler already gives each rank its own micro-batches: no dataloader is prepared); ZeRO-3
    gathers 16-bit weights on save unless the config says otherwise (the final model needs it)."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = config.batch_size
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = config.clip
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") in (
        None,
        "auto",
    ):
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def is_sharded(acc: Any) -> bool:
    """Whether each rank holds only part of the weights and optimizer state (FSDP, DeepSpeed)."""
    from accelerate.utils import DistributedType

    kind = getattr(acc, "distributed_type", DistributedType.NO)  # stand-ins in tests lack it
    return kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def global_targets(acc: Any, counts: Sequence[int], problem: str | None) -> int:
    """The number of prediction targets of this step over every micro-batch and rank.

    ``counts``: this rank's micro-batches' target counts; ``problem``: why this rank cannot run
    the step (None: it can). The counts and every rank's flag travel in one all-reduce, so when
    any rank has a problem all of them raise here, before the step's collectives.
    """
    local = int(sum(counts))
    if acc.num_processes == 1:
        if problem is not None:
            raise LineageError(problem)
        return local
    flags = torch.zeros(1 + acc.num_processes, dtype=torch.int64, device=acc.device)
    flags[0] = local
    flags[1 + acc.process_index] = int(problem is not None)
    summed = [int(v) for v in acc.reduce(flags, "sum").tolist()]
    if problem is not None:
        raise LineageError(problem)
    failed = [rank for rank, flag in enumerate(summed[1:]) if flag]
    if failed:
        raise LineageError(f"process {failed[0]} cannot run this step (its error is in its log)")
    return summed[0]


def reduce_sums(
    acc: Any, sums: Mapping[str, torch.Tensor | float], weights: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Window sums and weights added over the ranks (one all-reduce; keys sorted, which every
    rank shares: all ranks draw the same shard, hence the same teacher, for each batch)."""
    keys = sorted(sums)
    if acc.num_processes == 1 or not keys:
        return {k: float(sums[k]) for k in keys}, {k: float(weights[k]) for k in keys}
    values = [torch.as_tensor(sums[k], dtype=torch.float64, device=acc.device) for k in keys]
    values += [
        torch.tensor(float(weights[k]), dtype=torch.float64, device=acc.device) for k in keys
    ]
    total = acc.reduce(torch.stack(values), "sum").tolist()
    n = len(keys)
    return dict(zip(keys, total[:n], strict=True)), dict(zip(keys, total[n:], strict=True))


def _unwrapped_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(_WRAPPED): v for k, v in state.items()}


def full_state_dict(acc: Any, wrapper: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process (an empty dict elsewhere), gathered from
    the shards; keys as in the unwrapped Hugging Face ``model``, tied weights one tensor again
    (gathering copies each name apart), so saving stores them once. Every rank must call it."""
    state = _unwrapped_keys(acc.get_state_dict(wrapper))
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for names in owners.values():
        present = [n for n in names if n in state]
        for name in present[1:]:
            state[name] = state[present[0]]
    return state


def write_rank_digest(acc: Any, wrapper: nn.Module) -> None:
    """With $LINEAGE_TEST_RANK_DIGESTS set (tests only): every rank writes the digest of the
    weights it holds, gathered in full under FSDP, to ``rank-<r>.json`` there."""
    folder = os.environ.get(DIGEST_ENV_VAR)
    if not folder:
        return
    if is_sharded(acc) and acc.num_processes > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(wrapper, options=StateDictOptions(full_state_dict=True))
    else:
        state = acc.unwrap_model(wrapper).state_dict()
    payload = {"rank": acc.process_index, "sha256": state_digest(_unwrapped_keys(state))}
    path = Path(folder) / f"rank-{acc.process_index}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")

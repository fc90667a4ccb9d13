"""PEFT LoRA adapters: build them on a base model and describe them for the registry.

A LoRA adapter replaces a frozen weight W [out, in] of the attention and FFN projections by
W + (alpha / r) · B A, with A [r, in] and B [out, r] trained; B starts at zero, so a fresh
adapter leaves the base model's function unchanged. The adapter folder (``save_pretrained``)
holds only A and B per projection and loads with ``PeftModel.from_pretrained(base, folder)`` or,
since it records its task type and base folder, with PEFT's auto classes. Only PEFT's own API is
used (``get_peft_model``), never transformers' adapter integration, whose version gate can demand
a PEFT release that does not exist yet. PEFT is imported lazily: this module stays cheap to import.

Routing a text to its adapter and inference with it: ``lineage.continual.adapters``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lineage.errors import LineageError
from lineage.registry.entities import Model
from lineage.registry.modelinfo import ModelInfo, count_parameters, read_model_info

if TYPE_CHECKING:
    from lineage.registry.store import Registry

__all__ = [
    "LORA_TARGETS",
    "LoraSpec",
    "adapter_base",
    "adapter_bytes",
    "adapter_info",
    "adapter_params",
    "add_lora",
    "is_adapter",
    "lora_config",
    "trainable_parameters",
]

# The attention and FFN linear layers of each family, as full-match regexes over module names
# (PEFT's string form). The output head and embeddings stay frozen: the vocabulary is shared.
_BERT_LIKE = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)
LORA_TARGETS: dict[str, str] = {
    "roberta": _BERT_LIKE,
    "bert": _BERT_LIKE,
    "gpt2": r".*h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)",
    "llama": r".*layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
}
_CONV1D_FAMILIES = ("gpt2",)  # weights stored [in, out]: PEFT needs fan_in_fan_out=True
# PEFT's task type per objective. PEFT has no masked-LM task: such adapters carry no task type
# and PEFT records the base class instead, so plain ``AutoPeftModel`` loads them.
_TASK_TYPES = {"clm": "CAUSAL_LM", "mlm": None}


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter's shape; every field one line of help (the CLI mirrors them)."""

    rank: int = 8  # r: rank of the update B·A
    alpha: int = 16  # scale numerator: the update is (alpha / r) · B·A
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    targets: str = ""  # module-name regex; "" = the family's attention and FFN linears

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise LineageError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, int) and self.alpha >= 1):
            raise LineageError(f"LoRA alpha must be an integer >= 1, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LineageError(f"LoRA dropout must lie in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lora_config(spec: LoraSpec, family: str, objective: str = "clm") -> Any:
    """The ``peft.LoraConfig`` for ``family`` (LineageError for a family without targets)."""
    from peft import LoraConfig

    targets = spec.targets or LORA_TARGETS.get(family)
    if not targets:
        raise LineageError(
            f"no LoRA target layers known for family {family!r} ({', '.join(LORA_TARGETS)}); "
            "give LoraSpec.targets"
        )
    if objective not in _TASK_TYPES:
        raise LineageError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        fan_in_fan_out=family in _CONV1D_FAMILIES,
        bias="none",
        task_type=_TASK_TYPES[objective],
    )


def add_lora(
    model: torch.nn.Module, spec: LoraSpec, *, seed: int = 0, base_path: str | Path | None = None
) -> Any:
    """Wrap a Hugging Face LM in a PEFT LoRA model (``peft.get_peft_model``); only the adapter
    trains. Returns the ``PeftModel``; its ``save_pretrained`` writes the adapter alone.

    The LoRA layers are injected into ``model`` in place, so ``model`` keeps its class (the
    trainer's head-at-targets path works on it) while the wrapper saves and loads. A's
    initialisation is seeded; B is zero. ``base_path`` is recorded in the adapter's config as
    ``base_model_name_or_path``, which PEFT's auto classes load the base from.
    """
    from peft import get_peft_model

    family = str(getattr(model.config, "model_type", ""))
    objective = "mlm" if "MaskedLM" in type(model).__name__ else "clm"
    config = lora_config(spec, family, objective)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "base_model_name_or_path was renamed": set below
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)  # type: ignore[arg-type]
    if base_path is not None:  # get_peft_model takes the model's own name_or_path
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path)
    if trainable_parameters(peft_model) == 0:
        raise LineageError(f"LoRA targets {config.target_modules!r} matched no layer")
    return peft_model


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_params(adapter_dir: Path) -> int:
    """Parameters stored in an adapter folder (safetensors headers; nothing is loaded)."""
    return count_parameters(Path(adapter_dir))


def adapter_bytes(adapter_dir: Path) -> int:
    """Size on disk of an adapter's weights."""
    return sum(f.stat().st_size for f in Path(adapter_dir).glob("*.safetensors"))


def adapter_info(base: Model, adapter_dir: Path) -> ModelInfo:
    """The registry description of base + adapter: the base's family and shape; ``n_params``
    counts what the adapted model computes with (base + adapter)."""
    info = read_model_info(Path(base.path))
    return dataclasses.replace(info, n_params=info.n_params + adapter_params(adapter_dir))


# --- the registry side: which models are adapters, and of what -------------------------------


def adapter_base(reg: Registry, name: str) -> Model | None:
    """The base model of adapter ``name`` (its ``adapter`` edge's parent), or None."""
    for edge in reg.edges(name):
        if edge.kind == "adapter" and edge.child == name:
            return reg.model(edge.parent)
    return None


def is_adapter(reg: Registry, name: str) -> bool:
    return adapter_base(reg, name) is not None

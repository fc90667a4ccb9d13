"""PEFT LoRA domain adapters: build them on a base model, describe them for the registry, and
route a text to the adapter (or expert model) of its nearest domain at inference.

A LoRA adapter replaces a frozen weight W [out, in] of the attention and FFN projections by
W + (alpha / r) · B A, with A [r, in] and B [out, r] trained; B starts at zero, so a fresh
adapter leaves the base model's function unchanged. The adapter folder (``save_pretrained``)
holds only A and B per projection and loads with ``PeftModel.from_pretrained(base, folder)`` or,
since it records its task type and base folder, with PEFT's auto classes. Only PEFT's own API is
used (``get_peft_model``), never transformers' adapter integration, whose version gate can demand
a PEFT release that does not exist yet. PEFT is imported lazily: this module stays cheap to import.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lineage.corpora.batches import IGNORE_INDEX, causal_targets
from lineage.errors import LineageError
from lineage.registry.entities import Model
from lineage.registry.modelinfo import ModelInfo, count_parameters, read_model_info
from lineage.routing.router import Router

if TYPE_CHECKING:
    from lineage.registry.store import Registry
    from lineage.workspace import Workspace

__all__ = [
    "LORA_TARGETS",
    "LoraSpec",
    "Routed",
    "adapter_base",
    "adapter_info",
    "add_lora",
    "generate",
    "is_adapter",
    "load_for_inference",
    "match_for_domain",
    "route_to_adapter",
    "score",
    "text_perplexity",
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


def _latest_ppl(reg: Registry, model: str, domain: str) -> float:
    evals = reg.evaluations(model=model, domain=domain)
    return evals[-1].ppl if evals else math.inf


def match_for_domain(reg: Registry, base: str, domain: str) -> Model | None:
    """What serves ``domain`` for ``base``: its newest adapter trained on the domain, else the
    full model trained on it (same tokenizer and objective) with the lowest registry
    perplexity there (newest on ties), else None (use the base as it is)."""
    adapters = [
        e for e in reg.edges(base) if e.kind == "adapter" and e.parent == base
    ]  # ordered by edge id: the last is the newest
    for edge in reversed(adapters):
        if domain in edge.params.get("domains", []):
            return reg.model(edge.child)
    me = reg.model(base)
    experts = [
        m
        for m in reg.models()
        if m.name != base
        and domain in m.domains
        and m.tokenizer_fingerprint == me.tokenizer_fingerprint
        and m.objective == me.objective
        and not is_adapter(reg, m.name)
    ]
    if not experts:
        return None
    return min(experts, key=lambda m: (_latest_ppl(reg, m.name, domain), -m.id))


def route_to_adapter(ws: Workspace, text: str, base: str) -> tuple[str, Model | None]:
    """(the nearest registered domain of ``text``, the adapter or expert model serving it for
    ``base`` — None when nothing does and the base should answer)."""
    ws.registry.model(base)  # NotFoundError before any profiling work
    domain, _ = Router.from_workspace(ws, teachers=[]).nearest_domain(
        text
    )  # no candidates: domains only
    return domain, match_for_domain(ws.registry, base, domain)


# --- inference ---------------------------------------------------------------------------------


def load_for_inference(
    ws: Workspace, model: Model | str, *, device: str | None = None, merge: bool = True
) -> tuple[Any, Any]:
    """(LM in eval mode, tokenizer) of a registered model; an adapter is loaded onto its base
    with ``PeftModel.from_pretrained`` and, with ``merge``, folded into the weights."""
    from lineage.corpora.tokenizer import load_tokenizer
    from lineage.models.modeling import load_model

    reg = ws.registry
    entry = reg.model(model) if isinstance(model, str) else model
    base = adapter_base(reg, entry.name)
    lm: Any
    if base is None:
        lm = load_model(Path(entry.path), device=device)
    else:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(load_model(Path(base.path)), entry.path)
        lm = lm.merge_and_unload() if merge else lm
        lm = lm.to(device) if device else lm
    return lm.eval(), load_tokenizer(Path(entry.path))


def _max_tokens(lm: Any) -> int:
    config = lm.config
    positions = getattr(config, "max_position_embeddings", None) or config.n_positions
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= (config.pad_token_id or 0) + 1  # positions start after the padding index
    return int(positions)


@torch.no_grad()
def text_perplexity(
    lm: Any, tokenizer: Any, text: str, *, objective: str, batch_size: int = 32
) -> float:
    """Perplexity of one text: token perplexity (causal), or pseudo-perplexity (masked LM:
    each token masked in turn and predicted from all the others, Salazar et al. 2020).

    The text is tokenised as training blocks are (no special tokens, ``</s>`` appended) and cut
    to the model's positions; ``lm`` is a plain Hugging Face LM (merge adapters first).
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor(ids[: _max_tokens(lm)], dtype=torch.long, device=lm.device)  # [T]
    if objective == "clm":
        inputs = ids[None]  # [1, T]
        labels = causal_targets(inputs)  # [1, T]
    elif objective == "mlm":
        special = torch.tensor(tokenizer.all_special_ids, device=ids.device)
        where = torch.nonzero(~torch.isin(ids, special)).flatten()  # [N] positions to predict
        inputs = ids.repeat(len(where), 1)  # [N, T]: row i masks position where[i]
        rows = torch.arange(len(where), device=ids.device)
        inputs[rows, where] = tokenizer.mask_token_id
        labels = torch.full_like(inputs, IGNORE_INDEX)
        labels[rows, where] = ids[where]
    else:
        raise LineageError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    total, count = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
        logits = lm(input_ids=x).logits  # [b, T, V]
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += int((y != IGNORE_INDEX).sum())
    if count == 0:
        raise LineageError("the text holds no token to score")
    return math.exp(total / count)


@dataclass(frozen=True)
class Routed:
    """What routing a text did: its domain, the model that answered, and the answer."""

    domain: str
    model: str  # the adapter, the expert, or the base itself
    ppl: float | None = None
    text: str | None = None


def _routed_model(ws: Workspace, text: str, base: str) -> tuple[str, Model]:
    domain, match = route_to_adapter(ws, text, base)
    return domain, match if match is not None else ws.registry.model(base)


def score(ws: Workspace, text: str, base: str, *, device: str | None = None) -> Routed:
    """Route ``text`` for ``base`` and score it (perplexity) with the model it routes to."""
    domain, model = _routed_model(ws, text, base)
    lm, tok = load_for_inference(ws, model, device=device)
    ppl = text_perplexity(lm, tok, text, objective=model.objective)
    return Routed(domain, model.name, ppl=ppl)


def generate(
    ws: Workspace, prompt: str, base: str, *, max_new_tokens: int = 32, device: str | None = None
) -> Routed:
    """Route ``prompt`` for a causal ``base`` and continue it greedily with the routed model."""
    domain, model = _routed_model(ws, prompt, base)
    if model.objective != "clm":
        raise LineageError(f"{model.name!r} is a masked LM: it scores text but does not generate")
    lm, tok = load_for_inference(ws, model, device=device)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(lm.device)
    out = lm.generate(
        ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id
    )
    return Routed(domain, model.name, text=tok.decode(out[0, ids.shape[1] :]))

"""Routing a text to the LoRA adapter (or expert model) of its nearest domain, and inference
with it: loading base + adapter, perplexity of a text, greedy generation.

The adapters themselves (LoraSpec, PEFT's LoRA on a base model): ``lineage.train.lora``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lineage.corpora.batches import IGNORE_INDEX, causal_targets
from lineage.errors import LineageError
from lineage.registry.entities import Model, comparable
from lineage.routing.router import Router
from lineage.train.lora import adapter_base, is_adapter

if TYPE_CHECKING:
    from lineage.registry.store import Registry
    from lineage.workspace import Workspace

__all__ = [
    "Routed",
    "generate",
    "load_for_inference",
    "match_for_domain",
    "route_to_adapter",
    "score",
    "text_perplexity",
]


# --- which model serves a domain --------------------------------------------------------------


def _comparable_ppl(reg: Registry, models: list[str], domain: str) -> dict[str, float]:
    """The models' registry perplexities on ``domain`` under one protocol (like with like)."""
    picked = comparable(reg.evaluations(domain=domain), models)
    return {m: e.ppl for (m, _), e in picked.items()}


def match_for_domain(reg: Registry, base: str, domain: str) -> Model | None:
    """What serves ``domain`` for ``base``: its newest adapter trained on the domain, else the
    full model trained on it (same tokenizer and objective) with the lowest registry
    perplexity there (evaluations under one protocol: ``comparable``; newest on ties), else
    None (use the base as it is)."""
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
    ppl = _comparable_ppl(reg, [m.name for m in experts], domain)
    return min(experts, key=lambda m: (ppl.get(m.name, math.inf), -m.id))


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

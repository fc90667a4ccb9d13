"""Hugging Face model cards (README.md: YAML metadata, then Markdown) that carry a model's lineage.

The metadata is built with ``huggingface_hub``'s ``ModelCardData`` and the card with its
``ModelCard``, so the YAML is valid whatever the names hold (colons, quotes, unicode) and uses
the Hub's keys: ``library_name`` (``peft`` for a LoRA adapter, else ``transformers``),
``pipeline_tag`` (``fill-mask`` for masked LMs, ``text-generation`` for causal ones),
``license``, ``datasets`` and ``base_model`` with ``base_model_relation``.

``base_model`` and ``datasets`` name Hub repositories, and the Hub links them into its model
tree and dataset pages: they list only parents and domains that have a recorded Hub id
(``lineage model register --hub-id``, a domain card's ``hub_id``). A local model that happens
to be called ``gpt2`` is never presented as the Hub's gpt2. Every parent by its local name, KI
teachers as teachers, the domains and the generation are in the card's ``lineage`` metadata and
its Lineage section.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage.errors import LineageError
from lineage.files import atomic_write_text
from lineage.registry.entities import Edge, Model

# Our edge kinds onto the Hub's base_model_relation vocabulary. KI teachers are not a base
# model (the student's weights do not come from them): they are listed as teachers.
BASE_RELATION = {"adapt": "finetune", "grow": "finetune", "adapter": "adapter"}
PIPELINE_TAG = {"mlm": "fill-mask", "clm": "text-generation"}


def check_hub_id(hub_id: str) -> str:
    """``hub_id`` if it is a valid Hub repository id ("name" or "namespace/name")."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(hub_id)
    except HFValidationError as exc:
        raise LineageError(f"not a Hugging Face Hub id: {hub_id!r} ({exc})") from exc
    return hub_id


@dataclass(frozen=True)
class CardContext:
    """What a card says beyond the model and its incoming edges."""

    generation: int  # lineage.registry.ancestry.generations
    license: str = "other"  # the Hub's licence id ("other": see the card's text)
    parent_hub_ids: Mapping[str, str] = field(default_factory=dict)  # parent name -> Hub id
    datasets: Sequence[str] = ()  # Hub dataset ids of the domains it was trained on


def _code(text: str) -> str:
    """``text`` as Markdown inline code, whatever backticks it holds."""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def card_data(model: Model, parents: Sequence[Edge], ctx: CardContext) -> Any:
    """The card's metadata as ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import ModelCardData

    bases = [e for e in parents if e.kind in BASE_RELATION]
    teachers = sorted({e.parent for e in parents if e.kind == "ki"})
    on_hub = [ctx.parent_hub_ids[e.parent] for e in bases if e.parent in ctx.parent_hub_ids]
    relations = {BASE_RELATION[e.kind] for e in bases if e.parent in ctx.parent_hub_ids}
    extra: dict[str, Any] = {}
    if on_hub:
        extra["base_model"] = list(dict.fromkeys(on_hub))
        extra["base_model_relation"] = "adapter" if "adapter" in relations else "finetune"
    lineage: dict[str, Any] = {
        "generation": ctx.generation,
        "parents": [{"name": e.parent, "kind": e.kind} for e in parents if e.kind != "ki"],
        "teachers": teachers,
        "domains": list(model.domains),
        "tokenizer_fingerprint": model.tokenizer_fingerprint,
    }
    return ModelCardData(
        library_name="peft" if any(e.kind == "adapter" for e in parents) else "transformers",
        pipeline_tag=PIPELINE_TAG.get(model.objective, "feature-extraction"),  # encoders
        license=ctx.license,
        datasets=list(ctx.datasets) or None,
        tags=["lineage", *(["knowledge-inheritance"] if teachers else [])],
        lineage=lineage,
        **extra,
    )


def _body(model: Model, parents: Sequence[Edge], ctx: CardContext) -> list[str]:
    lines = [
        f"# {model.name}",
        "",
        model.description
        or f"A {model.family} {model.objective.upper()} model managed by lineage.",
        "",
        "| family | objective | layers | d_model | heads | d_ffn | vocab | parameters |",
        "|---|---|---|---|---|---|---|---|",
        f"| {model.family} | {model.objective} | {model.layers} | {model.d_model} | {model.heads} "
        f"| {model.d_ffn} | {model.vocab_size} | {model.n_params:,} |",
        "",
        "## Lineage",
        "",
        f"Generation {ctx.generation} (1: inherited from no model; knowledge inheritance and "
        "growth make the next generation, adaptation keeps it). Trained on: "
        f"{', '.join(_code(d) for d in model.domains) or 'no recorded domain'}. Tokenizer "
        f"fingerprint {_code(model.tokenizer_fingerprint or 'n/a')}.",
        "",
    ]
    if not parents:
        lines.append("No parent models: trained from scratch or registered from elsewhere.")
    for edge in parents:
        role = "KI teacher" if edge.kind == "ki" else f"{edge.kind} from"
        hub = ctx.parent_hub_ids.get(edge.parent)
        where = f" (Hub: {_code(hub)})" if hub else ""
        run = f", MLflow run {_code(edge.mlflow_run_id)}" if edge.mlflow_run_id else ""
        params = json.dumps(edge.params, sort_keys=True, ensure_ascii=False)
        lines.append(f"- **{role}** {_code(edge.parent)}{where}{run}: {_code(params)}")
    return lines


def render_card(model: Model, parents: Sequence[Edge], ctx: CardContext) -> str:
    """The card's text: YAML metadata (``card_data``), then the description and lineage."""
    from huggingface_hub import ModelCard

    data = card_data(model, parents, ctx)
    text = "\n".join(["---", data.to_yaml(), "---", "", *_body(model, parents, ctx)]) + "\n"
    return str(ModelCard(text))  # parsed back: a card the Hub would not read raises here


def write_card(model: Model, parents: Sequence[Edge], ctx: CardContext) -> Path:
    path = Path(model.path) / "README.md"
    atomic_write_text(path, render_card(model, parents, ctx))
    return path

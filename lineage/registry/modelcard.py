"""Hugging Face model cards (README.md with YAML metadata) that carry a model's lineage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lineage.files import atomic_write_text
from lineage.registry.entities import Edge, Model

# Our edge kinds onto the Hub's base_model_relation vocabulary. KI teachers are not a base
# model (the student's weights do not come from them): they are listed in the lineage section.
BASE_RELATION = {"adapt": "finetune", "grow": "finetune", "adapter": "adapter"}


def render_card(model: Model, parents: Sequence[Edge], generation: int) -> str:
    """The card's text: metadata (base_model, base_model_relation), then the lineage section."""
    bases = [e for e in parents if e.kind in BASE_RELATION]
    teachers = sorted({e.parent for e in parents if e.kind == "ki"})
    meta = ["---", "library_name: transformers", "tags:", "- lineage"]
    task = {"mlm": "fill-mask", "clm": "text-generation"}.get(model.objective, "feature-extraction")
    meta.append(f"- {task}")
    if bases:
        meta.append("base_model:")
        meta += [f"- {e.parent}" for e in bases]
        relations = {BASE_RELATION[e.kind] for e in bases}
        meta.append(f"base_model_relation: {'adapter' if 'adapter' in relations else 'finetune'}")
    if teachers:
        meta.append("lineage_teachers:")
        meta += [f"- {t}" for t in teachers]
    if model.domains:
        meta.append("lineage_domains:")
        meta += [f"- {d}" for d in model.domains]
    meta.append("---")
    body = [
        "",
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
        f"Generation {generation}. Tokenizer fingerprint `{model.tokenizer_fingerprint or 'n/a'}`.",
        "",
    ]
    if not parents:
        body.append("Trained from scratch: no parent models.")
    for edge in parents:
        params = json.dumps(edge.params, sort_keys=True) if edge.params else "{}"
        run = f", MLflow run `{edge.mlflow_run_id}`" if edge.mlflow_run_id else ""
        body.append(f"- **{edge.kind}** from `{edge.parent}`{run}: `{params}`")
    return "\n".join(meta + body) + "\n"


def write_card(model: Model, parents: Sequence[Edge], generation: int) -> Path:
    path = Path(model.path) / "README.md"
    atomic_write_text(path, render_card(model, parents, generation))
    return path

"""A model's life in a workspace: tokenizers and models made, registered and evaluated.

Each function takes the workspace, does the work with the pure/engine modules, and records
the result in the registry (and MLflow where it is a run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lineage.blocks import valid_blocks
from lineage.domains import domain_texts
from lineage.entities import Evaluation, Model, Tokenizer
from lineage.errors import LineageError
from lineage.evaluation import evaluate
from lineage.modelinfo import read_model_info
from lineage.modeling import ModelShape, create_model, load_model, resolve_shape
from lineage.tokenizer import TokenizerInfo, load_tokenizer, train_tokenizer
from lineage.workspace import Workspace

DEFAULT_BLOCK_SIZE = 128


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_workspace_tokenizer(
    ws: Workspace,
    name: str,
    domains: Sequence[str],
    *,
    vocab_size: int = 8000,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE on the domains' train splits; save under models/ and register it."""
    if not domains:
        raise LineageError("name at least one --domain to train the tokenizer on")
    for d in domains:
        ws.registry.domain(d)  # unknown names fail before any work
    out = ws.models_dir / "tokenizers" / name
    if out.exists():
        raise LineageError(f"{out} already exists")

    def texts():  # type: ignore[no-untyped-def]
        for d in domains:
            yield from domain_texts(ws, d, "train")

    fingerprint = train_tokenizer(texts(), out, vocab_size=vocab_size, min_frequency=min_frequency)
    size = len(load_tokenizer(out))
    params = {
        "domains": list(domains),
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "kind": "byte-level-bpe",
    }
    return ws.registry.add_tokenizer(name, str(out), fingerprint, size, params)


def create_workspace_model(
    ws: Workspace,
    name: str,
    *,
    family: str,
    shape: ModelShape | str,
    tokenizer: str,
    seed: int = 0,
    max_positions: int = 512,
    description: str = "",
) -> Model:
    """A randomly initialised model under models/, registered (no edges: it starts a family)."""
    tok = ws.registry.tokenizer(tokenizer)
    if ws.registry.has_model(name):
        raise LineageError(f"a model named {name!r} is already registered")
    out = ws.models_dir / name
    create_model(
        family, resolve_shape(shape), Path(tok.path), out, seed=seed, max_positions=max_positions
    )
    return ws.registry.add_model(
        name,
        str(out),
        read_model_info(out),
        description=description
        or f"{family} {resolve_shape(shape).to_dict()}, random init (seed {seed})",
    )


def evaluate_model(
    ws: Workspace,
    model_name: str,
    domains: Sequence[str],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = 16,
    max_blocks: int | None = None,
    step: int = 0,
    mlflow_run_id: str | None = None,
) -> list[Evaluation]:
    """Perplexity on each domain's valid split (fixed MLM masks), stored as Evaluations."""
    model = ws.registry.model(model_name)
    for d in domains:
        ws.registry.domain(d)
    device = default_device()
    lm = load_model(Path(model.path), device=device)
    info = TokenizerInfo.of(load_tokenizer(Path(model.path)))
    out = []
    for d in domains:
        blocks = valid_blocks(ws, d, Path(model.path), block_size, max_blocks)
        result = evaluate(
            lm,
            blocks,
            objective=model.objective,
            batch_size=batch_size,
            tokenizer=info,
            device=device,
        )
        out.append(
            ws.registry.add_evaluation(
                model_name,
                d,
                loss=result.loss,
                ppl=result.ppl,
                step=step,
                n_tokens=result.n_tokens,
                mlflow_run_id=mlflow_run_id,
            )
        )
    return out

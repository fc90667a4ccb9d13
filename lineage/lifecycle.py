"""A model's life in a workspace: tokenizers and models made, registered and evaluated; models
grown; teachers' logit caches built (``lineage cache build``).

Each function takes the workspace, does the work with the pure/engine modules, and records
the result in the registry (and MLflow where it is a run). The top of the layout: it may use
every stage below.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lineage.config import check_seed
from lineage.corpora.blocks import valid_blocks
from lineage.corpora.domains import domain_texts
from lineage.corpora.tokenizer import (
    TokenizerInfo,
    describe_tokenizer,
    import_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lineage.errors import ConflictError, LineageError
from lineage.faults import fault_point
from lineage.files import check_name
from lineage.growth.expand import GrowthMethod, GrowthRecord, grow_model, growth_warnings
from lineage.models.evaluation import EvalResult, evaluate
from lineage.models.modeling import (
    ModelShape,
    create_model,
    load_model,
    position_limit,
    resolve_shape,
)
from lineage.models.shapes import DEFAULT_BLOCK_SIZE as DEFAULT_BLOCK_SIZE
from lineage.registry.entities import Evaluation, Model, Tokenizer
from lineage.registry.modelfiles import check_model_files, model_files
from lineage.registry.modelinfo import check_block_size, check_has_lm_head, read_model_info
from lineage.registry.reservations import reserved_output
from lineage.train.caches import build_caches as build_caches
from lineage.train.checkpoints import atomic_dir
from lineage.train.runs import fail_mlflow_runs, job_tracker, recorded
from lineage.workspace import Workspace

GROWTH_FILE = "growth.json"  # the full GrowthRecord, beside a grown model's weights


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
    check_name(name, "tokenizer")
    if not domains:
        raise LineageError("name at least one --domain to train the tokenizer on")
    for d in domains:
        ws.registry.domain(d)  # unknown names fail before any work
    out = ws.child_path(ws.models_dir, "tokenizers", name)

    def texts():  # type: ignore[no-untyped-def]
        for d in domains:
            yield from domain_texts(ws, d, "train")

    params = {
        "domains": list(domains),
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "kind": "byte-level-bpe",
    }
    with reserved_output(ws.registry, name, out, job="tokenizer", kind="tokenizer"):
        fingerprint = train_tokenizer(
            texts(), out, vocab_size=vocab_size, min_frequency=min_frequency
        )
        fault_point("tokenizer.saved")  # published, not yet registered
        size = len(load_tokenizer(out))
        return ws.registry.add_tokenizer(name, str(out), fingerprint, size, params)


def register_workspace_tokenizer(ws: Workspace, source: str, name: str | None = None) -> Tokenizer:
    """``lineage tokenizer register``: a real model's tokenizer (a registered model's name, or a
    folder holding ``tokenizer.json``), copied under models/tokenizers/ and registered."""
    reg = ws.registry
    src = Path(reg.model(source).path) if reg.has_model(source) else Path(source).expanduser()
    if not src.is_dir():
        raise LineageError(f"{source!r} is neither a registered model nor a folder")
    name = name or (source if reg.has_model(source) else src.resolve().name)
    if any(t.name == name for t in reg.tokenizers()):
        raise ConflictError(f"a tokenizer named {name!r} is already registered")
    out = ws.child_path(ws.models_dir, "tokenizers", check_name(name, "tokenizer"))
    with reserved_output(reg, name, out, job="tokenizer", kind="tokenizer"):
        fingerprint = import_tokenizer(src, out)
        tokenizer = load_tokenizer(out)
        params = describe_tokenizer(tokenizer, out) | {"source": str(src.resolve())}
        return reg.add_tokenizer(name, str(out), fingerprint, len(tokenizer), params)


def create_workspace_model(
    ws: Workspace,
    name: str,
    *,
    family: str,
    shape: ModelShape | str,
    tokenizer: str | None = None,
    tokenizer_from: str | None = None,
    seed: int = 0,
    max_positions: int = 512,
    description: str = "",
    dropout: float | None = None,
    init_range: float | None = None,
) -> Model:
    """A randomly initialised model under models/, registered (no edges: it starts a family).

    Its vocabulary is a registered ``tokenizer`` or the tokenizer of the registered model
    ``tokenizer_from`` (so it can learn from that model: same fingerprint); exactly one.
    ``dropout``/``init_range``: None keeps the Hugging Face defaults (0.1 / 0.02).
    """
    check_name(name, "model")
    check_seed(seed)
    if (tokenizer is None) == (tokenizer_from is None):
        raise LineageError("give exactly one of a tokenizer and a model to take it from")
    if tokenizer is not None:
        tok_dir, source = Path(ws.registry.tokenizer(tokenizer).path), f"tokenizer {tokenizer}"
    else:
        tok_dir = Path(ws.registry.model(str(tokenizer_from)).path)
        source = f"the tokenizer of {tokenizer_from}"
    if ws.registry.has_model(name):
        raise LineageError(f"a model named {name!r} is already registered")
    out = ws.child_path(ws.models_dir, name)
    with reserved_output(ws.registry, name, out, job="create"):
        fault_point("create.reserved")
        create_model(
            family,
            resolve_shape(shape),
            tok_dir,
            out,
            seed=seed,
            max_positions=max_positions,
            dropout=dropout,
            init_range=init_range,
        )
        fault_point("create.saved")  # published, not yet registered
        return ws.registry.add_model(
            name,
            str(out),
            read_model_info(out),
            description=description
            or f"{family} {resolve_shape(shape).to_dict()}, random init (seed {seed}), {source}",
            files=model_files(out),
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
    """Perplexity on each domain's valid split (fixed MLM masks), stored as Evaluations. A LoRA
    adapter is scored through its base (``load_for_inference``: loaded onto it and merged)."""
    from lineage.continual.adapters import load_for_inference
    from lineage.train.lora import adapter_base

    model = ws.registry.model(model_name)
    check_has_lm_head(model.name, model.objective, "a model to evaluate")
    base = adapter_base(ws.registry, model.name)
    check_block_size(model.name, Path((base or model).path), block_size)
    for d in domains:
        ws.registry.domain(d)
    device = default_device()
    if base is None:
        lm = load_model(Path(model.path), device=device)
    else:
        lm, _ = load_for_inference(ws, model, device=str(device))
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
                protocol=result.protocol,
            )
        )
    return out


@dataclass(frozen=True)
class GrowthReport:
    """What a growth did and how the grown model scores right away (papers/004 Table 1)."""

    source: str  # the registered model grown from
    grown: str  # the new model's name
    record: GrowthRecord  # maps, shapes, method, seed (also saved as growth.json)
    domain: str | None  # whose valid blocks were scored (None: not scored, see `unscored`)
    source_eval: EvalResult | None  # the source on that sample
    grown_eval: EvalResult | None  # the grown model on the same sample, before any training
    unscored: str = ""  # why it was not scored

    @property
    def warnings(self) -> list[str]:
        """`lineage.growth.growth_warnings` for these two scores (empty when nothing stands out
        or nothing was scored)."""
        if self.source_eval is None or self.grown_eval is None:
            return []
        return growth_warnings(self.record, self.source_eval.loss, self.grown_eval.loss)

    def to_dict(self) -> dict[str, Any]:
        scores: dict[str, Any] = {"domain": self.domain, "unscored": self.unscored or None}
        if self.source_eval is not None and self.grown_eval is not None:
            scores |= {
                "source_loss": self.source_eval.loss,
                "source_ppl": self.source_eval.ppl,
                "grown_loss": self.grown_eval.loss,
                "grown_ppl": self.grown_eval.ppl,
                "n_tokens": self.grown_eval.n_tokens,
            }
        return (
            {
                "source": self.source,
                "grown": self.grown,
                "method": self.record.method,
                "seed": self.record.seed,
                "source_shape": self.record.source_shape,
                "target_shape": self.record.target_shape,
            }
            | scores
            | {"warnings": self.warnings}
        )


def growth_edge_params(record: GrowthRecord) -> dict[str, Any]:
    """The ``grow`` edge's parameters: the record without its long unit maps, which are
    summarised (new units per axis) and fingerprinted; growth.json beside the weights has them."""
    maps = record.maps
    digest = hashlib.sha256(json.dumps(maps, sort_keys=True).encode()).hexdigest()
    return {
        "method": record.method,
        "seed": record.seed,
        "balanced": record.balanced,
        "family": record.family,
        "source_shape": record.source_shape,
        "target_shape": record.target_shape,
        "maps": {
            "layers": maps["layers"],
            "new_units": {k: len(v) - len(set(v)) for k, v in maps.items() if k != "layers"},
            "sha256": digest,
            "file": GROWTH_FILE,
        },
    }


def grow_workspace_model(
    ws: Workspace,
    source: str,
    new: str,
    *,
    layers: int,
    hidden: int,
    heads: int | None = None,
    ffn: int | None = None,
    method: GrowthMethod = "fpi",
    seed: int = 0,
    sample_domain: str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_blocks: int | None = 64,
) -> tuple[Model, GrowthReport]:
    """Grow a registered model (bert2BERT width by ``method``, depth by Alg. 1) into ``new``.

    The grown model is saved atomically under ``models/<new>`` (safetensors, the source's
    tokenizer, growth.json), registered with the source's domains and a ``grow`` edge, and
    scored against the source on the valid blocks of ``sample_domain`` (default: the source's
    first domain still registered; at most ``max_blocks`` blocks); both scores are stored as
    evaluations at step 0. With no such domain the model is grown and registered unscored, and
    the report says why. Bad input raises LineageError before anything is written.
    """
    check_name(new, "model")
    check_seed(seed)
    reg = ws.registry
    src = reg.model(source)
    check_has_lm_head(src.name, src.objective, "a growth source (no head to score it by)")
    check_model_files(src, "source model")
    if reg.has_model(new):
        raise ConflictError(f"a model named {new!r} is already registered")
    out = ws.child_path(ws.models_dir, new)
    registered = {d.name for d in reg.domains()}
    if sample_domain is not None:
        reg.domain(sample_domain)  # a named domain must exist
    domain = sample_domain or next((d for d in src.domains if d in registered), None)
    if domain is not None:  # the blocks it is scored on must fit the model
        check_block_size(src.name, Path(src.path), block_size)
    params = {
        "source": source,
        "method": method,
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "ffn": ffn,
        "seed": seed,
        "sample_domain": domain,
    }
    tags = {"lineage.model": new, "lineage.parents": source, "lineage.strategy": "grow"}
    with reserved_output(reg, new, out, job="grow") as reservation:
        fault_point("grow.reserved")
        fail_mlflow_runs(ws.tracking_uri, reservation.stale_runs)
        return _grow_job(ws, src, new, params, block_size, max_blocks, tags)


def _grow_job(
    ws: Workspace,
    src: Model,
    new: str,
    params: dict[str, Any],
    block_size: int,
    max_blocks: int | None,
    tags: dict[str, str],
) -> tuple[Model, GrowthReport]:
    """The grow job's records around ``_grow``, with its scores logged to MLflow."""
    tracker = job_tracker(ws, new, tags)
    with recorded(ws.registry, "grow", tracker, config=params) as rec:
        tracker.log_params(params)
        model, report = _grow(ws, src, new, params, block_size, max_blocks, tracker.run_id)
        fault_point("grow.registered")
        if report.source_eval is not None and report.grown_eval is not None:
            tracker.log_metrics(
                {
                    "source_loss": report.source_eval.loss,
                    "grown_loss": report.grown_eval.loss,
                    "source_ppl": report.source_eval.ppl,
                    "grown_ppl": report.grown_eval.ppl,
                },
                step=0,
            )
        rec.succeed(model.name)
    return model, report


def _grow(
    ws: Workspace,
    src: Model,
    new: str,
    params: dict[str, Any],
    block_size: int,
    max_blocks: int | None,
    run_id: str | None,
) -> tuple[Model, GrowthReport]:
    """Grow, score, save and register (one transaction): the body of `grow_workspace_model`."""
    domain, method, seed = params["sample_domain"], params["method"], params["seed"]
    out = ws.child_path(ws.models_dir, new)
    device = default_device()
    lm = load_model(Path(src.path), device=device)
    grown, record = grow_model(
        lm,
        layers=params["layers"],
        hidden=params["hidden"],
        heads=params["heads"],
        ffn=params["ffn"],
        method=method,
        seed=seed,
    )
    scores: list[EvalResult] = []
    if domain is not None:
        blocks = valid_blocks(ws, domain, Path(src.path), block_size, max_blocks)
        info = TokenizerInfo.of(load_tokenizer(Path(src.path)))
        scores = [
            evaluate(
                m, blocks, objective=src.objective, batch_size=16, tokenizer=info, device=device
            )
            for m in (lm, grown)
        ]
    with atomic_dir(out) as tmp:
        grown.save_pretrained(str(tmp))  # safetensors
        save_tokenizer(load_tokenizer(Path(src.path)), tmp, position_limit(grown.config))
        (tmp / GROWTH_FILE).write_text(record.to_json(), encoding="utf-8")
        fault_point("grow.written")  # the files are in the temporary folder, not yet published
    fault_point("grow.saved")  # published, not yet registered
    model = _register_grown(ws, src, new, out, params, record, scores, run_id)
    if not scores:
        why = (
            f"{src.name!r} was trained on no registered domain"
            if not src.domains
            else f"none of {src.name!r}'s domains ({', '.join(src.domains)}) is registered"
        )
        return model, GrowthReport(src.name, new, record, None, None, None, why)
    return model, GrowthReport(src.name, new, record, domain, scores[0], scores[1])


def _register_grown(
    ws: Workspace,
    src: Model,
    new: str,
    out: Path,
    params: dict[str, Any],
    record: GrowthRecord,
    scores: list[EvalResult],
    run_id: str | None,
) -> Model:
    """The grown model, its grow edge, its scores and its card: one transaction."""
    reg = ws.registry
    shape = f"{params['layers']} layers x {params['hidden']}"
    description = (
        f"{params['method'].upper()} growth of {src.name} to {shape} (seed {params['seed']})"
    )
    model_info, files = read_model_info(out), model_files(out)
    with reg.transaction():  # the model, its edge, its scores and its card, or nothing
        model = reg.add_model(
            new, str(out), model_info, domains=src.domains, description=description, files=files
        )
        fault_point("grow.registering")  # inside the transaction: none of it is committed
        reg.add_edge(src.name, new, "grow", params=growth_edge_params(record), mlflow_run_id=run_id)
        for name, score in zip((src.name, new), scores, strict=False):
            reg.add_evaluation(
                name,
                params["sample_domain"],
                loss=score.loss,
                ppl=score.ppl,
                n_tokens=score.n_tokens,
                step=0,
                mlflow_run_id=run_id,
                protocol=score.protocol,
            )
        ws.write_model_card(new)  # in the published folder; a card only with its rows
    return model

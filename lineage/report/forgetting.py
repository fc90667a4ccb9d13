"""The forgetting report of a workspace (papers/001 App. A.5, Table 4): every requested model
along its adaptation chain, the measures of ``lineage.continual.forgetting``, a heatmap with its
JSON, and both logged as MLflow artifacts of each model's run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lineage.continual.forgetting import (
    CHAIN_EDGES,
    DomainForgetting,
    PerplexityMatrix,
    backward_transfer,
    chain_matrix,
    domain_forgetting,
    forward_transfer,
)
from lineage.errors import LineageError
from lineage.registry.entities import Model, comparable
from lineage.workspace import Workspace

__all__ = ["ChainReport", "ForgettingReport", "forgetting_report"]


@dataclass(frozen=True)
class ChainReport:
    """One requested model with its adaptation chain and the chain's transfer measures."""

    model: str
    chain: tuple[str, ...]  # base first, the model last
    forgetting: dict[str, DomainForgetting]
    backward_transfer: float | None
    forward_transfer: float | None


@dataclass(frozen=True)
class ForgettingReport:
    """Every requested model's chain, and one matrix over all their rows (for the heatmap)."""

    matrix: PerplexityMatrix
    chains: tuple[ChainReport, ...]
    reference: str | None = None  # the model whose perplexities are FWT's b_d

    def to_dict(self) -> dict[str, Any]:
        m = self.matrix
        return {
            "models": list(m.models),
            "domains": list(m.domains),
            "ppl": [[None if math.isnan(v) else v for v in row] for row in m.ppl.tolist()],
            "reference": self.reference,
            "chains": {
                c.model: {
                    "chain": list(c.chain),
                    "forgetting": {d: asdict(f) for d, f in c.forgetting.items()},
                    "backward_transfer": c.backward_transfer,
                    "forward_transfer": c.forward_transfer,
                }
                for c in self.chains
            },
        }


def _union(matrices: Sequence[PerplexityMatrix]) -> PerplexityMatrix:
    """All chains' rows (first appearance order) over all their domains."""
    rows: dict[str, tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]] = {}
    domains: list[str] = []
    for m in matrices:
        domains += [d for d in m.domains if d not in domains]
        for g, name in enumerate(m.models):
            rows.setdefault(name, (m.ppl[g], m.domains, m.learned[g]))
    ppl = np.full((len(rows), len(domains)), np.nan)
    for i, (values, cols, _) in enumerate(rows.values()):
        for j, d in enumerate(cols):
            ppl[i, domains.index(d)] = values[j]
    learned = tuple(r[2] for r in rows.values())
    return PerplexityMatrix(tuple(rows), tuple(domains), ppl, learned)


def _chain(ws: Workspace, name: str) -> list[Model]:
    """``name`` and its adapt/adapter parents back to the base, base first (no cycles exist)."""
    reg = ws.registry
    chain = [reg.model(name)]
    while True:
        parents = [
            e.parent
            for e in reg.edges(chain[0].name)
            if e.child == chain[0].name and e.kind in CHAIN_EDGES
        ]
        if not parents:
            return chain
        chain.insert(0, reg.model(parents[0]))


def _run_of(ws: Workspace, name: str) -> str | None:
    """The MLflow run that made ``name`` (its incoming edge's run), if any."""
    for e in ws.registry.edges(name):
        if e.child == name and e.mlflow_run_id:
            return e.mlflow_run_id
    return next((r.mlflow_run_id for r in ws.registry.runs() if r.model == name), None)


def forgetting_report(
    ws: Workspace,
    models: Sequence[str],
    *,
    reference: str | None = None,
    plot: Path | None = None,
    log_artifacts: bool = True,
) -> ForgettingReport:
    """The report for ``models``, each along its own adaptation chain; a PNG heatmap (``plot``,
    default ``plots/forgetting-<models>.png``) and its JSON beside it, logged as ``forgetting/``
    artifacts of every model's MLflow run when ``log_artifacts``."""
    if not models:
        raise LineageError("name at least one model to report on")
    reg = ws.registry
    evaluations = reg.evaluations()
    ref = {}
    if reference:  # under the protocol the reference shares with the most reported models
        picked = comparable(evaluations, {reference, *models})
        ref = {d: e.ppl for (m, d), e in picked.items() if m == reference}
    if reference:
        reg.model(reference)  # NotFoundError for a typo
    chains, matrices = [], []
    for name in dict.fromkeys(models):
        chain = _chain(ws, name)
        m = chain_matrix(chain, evaluations)
        matrices.append(m)
        chains.append(
            ChainReport(
                name,
                m.models,
                domain_forgetting(m),
                backward_transfer(m),
                forward_transfer(m, ref) if ref else None,
            )
        )
    report = ForgettingReport(_union(matrices), tuple(chains), reference)
    path = plot or ws.plots_dir / f"forgetting-{'+'.join(models)[:80]}.png"
    _write(report, path)
    if log_artifacts:
        _log(ws, report, path)
    return report


def _write(report: ForgettingReport, plot: Path) -> None:
    from lineage.files import atomic_write_text
    from lineage.report.plots import heatmap

    m = report.matrix
    heatmap(
        m.ppl,
        m.models,
        m.domains,
        plot,
        title="validation perplexity per generation (lower is better)",
        fmt="{:.2f}",
        colorbar_label="perplexity",
    )
    atomic_write_text(plot.with_suffix(".json"), json.dumps(report.to_dict(), indent=2) + "\n")


def _log(ws: Workspace, report: ForgettingReport, plot: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ws.tracking_uri)
    for chain in report.chains:
        run_id = _run_of(ws, chain.model)
        if run_id is not None:
            client.log_artifact(run_id, str(plot), "forgetting")
            client.log_artifact(run_id, str(plot.with_suffix(".json")), "forgetting")

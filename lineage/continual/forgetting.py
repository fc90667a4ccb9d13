"""Forgetting on earlier domains after continual adaptation (papers/001 App. A.5, Table 4).

The evidence is a generation × domain perplexity matrix R: row g is the g-th model of an
adaptation chain (row 0 the base model, whose evaluations are the "before"), column d a domain,
R[g][d] its validation perplexity. Each domain is *learned* at the first generation that trained
on it (the base learned its source domains). From R, with G rows and g_d the generation that
learned d (PPL: lower is better, so the continual-learning accuracy metrics of Lopez-Paz &
Ranzato 2017 (GEM) are used with the sign flipped):

- forgetting of d (learned before the last generation):
  Δ_d = R[G−1][d] − R[g_d][d] (PPL after − before; > 0: forgotten) and ρ_d = R[G−1][d] / R[g_d][d];
- backward transfer, GEM's BWT = mean_i (R_{T,i} − R_{i,i}) for accuracy; for perplexity
  BWT = mean over d learned before the last generation of (R[g_d][d] − R[G−1][d]) = −mean Δ_d
  (> 0: later training helped the earlier domains; < 0: forgetting);
- forward transfer, GEM's FWT = mean_i (R_{i−1,i} − b_i) for accuracy with b_i a reference
  (random init); for perplexity FWT = mean over d learned at g_d ≥ 1 of (b_d − R[g_d − 1][d])
  (> 0: what the chain knew before seeing d already made d's perplexity lower than b_d).

Domains with a missing value (NaN) on a row the formula needs are left out of that mean. Pure
functions here; ``forgetting_report`` is the one function that reads the registry and writes
files and MLflow artifacts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineage.errors import LineageError
from lineage.registry.entities import Evaluation, Model

if TYPE_CHECKING:
    from lineage.workspace import Workspace

__all__ = [
    "ChainReport",
    "DomainForgetting",
    "ForgettingReport",
    "PerplexityMatrix",
    "backward_transfer",
    "chain_matrix",
    "domain_forgetting",
    "forgetting_metrics",
    "forgetting_report",
    "forward_transfer",
    "learned_at",
]

CHAIN_EDGES = ("adapt", "adapter")  # the edges one generation of adaptation leaves


@dataclass(frozen=True)
class PerplexityMatrix:
    """R[g][d]: validation perplexity of generation g on domain d."""

    models: tuple[str, ...]  # rows, in generation order: the base (before adaptation) first
    domains: tuple[str, ...]  # columns
    ppl: np.ndarray  # [G, D] float64; NaN where a model was not evaluated on a domain
    learned: tuple[tuple[str, ...], ...]  # per row: the domains that generation first trained on

    def __post_init__(self) -> None:
        shape = (len(self.models), len(self.domains))
        if self.ppl.shape != shape or len(self.learned) != len(self.models):
            raise ValueError(f"ppl {self.ppl.shape} / learned rows do not match {shape}")
        if not self.models:
            raise ValueError("a perplexity matrix needs at least one generation")

    def value(self, g: int, domain: str) -> float:
        return float(self.ppl[g, self.domains.index(domain)])


@dataclass(frozen=True)
class DomainForgetting:
    """One earlier domain: perplexity right after it was learned, at the end, and the change."""

    domain: str
    before: float  # R[g_d][d]
    after: float  # R[G−1][d]
    delta: float  # after − before (> 0: forgotten)
    ratio: float  # after / before


def learned_at(m: PerplexityMatrix) -> dict[str, int]:
    """Domain -> the first generation that trained on it (domains never learned are absent)."""
    out: dict[str, int] = {}
    for g, domains in enumerate(m.learned):
        for d in domains:
            out.setdefault(d, g)
    return out


def domain_forgetting(m: PerplexityMatrix) -> dict[str, DomainForgetting]:
    """Δ_d and ρ_d for every domain learned before the last generation (module docstring)."""
    last = len(m.models) - 1
    out: dict[str, DomainForgetting] = {}
    for d, g in learned_at(m).items():
        if g >= last or d not in m.domains:
            continue
        before, after = m.value(g, d), m.value(last, d)
        if math.isfinite(before) and math.isfinite(after):
            out[d] = DomainForgetting(d, before, after, after - before, after / before)
    return out


def backward_transfer(m: PerplexityMatrix) -> float | None:
    """BWT for perplexity = mean_d (R[g_d][d] − R[G−1][d]); None with nothing to average."""
    deltas = [f.delta for f in domain_forgetting(m).values()]
    return -sum(deltas) / len(deltas) if deltas else None


def forward_transfer(m: PerplexityMatrix, reference: Mapping[str, float]) -> float | None:
    """FWT for perplexity = mean_d (b_d − R[g_d − 1][d]) over domains learned at g_d ≥ 1 with
    a reference b_d (e.g. a random init's perplexity); None with nothing to average."""
    gaps = []
    for d, g in learned_at(m).items():
        if g == 0 or d not in m.domains or d not in reference:
            continue
        seen_before = m.value(g - 1, d)
        if math.isfinite(seen_before) and math.isfinite(reference[d]):
            gaps.append(reference[d] - seen_before)
    return sum(gaps) / len(gaps) if gaps else None


def forgetting_metrics(m: PerplexityMatrix) -> dict[str, float]:
    """MLflow metrics: ``forgetting/<d>`` (Δ_d), ``forgetting_ratio/<d>`` (ρ_d), and
    ``backward_transfer``."""
    out: dict[str, float] = {}
    for d, f in domain_forgetting(m).items():
        out[f"forgetting/{d}"] = f.delta
        out[f"forgetting_ratio/{d}"] = f.ratio
    bwt = backward_transfer(m)
    if bwt is not None:
        out["backward_transfer"] = bwt
    return out


def chain_matrix(chain: Sequence[Model], evaluations: Sequence[Evaluation]) -> PerplexityMatrix:
    """The matrix of one adaptation chain (base first) from registry evaluations.

    The latest evaluation (highest id) per model × domain is used. A generation learned the
    domains it lists that its predecessor does not (the base: all it lists).
    """
    names = [m.name for m in chain]
    latest: dict[tuple[str, str], Evaluation] = {}
    for e in sorted(evaluations, key=lambda e: e.id):
        if e.model in names:
            latest[(e.model, e.domain)] = e
    learned: list[tuple[str, ...]] = []
    for i, row in enumerate(chain):
        before = set(chain[i - 1].domains) if i else set()
        learned.append(tuple(d for d in row.domains if d not in before))
    order = [d for row in learned for d in row]
    domains = tuple(dict.fromkeys([*order, *sorted({d for _, d in latest})]))
    ppl = np.full((len(names), len(domains)), np.nan)
    for (model, domain), e in latest.items():
        ppl[names.index(model), domains.index(domain)] = e.ppl
    return PerplexityMatrix(tuple(names), domains, ppl, tuple(learned))


# --- the report ------------------------------------------------------------------------------


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
    ref = {e.domain: e.ppl for e in evaluations if e.model == reference} if reference else {}
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
    from lineage.plots import heatmap

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

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
functions here; the workspace report that reads the registry and writes the heatmap, its JSON
and MLflow artifacts is ``lineage.report.forgetting.forgetting_report``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lineage.registry.entities import Evaluation, Model, comparable

__all__ = [
    "DomainForgetting",
    "PerplexityMatrix",
    "backward_transfer",
    "chain_matrix",
    "domain_forgetting",
    "forgetting_metrics",
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

    Like with like: per domain, the evaluations under the protocol most of the chain shares
    (``registry.entities.comparable``), each model's latest under it; a model scored there
    only on other blocks is left blank (NaN), not compared across protocols. A generation
    learned the domains it lists that its predecessor does not (the base: all it lists).
    """
    names = [m.name for m in chain]
    latest = comparable(evaluations, names)
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

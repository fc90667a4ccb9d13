"""How the router scores candidate teachers for a shard (papers/001 Eq. 4); pure functions and
records, while ``lineage.routing.router.Router`` does the I/O.

Eq. 4 trains on a mixture of shards D_L^i, each taught by optimal(teachers | D_L^i). The paper
leaves ``optimal`` open but names its ingredients, and the router scores exactly those:

- **proximity** (Obs. 2, App. D): a teacher trained on a similar domain teaches better. The
  proximity of a shard to a teacher is its largest proximity to one of the teacher's training
  domains (vocabulary profiles, ``lineage.corpora.profiles``);
- **capacity** (§3.2): with other settings equal, more parameters teach better (log-scaled);
  a prior for quality, so it counts only while some candidate's perplexity is unknown;
- **quality** (§3.2, §3.3 Table 2): lower perplexity teaches better — the teacher's registry
  perplexity on the shard's nearest domain, or its perplexity measured on a sample of the shard;
- **eligibility** (§3.1 "teacher-guided learning is redundant after M_L surpasses M_S"): a
  teacher is assigned only where it shares the student's tokenizer and is better than the
  student — lower perplexity on the shard, so both perplexities must be known (measured on a
  sample, or in the registry): a teacher whose perplexity or the student's is unknown is refused
  with the missing measurement named. A teacher is never eligible when it is worse than a
  trivial model: a perplexity at or above its vocabulary size (uniform guessing) or above the
  shard's unigram perplexity (token frequencies of the sample, under the same tokenizer). A
  shard without an eligible teacher gets self-learning only (α = 0).

The proximity of a small shard to a whole domain is measured by default as **coverage**: the
share of the shard's word occurrences (stopwords excluded) that are among the domain's top-k
words. The paper's symmetric ``overlap`` |A ∩ B| / k compares two domains of similar size;
between a 20-document shard (a few hundred words) and a 10k-word domain it is dominated by the
domain's k, so its values are tiny (~0.01–0.05) and biased toward domains with short top lists.
Coverage stays in [0, 1] with the same meaning at any shard size; both are available
(``benchmarks/bench_router.py`` measures their nearest-domain accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from lineage.corpora.profiles import SharedTerm, VocabularyProfile
from lineage.errors import LineageError

ProximityMeasure = Literal["coverage", "overlap"]
N_TERMS = 8  # shared top terms kept per score, for explanations


@dataclass(frozen=True)
class RouterWeights:
    """How the router weighs its signals: total = Σ weight × term (each term documented below).

    Defaults: the domain match dominates (Obs. 2; Table 2: a MEDIUM CS expert, 0.6× the
    parameters of BASE_WB, is the better CS teacher), so at the default weights a proximity
    gap of 0.1 equals a 1.5× parameter ratio, and the in- vs out-of-domain gap of the bundled
    domains (~0.45) would need a ~6× larger teacher to overturn. A perplexity is direct
    evidence: one nat of perplexity ratio weighs as much as the widest proximity gap (0 to 1).
    """

    proximity: float = 2.0  # per unit of proximity (a share in [0, 1])
    capacity: float = 0.5  # per nat of parameter ratio ln(n_params / n_ref), while PPL is unknown
    quality: float = 2.0  # per nat of perplexity ratio: ln(ppl_ref / ppl)
    min_proximity: float = 0.0  # a teacher less close than this to the shard is not assigned

    def __post_init__(self) -> None:
        for name in ("proximity", "capacity", "quality"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"weight {name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.min_proximity <= 1.0:
            raise ValueError(f"min_proximity must lie in [0, 1], got {self.min_proximity!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class CandidateInfo:
    """What the router knows about a model (a candidate teacher, or the student)."""

    name: str
    n_params: int
    domains: Mapping[str, VocabularyProfile] = field(default_factory=dict)  # trained on
    ppl: Mapping[str, float] = field(default_factory=dict)  # latest registry PPL per domain
    layers: int = 0
    tokenizer: str | None = None  # tokenizer fingerprint
    path: str = ""  # model directory (for measuring)
    objective: str = ""  # "mlm" | "clm"
    vocab_size: int = 0  # tokens: a perplexity at or above it is worse than uniform guessing


@dataclass(frozen=True)
class CandidateScore:
    """One candidate teacher on one shard: the evidence, the weighted terms and the verdict."""

    model: str
    domain: str | None  # the candidate's training domain nearest the shard
    proximity: float  # shard ↔ that domain, in [0, 1]
    shared_terms: tuple[str, ...]  # top words the shard and that domain share, best first
    n_params: int
    ppl: float | None  # the evidence for quality, None when unknown
    ppl_source: str | None  # "measured" or "registry:<domain>"
    proximity_term: float
    capacity_term: float
    quality_term: float
    total: float
    eligible: bool
    reason: str  # why it may not teach this shard ("" when eligible)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shared_terms"] = list(self.shared_terms)
        return out


# --- proximity of shards to domains (vectorised over domains) -------------------------------


class DomainIndex:
    """Domain profiles as one matrix, so a shard is compared with every domain at once.

    ``ranks``: [n_domains, V] int32, the 1-based rank of word v in domain d's top words (0 when
    absent), V = the union of all top words. Build once per router; pure afterwards.
    """

    def __init__(self, profiles: Mapping[str, VocabularyProfile]) -> None:
        self.names = list(profiles)
        self.profiles = dict(profiles)
        _check_same_words(self.profiles.values())
        self.column: dict[str, int] = {}
        for profile in self.profiles.values():
            for word in profile.top_words:
                self.column.setdefault(word, len(self.column))
        self.ranks = np.zeros((len(self.names), len(self.column)), dtype=np.int32)
        for d, profile in enumerate(self.profiles.values()):
            cols = [self.column[w] for w in profile.top_words]
            self.ranks[d, cols] = np.arange(1, len(cols) + 1, dtype=np.int32)
        self.sizes = np.array([len(p.top_words) for p in self.profiles.values()], dtype=np.int64)
        self._last: tuple[VocabularyProfile, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = (
            None
        )

    def _lookup(self, shard: VocabularyProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns [m], counts [m], shard ranks [m]) of the shard's top words the index knows.

        Remembered for the last shard: routing asks for it three times per shard.
        """
        if self._last is not None and self._last[0] is shard:
            return self._last[1]
        found = [
            (self.column[w], c, r + 1)
            for r, (w, c) in enumerate(zip(shard.top_words, shard.top_counts, strict=True))
            if w in self.column
        ]
        arr = np.array(found, dtype=np.int64).reshape(-1, 3)
        self._last = (shard, (arr[:, 0], arr[:, 1], arr[:, 2]))
        return self._last[1]

    def proximities(
        self, shard: VocabularyProfile, measure: ProximityMeasure = "coverage"
    ) -> np.ndarray:
        """Proximity of ``shard`` to every domain: [n_domains] float64 in [0, 1].

        coverage: Σ counts of the shard's words in the domain's top words / Σ all its counts;
        overlap: |S ∩ D| / max(|S|, |D|), as ``profiles.overlap``.
        """
        if self.names:
            _check_same_words([shard, next(iter(self.profiles.values()))])
        cols, counts, _ = self._lookup(shard)
        present = (self.ranks[:, cols] > 0).astype(np.float64)  # [n_domains, m]
        if measure == "coverage":
            total = float(sum(shard.top_counts))
            return present @ counts.astype(np.float64) / max(total, 1.0)
        if measure == "overlap":
            k = np.maximum(self.sizes, len(shard.top_words)).astype(np.float64)
            return np.where(k > 0, present.sum(axis=1) / np.maximum(k, 1.0), 0.0)
        raise ValueError(f"unknown proximity measure {measure!r} (coverage, overlap)")

    def shared_terms(self, shard: VocabularyProfile, n: int = N_TERMS) -> list[list[SharedTerm]]:
        """Per domain, the ``n`` shared top words ranked highest in both (as
        ``profiles.shared_terms(shard, domain, n)``, ordered by rank sum, then word)."""
        cols, _, shard_ranks = self._lookup(shard)
        words = [shard.top_words[r - 1] for r in shard_ranks]
        out: list[list[SharedTerm]] = []
        for d in range(len(self.names)):
            dom_ranks = self.ranks[d, cols]
            keep = np.flatnonzero(dom_ranks > 0)
            key = shard_ranks[keep] + dom_ranks[keep]
            if len(keep) > n:  # only words tied with the n-th smallest rank sum can make the cut
                keep = keep[key <= np.partition(key, n - 1)[n - 1]]
            best = sorted(keep, key=lambda i: (shard_ranks[i] + dom_ranks[i], words[i]))[:n]
            out.append([SharedTerm(words[i], int(shard_ranks[i]), int(dom_ranks[i])) for i in best])
        return out


def _check_same_words(profiles: Iterable[VocabularyProfile]) -> None:
    """Profiles compare only when they split text into the same words."""
    keys = {(p.stopwords, p.token_pattern) for p in profiles}
    if len(keys) > 1:
        raise LineageError(f"profiles use different stopwords / word patterns: {sorted(keys)}")


# --- the scoring policy (pure) ---------------------------------------------------------------


def _geomean(values: Iterable[float]) -> float | None:
    vals = [math.log(v) for v in values if v > 0]
    return math.exp(sum(vals) / len(vals)) if vals else None


def _ppl_of(
    model: CandidateInfo, domain: str | None, measured: Mapping[str, float | None]
) -> tuple[float | None, str | None]:
    """The perplexity evidence for ``model``: measured on the shard, else registry on ``domain``."""
    if measured.get(model.name) is not None:
        return measured[model.name], "measured"
    if domain is not None and domain in model.ppl:
        return float(model.ppl[domain]), f"registry:{domain}"
    return None, None


def score_candidates(
    shard_profile: VocabularyProfile,
    candidates: Sequence[CandidateInfo],
    *,
    student: CandidateInfo | None = None,
    weights: RouterWeights | None = None,
    measured: Mapping[str, float | None] | None = None,
    nearest_domain: str | None = None,
    index: DomainIndex | None = None,
    measure: ProximityMeasure = "coverage",
    unigram: Mapping[str, float | None] | None = None,
) -> list[CandidateScore]:
    """Score every candidate teacher for one shard; best total first (ties: name).

    ``measured``: perplexities measured on a sample of this shard, by model name (student
    included), preferred over registry ones. ``nearest_domain``: the shard's nearest registered
    domain, whose registry perplexities are the quality evidence (default: the nearest among
    the candidates' domains). ``index``: a prebuilt ``DomainIndex`` holding the candidates'
    domains (default: built here). ``unigram``: the shard sample's unigram perplexity under each
    candidate's tokenizer, by model name (a teacher must beat it). The chosen teacher is the
    first eligible score.
    """
    weights = weights or RouterWeights()
    measured = measured or {}
    if index is None:
        profiles = {d: p for c in candidates for d, p in c.domains.items()}
        index = DomainIndex(profiles)
    prox = dict(zip(index.names, index.proximities(shard_profile, measure).tolist(), strict=True))
    terms = dict(zip(index.names, index.shared_terms(shard_profile), strict=True))
    if nearest_domain is None and prox:
        nearest_domain = max(prox, key=lambda d: (prox[d], d))
    student_ppl, _ = _ppl_of(student, nearest_domain, measured) if student else (None, None)
    evidence = [_ppl_of(c, nearest_domain, measured) for c in candidates]
    n_ref = student.n_params if student else _geomean(c.n_params for c in candidates)
    # Size is a prior for quality (§3.2: bigger teachers reach lower PPL); once every
    # candidate's perplexity is known it would count the same evidence twice.
    if all(p is not None for p, _ in evidence):
        n_ref = None
    ppl_ref = student_ppl or _geomean(p for p, _ in evidence if p is not None)
    scores = []
    for cand, (ppl, source) in zip(candidates, evidence, strict=True):
        own = [d for d in cand.domains if d in prox]
        domain = max(own, key=lambda d: (prox[d], d)) if own else None
        proximity = prox[domain] if domain else 0.0
        cap = math.log(cand.n_params / n_ref) if n_ref and cand.n_params > 0 else 0.0
        qual = math.log(ppl_ref / ppl) if ppl and ppl_ref else 0.0
        terms_ = (weights.proximity * proximity, weights.capacity * cap, weights.quality * qual)
        floor = (unigram or {}).get(cand.name)
        reason = _refusal(cand, student, (ppl, student_ppl, floor), proximity, weights)
        scores.append(
            CandidateScore(
                model=cand.name,
                domain=domain,
                proximity=proximity,
                shared_terms=tuple(t.word for t in terms.get(domain, [])) if domain else (),
                n_params=cand.n_params,
                ppl=ppl,
                ppl_source=source,
                proximity_term=terms_[0],
                capacity_term=terms_[1],
                quality_term=terms_[2],
                total=sum(terms_),
                eligible=not reason,
                reason=reason,
            )
        )
    return sorted(scores, key=lambda s: (-s.total, s.model))


def _refusal(
    cand: CandidateInfo,
    student: CandidateInfo | None,
    evidence: tuple[float | None, float | None, float | None],
    proximity: float,
    weights: RouterWeights,
) -> str:
    """Why ``cand`` may not teach this shard, or "". ``evidence``: (the candidate's ppl, the
    student's, the shard's unigram ppl under the candidate's tokenizer), None when unknown."""
    ppl, student_ppl, unigram = evidence
    if ppl is not None and cand.vocab_size and ppl >= cand.vocab_size:
        return f"ppl {ppl:.2f} is worse than uniform over its {cand.vocab_size} tokens"
    if ppl is not None and unigram is not None and ppl >= unigram:
        return f"ppl {ppl:.2f} is not below the shard's unigram perplexity {unigram:.2f}"
    if student is not None:
        if cand.name == student.name:
            return "it is the student"
        if cand.tokenizer and student.tokenizer and cand.tokenizer != student.tokenizer:
            return "its tokenizer differs from the student's"
        if ppl is None:
            return "its perplexity on this shard is unknown: measure it (--measure)"
        if student_ppl is None:
            return "the student's perplexity on this shard is unknown: measure it (--measure)"
        if ppl >= student_ppl:
            return f"ppl {ppl:.2f} is not below the student's {student_ppl:.2f}"
    if proximity < weights.min_proximity:
        return f"proximity {proximity:.1%} is below min_proximity {weights.min_proximity:.1%}"
    return ""

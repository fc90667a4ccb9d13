"""The teacher router: which registered model should teach each shard (papers/001 Eq. 4).

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
  teacher is assigned only where it is better than the student (lower perplexity, when both are
  known) and shares its tokenizer; otherwise the shard gets self-learning only (α = 0).

The proximity of a small shard to a whole domain is measured by default as **coverage**: the
share of the shard's word occurrences (stopwords excluded) that are among the domain's top-k
words. The paper's symmetric ``overlap`` |A ∩ B| / k compares two domains of similar size;
between a 20-document shard (a few hundred words) and a 10k-word domain it is dominated by the
domain's k, so its values are tiny (~0.01–0.05) and biased toward domains with short top lists.
Coverage stays in [0, 1] with the same meaning at any shard size; both are available
(``benchmarks/bench_router.py`` measures their nearest-domain accuracy).

Scoring is pure (``score_candidates``); ``Router`` owns the I/O: reading shards, the registry,
and loading models for ``measure=True``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lineage.corpora.profiles import SharedTerm, VocabularyProfile, profile_texts
from lineage.errors import LineageError
from lineage.registry.entities import Shard

if TYPE_CHECKING:
    from lineage.registry.store import Registry
    from lineage.workspace import Workspace

__all__ = [
    "Assignment",
    "CandidateInfo",
    "CandidateScore",
    "DomainIndex",
    "Router",
    "RouterWeights",
    "candidate_info",
    "score_candidates",
]

ProximityMeasure = Literal["coverage", "overlap"]
Routable = str | Path | Shard | VocabularyProfile
Measurer = Callable[["CandidateInfo", Sequence[str]], "float | None"]
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


@dataclass(frozen=True)
class Assignment:
    """The router's decision for one shard: ``teacher`` None means self-learning (α = 0)."""

    shard: str  # "<domain>/<shard name>", a file path, or "text-<i>"
    shard_id: int | None  # registry id for a registered shard
    domain: str | None  # nearest registered domain
    proximity: float  # to that domain
    teacher: str | None
    student: str | None
    student_ppl: float | None
    scores: tuple[CandidateScore, ...]  # best total first

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = [s.to_dict() for s in self.scores]
        return out

    def explain(self) -> str:
        """A few lines: the decision, then every candidate's evidence and terms."""
        chosen = self.teacher or "none (self-learning, α = 0)"
        lines = [
            f"{self.shard}: nearest domain {self.domain} ({self.proximity:.1%}); "
            f"teacher {chosen}"
            + (f"; student {self.student} ppl {_fmt_ppl(self.student_ppl)}" if self.student else "")
        ]
        for s in self.scores:
            verdict = "ok" if s.eligible else f"refused: {s.reason}"
            lines.append(
                f"  {s.model}: total {s.total:+.3f} = proximity {s.proximity_term:+.3f} "
                f"({s.domain} {s.proximity:.1%}) + capacity {s.capacity_term:+.3f} "
                f"({s.n_params:,} params) + quality {s.quality_term:+.3f} "
                f"(ppl {_fmt_ppl(s.ppl)} {s.ppl_source or ''}) [{verdict}]"
            )
            if s.shared_terms:
                lines.append(f"    shared terms: {', '.join(s.shared_terms)}")
        return "\n".join(lines)


def _fmt_ppl(ppl: float | None) -> str:
    return "?" if ppl is None else f"{ppl:.2f}"


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
) -> list[CandidateScore]:
    """Score every candidate teacher for one shard; best total first (ties: name).

    ``measured``: perplexities measured on a sample of this shard, by model name (student
    included), preferred over registry ones. ``nearest_domain``: the shard's nearest registered
    domain, whose registry perplexities are the quality evidence (default: the nearest among
    the candidates' domains). ``index``: a prebuilt ``DomainIndex`` holding the candidates'
    domains (default: built here). The chosen teacher is the first eligible score.
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
        reason = _refusal(cand, student, ppl, student_ppl, proximity, weights)
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
    ppl: float | None,
    student_ppl: float | None,
    proximity: float,
    weights: RouterWeights,
) -> str:
    """Why ``cand`` may not teach this shard, or ""."""
    if student is not None:
        if cand.name == student.name:
            return "it is the student"
        if cand.tokenizer and student.tokenizer and cand.tokenizer != student.tokenizer:
            return "its tokenizer differs from the student's"
        if ppl is not None and student_ppl is not None and ppl >= student_ppl:
            return f"ppl {ppl:.2f} is not below the student's {student_ppl:.2f}"
    if proximity < weights.min_proximity:
        return f"proximity {proximity:.1%} is below min_proximity {weights.min_proximity:.1%}"
    return ""


# --- the router (I/O: shards, registry, models) ----------------------------------------------


@dataclass(frozen=True)
class _Item:
    label: str
    shard_id: int | None
    profile: VocabularyProfile | None
    docs: Callable[[], Iterable[str]]


def read_documents(path: Path) -> Iterable[str]:
    """Documents of a corpus file (text separated by blank lines, .gz, .jsonl, .parquet)."""
    from lineage.corpora.domains import read_documents as read  # the corpus formats live there

    return read(path)


class Router:
    """Routes shards to teachers; build with ``Router.from_workspace`` or from plain data.

    ``domains``: every registered domain profile (nearest-domain labels); ``candidates``: the
    teachers; ``student``: the model being trained (eligibility and references), or None;
    ``measurer``: called as ``measurer(model, sample_docs)`` for perplexities on a shard sample.
    """

    def __init__(
        self,
        domains: Mapping[str, VocabularyProfile],
        candidates: Sequence[CandidateInfo],
        *,
        student: CandidateInfo | None = None,
        weights: RouterWeights | None = None,
        measure: ProximityMeasure = "coverage",
        measurer: Measurer | None = None,
        sample_docs: int = 64,
        root: Path | None = None,
    ) -> None:
        if not domains:
            raise LineageError("no domain has a vocabulary profile: nothing to route against")
        if measure not in ("coverage", "overlap"):
            raise LineageError(f"unknown proximity measure {measure!r} (coverage, overlap)")
        self.index = DomainIndex(domains)
        self.candidates = list(candidates)
        self.student = student
        self.weights = weights or RouterWeights()
        self.measure = measure
        self.measurer = measurer
        self.sample_docs = sample_docs
        self.root = root
        # Shards are profiled exactly as the domains were, so their word lists compare.
        self._like = next(iter(domains.values()))

    @classmethod
    def from_workspace(
        cls,
        ws: Workspace,
        *,
        teachers: Sequence[str] | None = None,
        student: str | None = None,
        measure: bool = False,
        weights: RouterWeights | None = None,
        proximity: ProximityMeasure = "coverage",
    ) -> Router:
        """A router over the workspace's domains and models.

        ``teachers``: registry names (default: every model except the student); ``measure``:
        measure teacher and student perplexities on a sample of each shard (loads the models).
        """
        reg = ws.registry
        domains = {
            d.name: VocabularyProfile.from_dict(d.profile) for d in reg.domains() if d.profile
        }
        names = teachers if teachers is not None else [m.name for m in reg.models()]
        cands = [candidate_info(reg, n, domains) for n in names if n != student]
        stud = candidate_info(reg, student, domains) if student else None
        measurer = None
        if measure:
            from lineage.models.evaluation import PerplexityMeter  # torch loads only when measuring

            measurer = PerplexityMeter()
        return cls(
            domains,
            cands,
            student=stud,
            weights=weights,
            measure=proximity,
            measurer=measurer,
            root=ws.root,
        )

    def profile(self, docs: Iterable[str]) -> VocabularyProfile:
        """Profile documents as the domains were profiled."""
        like = self._like
        return profile_texts(
            docs,
            top_k=like.top_k,
            stopwords=like.stopwords,
            token_pattern=like.token_pattern,
            measure=like.measure,
        )

    def nearest_domain(self, text: str | VocabularyProfile) -> tuple[str, float]:
        """(the registered domain closest to ``text``, its proximity in [0, 1])."""
        profile = text if isinstance(text, VocabularyProfile) else self.profile([text])
        prox = self.index.proximities(profile, self.measure)
        best = int(np.argmax(prox))
        return self.index.names[best], float(prox[best])

    def route(self, items: Routable | Sequence[Routable]) -> list[Assignment]:
        """One ``Assignment`` per shard. A ``str`` is a text (one shard), a ``Path`` a corpus
        file (documents separated by blank lines; .gz, .jsonl, .parquet), a ``Shard`` a
        registered shard (its stored profile is used when it has one), a ``VocabularyProfile``
        an already profiled shard (nothing to measure on); a list routes each of its items."""
        many = items if isinstance(items, list | tuple) else [items]
        return [self._route_one(self._item(x, i)) for i, x in enumerate(many)]

    def _item(self, x: Routable, i: int) -> _Item:
        if isinstance(x, VocabularyProfile):
            return _Item(f"profile-{i}", None, x, list)
        if isinstance(x, Shard):
            path = Path(x.path)
            path = path if path.is_absolute() or self.root is None else self.root / path
            profile = VocabularyProfile.from_dict(x.profile) if x.profile else None
            words = (self._like.stopwords, self._like.token_pattern)
            if profile is not None and (profile.stopwords, profile.token_pattern) != words:
                profile = None  # split into words differently: profile again from the text
            return _Item(f"{x.domain}/{x.name}", x.id, profile, lambda: read_documents(path))
        if isinstance(x, Path):
            if not x.is_file():
                raise LineageError(f"{x}: no such file")
            return _Item(str(x), None, None, lambda: read_documents(x))
        if isinstance(x, str):
            return _Item(f"text-{i}", None, None, lambda: [x])
        raise TypeError(f"cannot route a {type(x).__name__}: give a str, Path, Shard or profile")

    def route_documents(self, docs: Sequence[str], label: str = "documents") -> Assignment:
        """Route one shard given as its documents."""
        return self._route_one(_Item(label, None, None, lambda: docs))

    def _route_one(self, item: _Item) -> Assignment:
        profile = item.profile or self.profile(item.docs())
        domain, proximity = self.nearest_domain(profile)
        measured: dict[str, float | None] = {}
        if self.measurer is not None:
            sample = list(itertools.islice(item.docs(), self.sample_docs))
            models = [*self.candidates, *([self.student] if self.student else [])]
            measured = {m.name: self.measurer(m, sample) for m in models} if sample else {}
        scores = score_candidates(
            profile,
            self.candidates,
            student=self.student,
            weights=self.weights,
            measured=measured,
            nearest_domain=domain,
            index=self.index,
            measure=self.measure,
        )
        teacher = next((s.model for s in scores if s.eligible), None)
        student_ppl = None
        if self.student is not None:
            student_ppl, _ = _ppl_of(self.student, domain, measured)
        return Assignment(
            shard=item.label,
            shard_id=item.shard_id,
            domain=domain,
            proximity=proximity,
            teacher=teacher,
            student=self.student.name if self.student else None,
            student_ppl=student_ppl,
            scores=tuple(scores),
        )


def candidate_info(
    reg: Registry, name: str, domains: Mapping[str, VocabularyProfile]
) -> CandidateInfo:
    """A registered model as a candidate: its profiled training domains, latest PPL per domain."""
    model = reg.model(name)
    ppl = {e.domain: e.ppl for e in reg.evaluations(model=name)}  # ordered by id: last wins
    return CandidateInfo(
        name=model.name,
        n_params=model.n_params,
        domains={d: domains[d] for d in model.domains if d in domains},
        ppl=ppl,
        layers=model.layers,
        tokenizer=model.tokenizer_fingerprint,
        path=model.path,
        objective=model.objective,
    )

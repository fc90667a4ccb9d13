"""The teacher router: which registered model should teach each shard (papers/001 Eq. 4).

The policy — proximity, capacity, quality, eligibility — is ``lineage.routing.scoring``, pure
(``score_candidates``); ``Router`` owns the I/O: reading shards, the registry, and loading
models for ``measure=True`` (``lineage.routing.perplexity``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineage.corpora.profiles import VocabularyProfile, profile_texts
from lineage.errors import LineageError
from lineage.registry.entities import Evaluation, Shard, comparable
from lineage.registry.modelinfo import ENCODER
from lineage.routing.scoring import (
    CandidateInfo,
    CandidateScore,
    DomainIndex,
    ProximityMeasure,
    RouterWeights,
    _ppl_of,
    score_candidates,
)

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

Routable = str | Path | Shard | VocabularyProfile
# (model, a shard's sample documents, the shard's domain when registered) -> ppl or None
Measurer = Callable[["CandidateInfo", Sequence[str], "str | None"], "float | None"]
Baseline = Callable[["CandidateInfo", Sequence[str]], "float | None"]


def regret(teacher: str | None, scores: Sequence[Mapping[str, Any]]) -> float | None:
    """ln(ppl of the chosen teacher / the lowest measured ppl among eligible candidates),
    nats (0: the oracle's choice); None unless the chosen and the eligible were measured on
    the shard. ``scores``: ``CandidateScore.to_dict()`` rows (as plans store them)."""
    ok = [s for s in scores if s.get("eligible")]
    measured = [s for s in ok if s.get("ppl") is not None and s.get("ppl_source") == "measured"]
    ppl = {s["model"]: float(s["ppl"]) for s in measured}
    if teacher is None or len(ppl) < len(ok) or teacher not in ppl:
        return None
    return math.log(ppl[teacher] / min(ppl.values()))


def format_regret(value: float | None) -> str:
    """A table cell: '+0.000' nats, or '' when not measured."""
    return "" if value is None else f"{value:+.3f}"


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
    unigram_ppl: float | None = None  # the shard sample's, under the student's tokenizer

    @property
    def regret(self) -> float | None:
        """``regret(teacher, scores)`` of this decision."""
        return regret(self.teacher, [s.to_dict() for s in self.scores])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = [s.to_dict() for s in self.scores]
        out["regret"] = self.regret
        return out

    def explain(self) -> str:
        """A few lines: the decision, then every candidate's evidence and terms."""
        chosen = self.teacher or "none (self-learning, α = 0)"
        lines = [
            f"{self.shard}: nearest domain {self.domain} ({self.proximity:.1%}); "
            f"teacher {chosen}"
            + (f"; student {self.student} ppl {_fmt_ppl(self.student_ppl)}" if self.student else "")
        ]
        if self.unigram_ppl is not None or self.regret is not None:
            regret = "?" if self.regret is None else f"{self.regret:.3f} nats"
            lines.append(
                f"  shard unigram ppl {_fmt_ppl(self.unigram_ppl)} (measured now: a teacher must "
                f"beat it); regret vs the lowest measured ppl: {regret}"
            )
        for s in self.scores:
            verdict = "ok" if s.eligible else f"refused: {s.reason}"
            lines.append(
                f"  {s.model}: total {s.total:+.3f} = proximity {s.proximity_term:+.3f} "
                f"({s.domain} {s.proximity:.1%}) + capacity {s.capacity_term:+.3f} "
                f"({s.n_params:,} params{', prior: ppl unknown' if s.capacity_term else ''}) "
                f"+ quality {s.quality_term:+.3f} (ppl {_fmt_ppl(s.ppl)}, "
                f"{_source(s.ppl_source)}) [{verdict}]"
            )
            if s.shared_terms:
                lines.append(f"    shared terms: {', '.join(s.shared_terms)}")
        return "\n".join(lines)


def _fmt_ppl(ppl: float | None) -> str:
    return "?" if ppl is None else f"{ppl:.2f}"


def _source(ppl_source: str | None) -> str:
    """Where a perplexity came from, for people: measured now, the registry, or nowhere."""
    if ppl_source is None:
        return "not measured"
    if ppl_source == "measured":
        return "measured now on a sample of the shard"
    return f"registry, {ppl_source.removeprefix('registry:')} valid split"


# --- the router (I/O: shards, registry, models) ----------------------------------------------


@dataclass(frozen=True)
class _Item:
    label: str
    shard_id: int | None
    profile: VocabularyProfile | None
    docs: Callable[[], Iterable[str]]
    domain: str | None = None  # a registered shard's domain (measurements are stored under it)


def read_documents(path: Path) -> Iterable[str]:
    """Documents of a corpus file (text separated by blank lines, .gz, .jsonl, .parquet)."""
    from lineage.corpora.domains import read_documents as read  # the corpus formats live there

    return read(path)


class Router:
    """Routes shards to teachers; build with ``Router.from_workspace`` or from plain data.

    ``domains``: every registered domain profile (nearest-domain labels); ``candidates``: the
    teachers; ``student``: the model being trained (eligibility and references), or None;
    ``measurer``: called as ``measurer(model, sample_docs, domain)`` for perplexities on a shard
    sample (``domain``: the shard's, when it is registered; None for texts and files).
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
        baseline: Baseline | None = None,
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
        self.baseline = baseline  # the shard sample's unigram ppl under a model's tokenizer
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
        names = (
            teachers
            if teachers is not None
            else [m.name for m in reg.models() if m.objective != ENCODER]  # no head: no teacher
        )
        # Registry perplexities compare like with like: one protocol per domain for all.
        picked = comparable(reg.evaluations(), {*names, *([student] if student else [])})
        cands = [candidate_info(reg, n, domains, picked) for n in names if n != student]
        stud = candidate_info(reg, student, domains, picked) if student else None
        measurer = None
        if measure:
            # torch loads only when measuring
            from lineage.routing.perplexity import PerplexityMeter

            measurer = PerplexityMeter(registry=reg)  # measurements cached as evaluations
        return cls(
            domains,
            cands,
            student=stud,
            weights=weights,
            measure=proximity,
            measurer=measurer,
            baseline=measurer.unigram if measurer is not None else None,
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
            return _Item(
                f"{x.domain}/{x.name}", x.id, profile, lambda: read_documents(path), x.domain
            )
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
        unigram: dict[str, float | None] = {}
        if self.measurer is not None:
            sample = list(itertools.islice(item.docs(), self.sample_docs))
            models = [*self.candidates, *([self.student] if self.student else [])]
            measured = (
                {m.name: self.measurer(m, sample, item.domain) for m in models} if sample else {}
            )
            unigram = self._unigram(models, sample) if sample else {}
        scores = score_candidates(
            profile,
            self.candidates,
            student=self.student,
            weights=self.weights,
            measured=measured,
            nearest_domain=domain,
            index=self.index,
            measure=self.measure,
            unigram=unigram,
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
            unigram_ppl=unigram.get(self.student.name) if self.student else None,
        )

    def _unigram(
        self, models: Sequence[CandidateInfo], sample: list[str]
    ) -> dict[str, float | None]:
        """The sample's unigram perplexity under each model's tokenizer (once per tokenizer)."""
        if self.baseline is None:
            return {}
        by_tokenizer: dict[str | None, float | None] = {}
        for m in models:
            key = m.tokenizer or m.name
            if key not in by_tokenizer:
                by_tokenizer[key] = self.baseline(m, sample)
        return {m.name: by_tokenizer[m.tokenizer or m.name] for m in models}


def candidate_info(
    reg: Registry,
    name: str,
    domains: Mapping[str, VocabularyProfile],
    picked: Mapping[tuple[str, str], Evaluation] | None = None,
) -> CandidateInfo:
    """A registered model as a candidate: its profiled training domains, its registry PPL per
    domain (from ``picked``: ``comparable`` over the models compared; default: its own)."""
    model = reg.model(name)
    if picked is None:
        picked = comparable(reg.evaluations(model=name))
    ppl = {d: e.ppl for (m, d), e in picked.items() if m == name}
    return CandidateInfo(
        name=model.name,
        n_params=model.n_params,
        domains={d: domains[d] for d in model.domains if d in domains},
        ppl=ppl,
        layers=model.layers,
        tokenizer=model.tokenizer_fingerprint,
        path=model.path,
        objective=model.objective,
        vocab_size=model.vocab_size,
    )

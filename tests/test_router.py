"""The teacher router (papers/001 Eq. 4): proximity, capacity, quality, eligibility, and its
accuracy on held-out slices of the bundled domains."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lineage.cli import app
from lineage.corpora.domains import bundled_domains_dir, read_documents
from lineage.corpora.profiles import VocabularyProfile, overlap, profile_texts, shared_terms
from lineage.errors import LineageError
from lineage.registry.modelinfo import ModelInfo
from lineage.routing.perplexity import PerplexityMeter
from lineage.routing.quality import evaluate_router
from lineage.routing.router import (
    CandidateInfo,
    DomainIndex,
    Router,
    RouterWeights,
    score_candidates,
)
from lineage.workspace import Workspace

DOMAINS = ("literature", "cs", "bio")
SLICE_DOCS = 20


@cache
def corpus(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(profile part, held-out part) of a bundled domain: 2 documents in 7 are held out."""
    docs = list(read_documents(bundled_domains_dir() / name / f"{name}.txt.gz"))
    train = tuple(d for i, d in enumerate(docs) if i % 7 not in (0, 3))
    held = tuple(d for i, d in enumerate(docs) if i % 7 in (0, 3))
    return train, held


@cache
def domain_profile(name: str) -> VocabularyProfile:
    return profile_texts(corpus(name)[0])


def held_slices(name: str, n: int) -> list[list[str]]:
    held = corpus(name)[1]
    return [list(held[i * SLICE_DOCS : (i + 1) * SLICE_DOCS]) for i in range(n)]


def info(n_params: int = 1_000_000, layers: int = 4, fingerprint: str | None = "tok") -> ModelInfo:
    return ModelInfo("roberta", "mlm", layers, 64, 2, 256, 300, n_params, fingerprint)


def setup_workspace(ws: Workspace, tmp: Path, *, shard_profiles: bool = True) -> None:
    """Three profiled domains, each with two held-out train shards, and one teacher per domain."""
    reg = ws.registry
    for name in DOMAINS:
        shards = []
        for i, docs in enumerate(held_slices(name, 2)):
            path = tmp / f"{name}-{i}.txt"
            path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
            profile = profile_texts(docs).to_dict() if shard_profiles else None
            shards.append(
                {
                    "name": f"train-{i}",
                    "split": "train",
                    "path": str(path),
                    "n_bytes": path.stat().st_size,
                    "n_documents": len(docs),
                    "digest": f"{name}{i}",
                    "profile": profile,
                }
            )
        reg.add_domain(name, profile=domain_profile(name).to_dict(), shards=shards)
        reg.add_model(f"t_{name}", f"/nowhere/t_{name}", info(), domains=[name])


@pytest.mark.parametrize("shard_profiles", [True, False], ids=["stored", "read"])
def test_each_bundled_domain_routes_to_its_teacher(
    ws: Workspace, tmp_path: Path, shard_profiles: bool
) -> None:
    setup_workspace(ws, tmp_path, shard_profiles=shard_profiles)
    shards = ws.registry.shards(split="train")
    assignments = Router.from_workspace(ws).route(shards)
    assert [a.teacher for a in assignments] == [f"t_{s.domain}" for s in shards]
    assert [a.domain for a in assignments] == [s.domain for s in shards]
    assert all(a.shard_id == s.id for a, s in zip(assignments, shards, strict=True))
    # The chosen teacher's evidence: its own domain, the largest proximity, shared words.
    for a in assignments:
        best = a.scores[0]
        assert best.model == a.teacher and best.domain == a.domain
        assert best.proximity == pytest.approx(a.proximity) and best.proximity > 0.8
        assert len(best.shared_terms) > 3
        assert best.total > a.scores[1].total


@pytest.mark.parametrize("measure", ["coverage", "overlap"])
def test_nearest_domain_accuracy_on_held_out_slices(measure: str) -> None:
    profiles = {n: domain_profile(n) for n in DOMAINS}
    router = Router(profiles, [], measure=measure)  # type: ignore[arg-type]
    shards = [(n, docs) for n in DOMAINS for docs in held_slices(n, 20)]
    report, _ = evaluate_router(router, shards)
    print(f"nearest-domain accuracy ({measure}, {len(shards)} slices): {report.accuracy:.3f}")
    assert report.n_shards == 60
    assert report.accuracy >= 0.9
    assert sum(sum(row.values()) for row in report.confusion.values()) == 60


def cand(name: str, domain: str | None, n_params: float = 1e6, **kw: Any) -> CandidateInfo:
    domains = {domain: domain_profile(domain)} if domain else {}
    return CandidateInfo(name=name, n_params=int(n_params), domains=domains, **kw)


def test_bigger_or_lower_ppl_teacher_wins_a_proximity_tie() -> None:
    shard = profile_texts(held_slices("cs", 1)[0])
    small, big = cand("small", "cs"), cand("big", "cs", n_params=4_000_000)
    scores = score_candidates(shard, [small, big])
    assert [s.model for s in scores] == ["big", "small"]
    assert scores[0].proximity == scores[1].proximity
    # capacity term = w · ln(n / n_ref), n_ref = the candidates' geometric mean (no student)
    w = RouterWeights().capacity
    assert scores[0].capacity_term == pytest.approx(w * math.log(4 / 2))
    assert scores[1].capacity_term == pytest.approx(w * math.log(1 / 2))
    worse, better = cand("worse", "cs", ppl={"cs": 9.0}), cand("better", "cs", ppl={"cs": 3.0})
    scores = score_candidates(shard, [worse, better])
    assert [s.model for s in scores] == ["better", "worse"]
    assert scores[0].ppl_source == "registry:cs"
    assert all(s.capacity_term == 0 for s in scores)  # size no longer counts once PPL is known
    w = RouterWeights().quality
    assert scores[0].quality_term == pytest.approx(w * math.log(math.sqrt(27) / 3))


def test_domain_beats_size_and_total_is_the_weighted_sum() -> None:
    shard = profile_texts(held_slices("bio", 1)[0])
    scores = score_candidates(shard, [cand("bio", "bio"), cand("lit", "literature", n_params=3e6)])
    assert scores[0].model == "bio"  # Obs. 2: the domain match outweighs a 3x size
    for s in scores:
        assert s.total == pytest.approx(s.proximity_term + s.capacity_term + s.quality_term)
        assert s.proximity_term == pytest.approx(RouterWeights().proximity * s.proximity)
    # Only proximity counts: capacity weight 0 leaves the order to the domain alone.
    zero = RouterWeights(capacity=0.0)
    assert all(
        s.capacity_term == 0 for s in score_candidates(shard, [cand("a", "bio")], weights=zero)
    )


def test_teacher_worse_than_student_is_not_assigned() -> None:
    profiles = {n: domain_profile(n) for n in DOMAINS}
    teacher = cand("t_cs", "cs", ppl={"cs": 8.0})
    good_student = cand("student", "literature", ppl={"cs": 5.0})
    router = Router(profiles, [teacher], student=good_student)
    (a,) = router.route([" ".join(held_slices("cs", 1)[0])])
    assert a.domain == "cs" and a.teacher is None and a.student_ppl == 5.0
    assert not a.scores[0].eligible and "not below the student's" in a.scores[0].reason
    weak_student = cand("student", "literature", ppl={"cs": 12.0})
    (a,) = Router(profiles, [teacher], student=weak_student).route(held_slices("cs", 1)[0][:5])[:1]
    assert a.teacher == "t_cs" and a.scores[0].eligible
    # Quality is relative to the student: ln(12 / 8) nats better.
    assert a.scores[0].quality_term == pytest.approx(RouterWeights().quality * math.log(12 / 8))


def test_other_refusals() -> None:
    shard = profile_texts(held_slices("bio", 1)[0])
    student = cand("s", None, tokenizer="A")
    other_tok = cand("t1", "bio", tokenizer="B")
    (s,) = score_candidates(shard, [other_tok], student=student)
    assert not s.eligible and "tokenizer" in s.reason
    far = RouterWeights(min_proximity=0.99)
    (s,) = score_candidates(shard, [cand("t2", "bio")], weights=far)
    assert not s.eligible and "min_proximity" in s.reason
    with pytest.raises(ValueError, match="capacity"):
        RouterWeights(capacity=-1.0)
    with pytest.raises(ValueError, match="min_proximity"):
        RouterWeights(min_proximity=2.0)


def test_unknown_or_trivially_beaten_perplexities_never_teach() -> None:
    shard = profile_texts(held_slices("cs", 1)[0])
    student = cand("s", None, ppl={"cs": 80.0}, vocab_size=1000)
    unknown = cand("unknown", "cs", n_params=1e9)  # big and in-domain: priors alone would win
    (s,) = score_candidates(shard, [unknown], student=student)
    assert not s.eligible and "its perplexity on this shard is unknown" in s.reason
    quiet = cand("s", None)  # the student's perplexity is unknown: nothing to beat
    (s,) = score_candidates(shard, [cand("t", "cs", ppl={"cs": 5.0})], student=quiet)
    assert not s.eligible and "the student's perplexity on this shard is unknown" in s.reason
    # A teacher at or above its vocabulary size is worse than uniform, student or not.
    ruined = cand("ruined", "cs", n_params=1e9, ppl={"cs": 1500.0}, vocab_size=1000)
    for who in (student, None):
        (s,) = score_candidates(shard, [ruined], student=who)
        assert not s.eligible and "worse than uniform over its 1000 tokens" in s.reason
    # Beating the student is not enough when counting tokens does better (measured unigram).
    weak = cand("weak", "cs", ppl={"cs": 60.0}, vocab_size=1000)
    (s,) = score_candidates(shard, [weak], student=student, unigram={"weak": 40.0})
    assert not s.eligible and "not below the shard's unigram perplexity 40.00" in s.reason
    (s,) = score_candidates(shard, [weak], student=student, unigram={"weak": 70.0})
    assert s.eligible and s.reason == ""


def test_ruined_and_weaker_models_are_never_chosen(family_ws: Workspace) -> None:
    """A grown-then-ruined model (big, in-domain, a good registry score from before it was
    ruined) and a random model bigger than the student sit in the registry; measured by
    default, the plan never gives either a shard, and says why."""
    import torch

    from lineage.inherit.plans import create_plan
    from lineage.lifecycle import grow_workspace_model
    from lineage.models.modeling import load_model

    ws = family_ws
    ruined, _ = grow_workspace_model(ws, "teacher-lit", "ruined", layers=4, hidden=64,
                                     block_size=32, max_blocks=2)  # fmt: skip
    assert ws.registry.evaluations(model="ruined")  # its (good) score from before the ruin
    lm = load_model(Path(ruined.path))
    with torch.no_grad():
        for p in lm.parameters():
            p.mul_(25.0)  # saturated: confidently wrong everywhere
    lm.save_pretrained(ruined.path)
    plan = create_plan(ws, student="teacher-lit", domains=["literature", "cs"], steps=100)
    shards = plan.spec["shards"]
    scores = {(s["name"], c["model"]): c for s in shards for c in s["scores"]}
    assert {c["ppl_source"] for c in scores.values()} == {"measured"}
    for s in shards:
        ruin = scores[s["name"], "ruined"]
        assert s["teacher"] != "ruined" and not ruin["eligible"]
        assert "worse than uniform" in ruin["reason"] or "unigram" in ruin["reason"]
        toy = scores[s["name"], "student"]  # random init, more parameters than the student
        assert s["teacher"] != "student" or toy["eligible"]
    router = Router.from_workspace(ws, student="teacher-lit", measure=True)
    for a in router.route(ws.registry.shards("cs", split="train")):
        assert a.unigram_ppl is not None and a.student_ppl is not None
        for sc in a.scores:  # the rule, measured: every eligible teacher beats both
            if sc.eligible:
                assert sc.ppl is not None and sc.ppl < min(a.student_ppl, a.unigram_ppl)
        assert "measured now" in a.explain() and "unigram ppl" in a.explain()


def test_index_matches_the_reference_measures() -> None:
    profiles = {n: domain_profile(n) for n in DOMAINS}
    index = DomainIndex(profiles)
    shard = profile_texts(held_slices("literature", 1)[0][:7])
    cov = index.proximities(shard, "coverage")
    ovl = index.proximities(shard, "overlap")
    fast_terms = index.shared_terms(shard, 10)
    for d, name in enumerate(DOMAINS):
        top = set(profiles[name].top_words)
        counts = dict(zip(shard.top_words, shard.top_counts, strict=True))
        ref = sum(c for w, c in counts.items() if w in top) / sum(counts.values())
        assert cov[d] == pytest.approx(ref)
        assert ovl[d] == pytest.approx(overlap(shard, profiles[name]))
        assert fast_terms[d] == shared_terms(shard, profiles[name], 10)
    # A domain covers its own profile entirely.
    assert index.proximities(profiles["cs"], "coverage")[1] == pytest.approx(1.0)


def test_measured_perplexity_is_preferred() -> None:
    profiles = {n: domain_profile(n) for n in DOMAINS}
    teachers = [cand("t_cs", "cs", ppl={"cs": 2.0}), cand("t_bio", "bio", ppl={"cs": 50.0})]
    fake = {"t_cs": 40.0, "t_bio": 3.0, "s": 20.0}
    seen: list[int] = []

    def measurer(model: CandidateInfo, docs: object, domain: str | None) -> float:
        seen.append(len(docs))  # type: ignore[arg-type]
        return fake[model.name]

    router = Router(profiles, teachers, student=cand("s", None), measurer=measurer, sample_docs=3)
    (a,) = router.route([held_slices("cs", 1)[0][0]])
    assert a.teacher == "t_bio"  # measured: 3 beats 40, whatever the registry said
    assert {s.model: s.ppl_source for s in a.scores} == {"t_cs": "measured", "t_bio": "measured"}
    assert a.student_ppl == 20.0 and not next(s for s in a.scores if s.model == "t_cs").eligible
    assert seen == [1, 1, 1]


def test_perplexity_meter_on_a_tiny_model(make_model_dir: Callable[..., Path]) -> None:
    path = make_model_dir("tiny", family="gpt2")
    model = CandidateInfo("tiny", 1, path=str(path), objective="clm")
    meter = PerplexityMeter(block_size=32, max_blocks=4)
    docs = ["the cat sat on the mat and the dog sat on the log"] * 20
    first, second = meter(model, docs), meter(model, docs)
    assert first is not None and math.isfinite(first) and first > 1.0
    assert first == second  # deterministic, model loaded once
    assert meter(model, ["too short"]) is None


def test_measure_from_workspace(ws: Workspace, make_model_dir: Callable[..., Path]) -> None:
    for name in ("cs", "bio"):
        ws.registry.add_domain(name, profile=domain_profile(name).to_dict())
    ws.register_model(make_model_dir("a", family="gpt2"), domains=["cs"])
    ws.register_model(make_model_dir("b", family="gpt2", layers=3), domains=["bio"])
    text = "\n".join(held_slices("cs", 1)[0][:6])
    (plain,) = Router.from_workspace(ws).route(text)
    assert plain.teacher == "a" and all(s.ppl is None for s in plain.scores)
    (a,) = Router.from_workspace(ws, measure=True, student="b").route(text)
    assert [s.model for s in a.scores] == ["a"] and a.scores[0].ppl_source == "measured"
    assert a.scores[0].ppl is not None and a.student_ppl is not None
    # Random tiny models: the verdict follows the numbers (the student's, uniform, unigram).
    ok = a.scores[0].ppl < min(a.student_ppl, 300, a.unigram_ppl or math.inf)
    assert (a.teacher == "a") == ok == a.scores[0].eligible


def test_route_inputs(ws: Workspace, tmp_path: Path) -> None:
    setup_workspace(ws, tmp_path)
    router = Router.from_workspace(ws, teachers=["t_cs", "t_bio"])
    assert [c.name for c in router.candidates] == ["t_cs", "t_bio"]
    text = held_slices("bio", 1)[0][0]
    path = tmp_path / "bio-0.txt"
    (a, b, c) = router.route([text, path, ws.registry.shards("bio")[0]])
    assert (a.shard, b.shard, c.shard) == ("text-0", str(path), "bio/train-0")
    assert a.teacher == b.teacher == c.teacher == "t_bio"
    assert router.nearest_domain(text)[0] == "bio"
    json.dumps([x.to_dict() for x in (a, b, c)])
    assert "shared terms" in b.explain() and "t_cs" in b.explain()
    with pytest.raises(LineageError, match="no such file"):
        router.route(tmp_path / "missing.txt")
    with pytest.raises(TypeError):
        router.route(3)  # type: ignore[arg-type]


def test_a_decisions_regret_needs_measured_eligible_teachers() -> None:
    from lineage.routing.router import format_regret, regret

    def row(model: str, ppl: float | None, source: str = "measured", ok: bool = True) -> dict:
        return {"model": model, "ppl": ppl, "ppl_source": source, "eligible": ok}

    rows = [row("a", 20.0), row("b", 10.0), row("c", 5.0, ok=False)]
    assert regret("b", rows) == 0.0 and format_regret(regret("b", rows)) == "+0.000"
    assert regret("a", rows) == pytest.approx(math.log(2))  # the refused c does not count
    assert regret(None, rows) is None and format_regret(None) == ""
    assert regret("a", [row("a", 20.0), row("b", 10.0, "registry:cs")]) is None
    assert regret("a", [{"model": "a", "ppl": 3.0, "eligible": True}]) is None  # old plans


def test_regret_against_oracle_and_random() -> None:
    profiles = {n: domain_profile(n) for n in DOMAINS}
    router = Router(profiles, [cand(f"t_{n}", n) for n in DOMAINS])
    shards = [(n, held_slices(n, 1)[0]) for n in DOMAINS]
    # The domain teacher is the oracle on its own shards, except on bio where t_cs is.
    ppl = [
        {"t_literature": 4.0, "t_cs": 8.0, "t_bio": 8.0},
        {"t_literature": 8.0, "t_cs": 4.0, "t_bio": 8.0},
        {"t_literature": 8.0, "t_cs": 2.0, "t_bio": 4.0},
    ]
    report, assignments = evaluate_router(router, shards, perplexities=ppl)
    assert [a.teacher for a in assignments] == ["t_literature", "t_cs", "t_bio"]
    assert report.n_scored == 3 and report.oracle_agreement == pytest.approx(2 / 3)
    assert report.regret == pytest.approx(math.log(2) / 3)
    random = (2 * math.log(2) / 3 + 2 * math.log(2) / 3 + (math.log(4) + math.log(2)) / 3) / 3
    assert report.random_regret == pytest.approx(random)


runner = CliRunner()


def test_cli_route(ws: Workspace, tmp_path: Path) -> None:
    setup_workspace(ws, tmp_path)
    root = str(ws.root)
    text = " ".join(held_slices("literature", 1)[0][:3])
    result = runner.invoke(app, ["-w", root, "route", "--text", text, "--json"])
    assert result.exit_code == 0, result.output
    (out,) = json.loads(result.output)
    assert out["teacher"] == "t_literature" and out["domain"] == "literature"
    assert len(out["scores"]) == 3 and out["scores"][0]["shared_terms"]
    path = tmp_path / "cs-1.txt"
    result = runner.invoke(app, ["-w", root, "route", str(path), "--explain"])
    assert result.exit_code == 0, result.output
    assert "teacher t_cs" in result.output and "shared terms" in result.output
    # Registry-only models (no weights here): --no-measure, so no teacher is eligible without
    # perplexities for it and the student, and the refusal names the missing measurement.
    args = ["-w", root, "route", str(path), "--student", "t_cs", "--no-measure", "--json"]
    result = runner.invoke(app, args)
    (out,) = json.loads(result.output)
    assert all(s["model"] != "t_cs" for s in out["scores"]) and out["teacher"] is None
    assert all("unknown: measure it" in s["reason"] for s in out["scores"])
    result = runner.invoke(app, args[:-2])  # --student measures by default: loads the models
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(app, ["-w", root, "route"])
    assert result.exit_code == 1 and "--text" in result.output

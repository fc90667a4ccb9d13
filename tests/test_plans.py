"""Inheritance plans: routing every train shard, Table 6 schedules, refusals, round trips, CLI."""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lineage.cli import app
from lineage.corpora.domains import bundled_domains_dir, read_documents
from lineage.corpora.profiles import profile_texts
from lineage.errors import LineageError, NotFoundError
from lineage.inherit.plans import PLAN_VERSION, PlanSpec, load_plan, make_schedule
from lineage.inherit.plans import create_plan as measured_plan
from lineage.inherit.schedules import InheritanceSchedule, guided_steps_for
from lineage.registry.modelinfo import ModelInfo
from lineage.workspace import Workspace

DOMAINS = ("literature", "cs", "bio")


@cache
def docs(name: str) -> tuple[str, ...]:
    """The first 400 documents of a bundled domain."""
    out = []
    for doc in read_documents(bundled_domains_dir() / name / f"{name}.txt.gz"):
        out.append(doc)
        if len(out) == 400:
            break
    return tuple(out)


def create_plan(ws: Workspace, **kwargs: Any) -> Any:
    """The models here are registry entries without weights: plan on registry perplexities."""
    return measured_plan(ws, **{"measure": False} | kwargs)


def info(layers: int, fingerprint: str | None = "tok-A", n_params: int = 1_000_000) -> ModelInfo:
    return ModelInfo("roberta", "mlm", layers, 64, 2, 256, 300, n_params, fingerprint)


def setup(ws: Workspace, tmp: Path) -> None:
    """Three domains (profile: 300 documents; two train shards of 50 held-out ones each),
    a 4-layer teacher per domain, a 12-layer student and a teacher with another tokenizer."""
    reg = ws.registry
    for name in DOMAINS:
        shards = []
        for i in range(2):
            part = docs(name)[300 + 50 * i : 350 + 50 * i]
            path = tmp / f"{name}-{i}.txt"
            path.write_text("\n\n".join(part) + "\n", encoding="utf-8")
            shards.append(
                {
                    "name": f"train-{i}",
                    "split": "train",
                    "path": str(path),
                    "n_bytes": path.stat().st_size,
                    "n_documents": len(part),
                    "digest": f"{name}{i}",
                    "profile": None,
                }
            )
        profile = profile_texts(docs(name)[:300]).to_dict()
        reg.add_domain(name, profile=profile, shards=shards)
        reg.add_model(f"t_{name}", f"/m/t_{name}", info(4), domains=[name])
    reg.add_domain("empty")
    reg.add_model("student", "/m/student", info(12), domains=["literature"])
    reg.add_model("alien", "/m/alien", info(6, fingerprint="tok-B"), domains=["cs"])
    # Registry perplexities (teachers must beat the student where they teach): each teacher is
    # best on its own domain, the student worse than every teacher.
    for name in DOMAINS:
        reg.add_evaluation("student", name, loss=3.9, ppl=50.0)
        for teacher in DOMAINS:
            reg.add_evaluation(
                f"t_{teacher}", name, loss=2.3, ppl=10.0 if teacher == name else 30.0
            )


def test_plan_routes_shards_and_round_trips(ws: Workspace, tmp_path: Path) -> None:
    setup(ws, tmp_path)
    plan = create_plan(ws, student="student", domains=["cs", "bio"], steps=1000)
    assert plan.name == "student-cs-bio" and plan.student == "student"
    stored = ws.registry.plan(plan.name)
    assert stored.spec == plan.spec and ws.registry.plan(plan.id).name == plan.name
    spec = load_plan(ws, plan.name)
    assert spec.version == PLAN_VERSION and spec.to_dict() == plan.spec
    assert PlanSpec.from_dict(json.loads(json.dumps(plan.spec))) == spec
    assert [(s.domain, s.teacher) for s in spec.shards] == [
        ("cs", "t_cs"),
        ("cs", "t_cs"),
        ("bio", "t_bio"),
        ("bio", "t_bio"),
    ]
    # "alien" has another tokenizer: auto leaves it out of the candidates altogether.
    assert {c["model"] for s in spec.shards for c in s.scores} == {
        "t_literature",
        "t_cs",
        "t_bio",
    }
    # Default schedule: linear, teacher guidance for the Table 6 share of a 4 -> 12 layer pair.
    guided = guided_steps_for(4, 12, 1000, objective="mlm")
    assert all(s.guided_steps == guided for s in spec.shards)
    sched = spec.schedules()["t_cs"]
    assert sched == InheritanceSchedule(kind="linear", total_steps=1000, guided_steps=guided)
    assert sched.rate(0) == 1.0 and sched.rate(guided) == 0.0
    assert spec.teachers_used == ["t_cs", "t_bio"]
    again = create_plan(ws, student="student", domains=["cs", "bio"], steps=1000)
    assert again.name == "student-cs-bio-2"


def test_plan_refuses_a_tokenizer_mismatch(ws: Workspace, tmp_path: Path) -> None:
    setup(ws, tmp_path)
    with pytest.raises(LineageError) as err:
        create_plan(ws, student="student", domains=["cs"], teachers=["t_cs", "alien"])
    message = str(err.value)
    assert "'alien'" in message and "'student'" in message
    assert "tok-B" in message and "tok-A" in message
    assert ws.registry.plans() == []  # nothing stored


def test_plan_refusals(ws: Workspace, tmp_path: Path) -> None:
    setup(ws, tmp_path)
    with pytest.raises(NotFoundError, match="nobody"):
        create_plan(ws, student="student", domains=["cs"], teachers=["nobody"])
    with pytest.raises(NotFoundError, match="nobody"):
        create_plan(ws, student="nobody", domains=["cs"])
    with pytest.raises(LineageError, match="teach itself"):
        create_plan(ws, student="student", domains=["cs"], teachers=["student"])
    with pytest.raises(LineageError, match="no train shards"):
        create_plan(ws, student="student", domains=["empty"])
    with pytest.raises(NotFoundError, match="atlantis"):
        create_plan(ws, student="student", domains=["atlantis"])
    with pytest.raises(LineageError, match="steps"):
        create_plan(ws, student="student", domains=["cs"], steps=0)
    with pytest.raises(LineageError, match="heaviside"):
        create_plan(
            ws, student="student", domains=["cs"], schedule="heaviside", schedule_params={"c": 1}
        )
    assert ws.registry.plans() == []


def test_schedules_and_self_learning_shards(ws: Workspace, tmp_path: Path) -> None:
    setup(ws, tmp_path)
    reg = ws.registry
    reg.add_evaluation("student", "bio", loss=1.0, ppl=3.0)
    reg.add_evaluation("t_bio", "bio", loss=2.0, ppl=7.0)  # both worse than the student on bio
    reg.add_evaluation("t_cs", "bio", loss=3.0, ppl=20.0)
    plan = create_plan(
        ws,
        student="student",
        domains=["bio", "cs"],
        teachers=["t_bio", "t_cs"],
        steps=500,
        schedule="heaviside",
        name="h",
    )
    spec = load_plan(ws, "h")
    bio = [s for s in spec.shards if s.domain == "bio"]
    assert all(s.teacher is None and s.schedule is None and s.guided_steps == 0 for s in bio)
    assert all(not c["eligible"] and "student's 3.00" in c["reason"] for s in bio for c in s.scores)
    cs = [s for s in spec.shards if s.domain == "cs"]
    assert all(s.teacher == "t_cs" for s in cs)
    switch = guided_steps_for(4, 12, 500, objective="mlm")
    assert spec.schedules()["t_cs"].switch_step == switch == cs[0].guided_steps
    assert spec.teachers == ("t_bio", "t_cs") and plan.spec["teachers"] == ["t_bio", "t_cs"]
    const = create_plan(
        ws,
        student="student",
        domains=["cs"],
        schedule="constant",
        schedule_params={"constant": 0.3},
    )
    assert load_plan(ws, const.id).schedules()["t_cs"].rate(499) == 0.3
    alpha = create_plan(
        ws, student="student", domains=["cs"], steps=100, schedule_params={"alpha_T": 4.0}
    )
    assert load_plan(ws, alpha.id).shards[0].guided_steps == 25  # T / α_T


def test_make_schedule_defaults(ws: Workspace, tmp_path: Path) -> None:
    setup(ws, tmp_path)
    reg = ws.registry
    teacher, student = reg.model("t_cs"), reg.model("student")
    lin = make_schedule("linear", {}, teacher=teacher, student=student, steps=125_000)
    assert (
        lin.guided_steps == guided_steps_for(4, 12, 125_000, objective="mlm") == 22_000
    )  # Table 6: H_4 -> BASE
    given = make_schedule("linear", {"guided_steps": 7}, teacher=teacher, student=student, steps=50)
    assert given.guided_steps == 7
    # auto gets the same linear base as the single-teacher shortcut (it was α = 1 until the
    # student passed the teacher, with no self-learning term at all).
    auto = make_schedule("auto", {}, teacher=teacher, student=student, steps=1000)
    assert auto.guided_steps == guided_steps_for(4, 12, 1000, objective="mlm") == 176
    assert auto.rate(0) == 1.0 and auto.rate(88) == 0.5 and auto.rate(176) == 0.0
    # A causal student takes the GPT rows (papers/003 Table 7): GPT 9 -> 12 layers, 10k of 62.5k.
    gpt = dataclasses.replace(info(12), family="gpt2", objective="clm")
    reg.add_model("gpt-t", "/m/gpt-t", dataclasses.replace(gpt, layers=9))
    reg.add_model("gpt-s", "/m/gpt-s", gpt)
    clm = make_schedule(
        "linear", {}, teacher=reg.model("gpt-t"), student=reg.model("gpt-s"), steps=62_500
    )
    assert clm.guided_steps == 10_000  # RoBERTa's row would give 17,500


def test_spec_validation() -> None:
    sched = InheritanceSchedule(kind="linear", total_steps=10, guided_steps=5).to_dict()
    shard: dict[str, Any] = {
        "shard_id": 1,
        "domain": "cs",
        "name": "s",
        "path": "/x",
        "nearest_domain": "cs",
        "proximity": 0.9,
        "teacher": "t",
        "schedule": sched,
        "guided_steps": 5,
        "scores": [],
    }
    good: dict[str, Any] = {
        "version": PLAN_VERSION,
        "student": "st",
        "domains": ["cs"],
        "steps": 10,
        "temperature": 1.0,
        "top_k": 10,
        "teachers": "auto",
        "schedule": "linear",
        "schedule_params": {},
        "weights": {"proximity": 2.0, "capacity": 0.5, "quality": 2.0, "min_proximity": 0.0},
        "shards": [shard],
    }
    assert PlanSpec.from_dict(good).to_dict() == good
    bad_cases: list[tuple[dict[str, Any], str]] = [
        ({"version": 99}, "version"),
        ({"steps": 20}, "total_steps"),
        ({"student": "t"}, "itself"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"teachers": "some"}, "auto"),
        ({"shards": [shard | {"guided_steps": 4}]}, "guided_steps"),
        ({"shards": [shard | {"teacher": None}]}, "schedule"),
        (
            {
                "shards": [
                    shard,
                    shard | {"schedule": sched | {"guided_steps": 6}, "guided_steps": 6},
                ]
            },
            "different schedules",
        ),
        ({"shards": [{"domain": "cs"}]}, "malformed"),
    ]
    for change, match in bad_cases:
        with pytest.raises(ValueError, match=match):
            PlanSpec.from_dict(good | change)


runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_cli_plan(ws: Workspace, tmp_path: Path) -> None:
    setup(ws, tmp_path)
    root = str(ws.root)
    out = json.loads(
        invoke("-w", root, "plan", "create", "--student", "student", "-d", "cs", "-d", "literature",
               "--steps", "200", "--name", "p1", "--no-measure", "--json")
    )  # fmt: skip
    assert out["name"] == "p1" and out["spec"]["teachers"] == "auto"
    assert [s["teacher"] for s in out["spec"]["shards"]] == ["t_cs"] * 2 + ["t_literature"] * 2
    invoke("-w", root, "plan", "create", "--student", "student", "-d", "bio", "--teachers",
           "t_bio", "--schedule", "heaviside", "-p", "switch_step=50", "--no-measure")  # fmt: skip
    shown = json.loads(invoke("-w", root, "plan", "show", "p1", "--json"))
    assert shown["spec"] == out["spec"]
    listed = json.loads(invoke("-w", root, "plan", "list", "--json"))
    assert [p["name"] for p in listed] == ["p1", "student-bio"]
    assert listed[1]["spec"]["shards"][0]["schedule"]["switch_step"] == 50
    text = invoke("-w", root, "plan", "show", "student-bio")
    assert "t_bio" in text and "bio/train-0" in text
    listing = invoke("-w", root, "plan", "list")
    assert "p1" in listing and "t_bio" in listing
    err = invoke("-w", root, "plan", "create", "--student", "student", "-d", "cs", "--teachers",
                 "alien", code=1)  # fmt: skip
    assert "different tokenizers" in err


def test_auto_teachers_leave_out_adapters_and_other_objectives(family_ws) -> None:  # type: ignore[no-untyped-def]
    from lineage.inherit.plans import compatible_teachers
    from lineage.lifecycle import create_workspace_model
    from lineage.models.modeling import ModelShape

    reg = family_ws.registry
    create_workspace_model(
        family_ws,
        "causal",
        family="gpt2",
        shape=ModelShape(2, 32, 2, 64),
        tokenizer="shared",
        max_positions=40,
    )
    student = reg.model("student")
    teacher = reg.model("teacher-lit")
    reg.add_model("lit-adapter", "/adapters/x", _info_of(teacher), domains=["literature"])
    reg.add_edge("teacher-lit", "lit-adapter", "adapter")
    names = {m.name for m in compatible_teachers(reg, student)}
    assert "teacher-lit" in names and "t0" in names
    assert "lit-adapter" not in names and "causal" not in names and "student" not in names


def _info_of(model):  # type: ignore[no-untyped-def]
    from lineage.registry.modelinfo import ModelInfo

    return ModelInfo(
        model.family,
        model.objective,
        model.layers,
        model.d_model,
        model.heads,
        model.d_ffn,
        model.vocab_size,
        1000,
        model.tokenizer_fingerprint,
    )

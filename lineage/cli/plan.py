"""``lineage plan``: create, show and list inheritance plans (teacher per shard, schedules)."""

from __future__ import annotations

from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, parse_params, table, workspace
from lineage.cli.common import app as make_app
from lineage.inherit.plans import PlanSpec, create_plan, load_plan
from lineage.inherit.schedules import SCHEDULE_KINDS
from lineage.routing.router import format_regret, regret

app = make_app("Plans: which teacher teaches each shard of a student's training data, and how.")


@app.command()
def create(
    ctx: typer.Context,
    student: Annotated[str, typer.Option(help="The model to train.")],
    domain: Annotated[
        list[str], typer.Option("--domain", "-d", help="A domain whose train shards to plan.")
    ],
    teachers: Annotated[
        list[str] | None,
        typer.Option(help="'auto' (every model sharing the tokenizer) or teacher names."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Total training steps of the student.")] = 10_000,
    schedule: Annotated[
        str, typer.Option(help=f"Inheritance-rate schedule: {', '.join(SCHEDULE_KINDS)}.")
    ] = "linear",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Schedule parameter key=value, e.g. alpha_T=2."),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Temperature of the KI term.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Teacher logits kept per position.")] = 10,
    measure: Annotated[
        bool,
        typer.Option(
            help="Measure teacher and student perplexities on a sample of each shard (loads "
            "models). Without it, teachers need registry perplexities for theirs and the "
            "student's nearest domain."
        ),
    ] = True,
    name: Annotated[str | None, typer.Option(help="Plan name (default: student-domains).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Route every train shard of the domains to a teacher and store the plan.

    Measured plans show each shard's regret: ln(ppl of the chosen teacher / the lowest measured
    ppl of an eligible one), nats; 0 is the oracle's choice."""
    chosen: str | list[str] = "auto" if not teachers or teachers == ["auto"] else teachers
    plan = create_plan(
        workspace(ctx),
        student=student,
        domains=domain,
        teachers=chosen,
        steps=steps,
        schedule=schedule,
        schedule_params=parse_params(param or []),
        temperature=temperature,
        top_k=top_k,
        name=name,
        measure=measure,
    )
    if as_json:
        emit_json(plan.to_dict())
        return
    _print(plan.name, plan.id, PlanSpec.from_dict(plan.spec))


@app.command()
def show(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="Plan id or name.")],
    as_json: JsonOption = False,
) -> None:
    """Show a plan: shard → teacher, its schedule and the scores that chose it."""
    ws = workspace(ctx)
    stored = ws.registry.plan(plan)
    spec = load_plan(ws, plan)
    if as_json:
        emit_json(stored.to_dict())
        return
    _print(stored.name, stored.id, spec)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List plans."""
    plans = workspace(ctx).registry.plans()
    if as_json:
        emit_json([p.to_dict() for p in plans])
        return
    table(
        "plans",
        ["id", "name", "student", "domains", "shards", "teachers", "steps", "created"],
        [
            (
                p.id,
                p.name,
                p.student,
                ", ".join(p.spec.get("domains", [])),
                len(p.spec.get("shards", [])),
                ", ".join(sorted({s["teacher"] for s in p.spec["shards"] if s["teacher"]})) or "-",
                p.spec.get("steps"),
                p.created_at.strftime("%Y-%m-%d"),
            )
            for p in plans
        ],
    )


def _print(name: str, plan_id: int, spec: PlanSpec) -> None:
    console.print(
        f"Plan [bold]{name}[/] (id {plan_id}): student {spec.student}, {spec.steps:,} steps, "
        f"τ {spec.temperature}, top-K {spec.top_k}, {spec.schedule} schedule"
    )
    rows = []
    for s in spec.shards:
        best = s.scores[0] if s.scores else {}
        chosen = next((c for c in s.scores if c["model"] == s.teacher), best)
        rows.append(
            (
                f"{s.domain}/{s.name}",
                f"{s.nearest_domain} {s.proximity:.1%}",
                s.teacher or "- (self-learning)",
                f"{chosen.get('total', 0.0):+.3f}" if s.teacher else "",
                format_regret(regret(s.teacher, s.scores)),
                f"{s.guided_steps:,}",
                ", ".join(f"{c['model']} {c['total']:+.2f}" for c in s.scores),
            )
        )
    table(
        "shards",
        ["shard", "nearest domain", "teacher", "score", "regret", "guided steps", "all scores"],
        rows,
    )

"""``lineage route``: which registered model should teach this text (papers/001 Eq. 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.errors import LineageError
from lineage.routing.router import Router, format_regret


def route(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Corpus files (blank-line separated documents; .gz, .jsonl)."),
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="A text to route (repeatable).")
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(
            help="The model being trained: teachers must beat it and share its tokenizer."
        ),
    ] = None,
    teacher: Annotated[
        list[str] | None,
        typer.Option("--teacher", help="Only these candidate teachers (default: every model)."),
    ] = None,
    measure: Annotated[
        bool | None,
        typer.Option(
            help="Measure each model's perplexity on a sample (loads them); default: with "
            "--student (teachers must beat it), without it, registry perplexities only."
        ),
    ] = None,
    explain: Annotated[
        bool, typer.Option(help="Show every candidate's evidence and score terms.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Route texts to teachers: nearest domain, chosen teacher (or none: self-learning), scores.

    The regret column (measured runs): ln(ppl of the chosen teacher / the lowest measured ppl
    of an eligible teacher on the shard), in nats; 0 is the oracle's choice."""
    items: list[str | Path] = [*(paths or []), *(text or [])]
    if not items:
        raise LineageError("give a file to route, or --text TEXT")
    router = Router.from_workspace(
        workspace(ctx),
        teachers=teacher,
        student=student,
        measure=student is not None if measure is None else measure,
    )
    assignments = router.route(items)
    if as_json:
        emit_json([a.to_dict() for a in assignments])
        return
    if explain:
        for a in assignments:
            console.print(a.explain(), highlight=False, markup=False)
        return
    table(
        "routing",
        ["shard", "nearest domain", "proximity", "teacher", "score", "regret", "runner-up"],
        [
            (
                a.shard,
                a.domain,
                f"{a.proximity:.1%}",
                a.teacher or "- (self-learning)",
                next((f"{s.total:+.3f}" for s in a.scores if s.model == a.teacher), ""),
                format_regret(a.regret),
                next((f"{s.model} {s.total:+.3f}" for s in a.scores if s.model != a.teacher), ""),
            )
            for a in assignments
        ],
    )

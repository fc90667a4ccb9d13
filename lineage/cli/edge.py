"""``lineage edge``: relations between models, including ones made outside lineage."""

from __future__ import annotations

from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, parse_params, table, workspace
from lineage.cli.common import app as make_app
from lineage.registry.db import EDGE_KINDS

app = make_app("Edges: how a model came from another (ki, grow, adapt, adapter).")


@app.command()
def add(
    ctx: typer.Context,
    parent: str,
    child: str,
    kind: Annotated[str, typer.Option(help=f"One of {', '.join(EDGE_KINDS)}.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="key=value (JSON values allowed).")
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="The MLflow run that made it.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Record that CHILD came from PARENT (refused if it would make a cycle)."""
    edge = workspace(ctx).registry.add_edge(
        parent, child, kind, params=parse_params(param or []), mlflow_run_id=run_id
    )
    if as_json:
        emit_json(edge.to_dict())
    else:
        console.print(f"Added {edge.parent} -[{edge.kind}]-> {edge.child}")


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only edges touching this model.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List edges."""
    edges = workspace(ctx).registry.edges(model)
    if as_json:
        emit_json([e.to_dict() for e in edges])
        return
    table(
        "edges",
        ["parent", "kind", "child", "params", "mlflow run"],
        [(e.parent, e.kind, e.child, e.params or "", e.mlflow_run_id) for e in edges],
    )


@app.command()
def remove(
    ctx: typer.Context,
    parent: str,
    child: str,
    kind: Annotated[
        str | None, typer.Option(help="Only the edge of this kind (default: every kind).")
    ] = None,
) -> None:
    """Remove the edge(s) from PARENT to CHILD (e.g. to break a cycle `lineage db check` found)."""
    removed = workspace(ctx).registry.remove_edge(parent, child, kind)
    console.print(f"Removed {removed} edge(s) {parent} -> {child}")

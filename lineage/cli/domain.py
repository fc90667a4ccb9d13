"""``lineage domain``: named bodies of text."""

from __future__ import annotations

from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.cli.common import app as make_app

app = make_app("Domains: named bodies of text, their shards, profiles and proximity.")


@app.command()
def add(
    ctx: typer.Context,
    name: str,
    description: Annotated[str, typer.Option(help="One line about the domain.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Register a domain."""
    domain = workspace(ctx).registry.add_domain(name, description=description)
    if as_json:
        emit_json(domain.to_dict())
    else:
        console.print(f"Added domain [bold]{domain.name}[/]")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List domains."""
    domains = workspace(ctx).registry.domains()
    if as_json:
        emit_json([d.to_dict() for d in domains])
        return
    table("domains", ["name", "description"], [(d.name, d.description) for d in domains])


@app.command()
def show(ctx: typer.Context, name: str, as_json: JsonOption = False) -> None:
    """Show a domain."""
    domain = workspace(ctx).registry.domain(name)
    if as_json:
        emit_json(domain.to_dict())
    else:
        console.print(domain.to_dict())

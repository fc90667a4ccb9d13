"""``lineage db``: the registry's schema version."""

from __future__ import annotations

import typer

from lineage.cli.common import JsonOption, console, emit_json
from lineage.cli.common import app as make_app
from lineage.registry.schema import current_revision, head_revision
from lineage.registry.schema import upgrade as upgrade_schema
from lineage.workspace import Workspace

app = make_app("Registry database schema (Alembic migrations).")


def _engine(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from lineage.registry.db import make_engine

    ws = Workspace.open(ctx.find_root().obj.get("workspace"))
    return make_engine(ws.registry_url)


@app.command()
def upgrade(ctx: typer.Context) -> None:
    """Upgrade the registry database to this lineage's schema."""
    engine = _engine(ctx)
    before = current_revision(engine)
    upgrade_schema(engine)
    console.print(f"registry schema: {before or 'empty'} -> {current_revision(engine)}")
    engine.dispose()


@app.command()
def current(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the registry database's schema revision and this code's newest."""
    engine = _engine(ctx)
    data = {"current": current_revision(engine), "head": head_revision()}
    engine.dispose()
    if as_json:
        emit_json(data)
    else:
        console.print(f"current: {data['current'] or 'empty'}   head: {data['head']}")

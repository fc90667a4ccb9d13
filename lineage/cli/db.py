"""``lineage db``: the registry's schema version, and a check of what it records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from sqlalchemy.engine import Engine

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.cli.common import app as make_app
from lineage.registry import schema
from lineage.workspace import Workspace

app = make_app("Registry database: schema migrations (Alembic) and integrity checks.")


@contextmanager
def _engine(ctx: typer.Context) -> Iterator[tuple[Workspace, Engine]]:
    """The workspace's registry engine, without opening (and so upgrading) the registry."""
    from lineage.registry.db import make_engine

    ws = Workspace.open(ctx.find_root().obj.get("workspace"))
    engine = make_engine(ws.registry_url)
    try:
        yield ws, engine
    finally:
        engine.dispose()


@app.command()
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision (default: head).")] = "head",
) -> None:
    """Upgrade the registry database to this lineage's schema (or to REVISION)."""
    with _engine(ctx) as (ws, engine):
        before = schema.current_revision(engine)
        schema.upgrade(engine, revision, storage_root=ws.storage_root)
        console.print(f"registry schema: {before or 'empty'} -> {schema.current_revision(engine)}")


@app.command()
def downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision, `base`, or e.g. -1.")],
) -> None:
    """Downgrade the registry database to REVISION (to run an older lineage on it)."""
    with _engine(ctx) as (ws, engine):
        before = schema.current_revision(engine)
        schema.downgrade(engine, revision, storage_root=ws.storage_root)
        console.print(f"registry schema: {before or 'empty'} -> {schema.current_revision(engine)}")


@app.command()
def current(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the registry database's schema revision and this code's newest. Exits 1 when the
    database is newer than this lineage."""
    with _engine(ctx) as (_, engine):
        data = {"current": schema.current_revision(engine), "head": schema.head_revision()}
    now = data["current"]
    if now is not None and now not in schema.known_revisions():
        raise schema.newer_database(now)
    if as_json:
        emit_json(data)
        return
    note = "" if now in (None, data["head"]) else "  (older: run `lineage db upgrade`)"
    console.print(f"current: {now or 'empty'}   head: {data['head']}{note}")


@app.command()
def check(
    ctx: typer.Context,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what killed jobs left: fail their RUNNING runs, release their reserved "
            "names, delete temporaries and folders no row points at (not while a job runs).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="With --repair: also other hosts' jobs (their processes cannot be seen)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check the registry: no cycle among the edges, no edge to a missing model, every
    registered model, adapter, tokenizer, cache and shard path present on this machine, model
    files as recorded at registration; and what killed jobs left (stale RUNNING runs and
    reservations, temporaries, orphan folders). Exits 1 when anything is wrong (after
    ``--repair``: when anything is still wrong)."""
    from lineage.errors import LineageError
    from lineage.registry.checks import run_checks
    from lineage.registry.leftovers import Folders, folder_checks
    from lineage.registry.leftovers import repair as repair_leftovers

    if force and not repair:
        raise LineageError("--force goes with --repair")
    ws = workspace(ctx)
    folders = Folders(ws.models_dir, ws.adapters_dir, ws.caches_dir, ws.domains_dir)
    repaired = None
    if repair:
        from lineage.train.runs import fail_mlflow_runs

        repaired = repair_leftovers(ws.registry, folders, force=force)
        fail_mlflow_runs(ws.tracking_uri, repaired.mlflow_runs)
    found = run_checks(ws.registry) | folder_checks(ws.registry, folders)
    problems = [f for findings in found.values() for f in findings]
    if as_json:
        data: dict[str, Any] = {"ok": not problems}
        data |= {k: [f.to_dict() for f in v] for k, v in found.items()}
        if repaired is not None:
            data["repaired"] = {"done": repaired.done, "skipped": repaired.skipped}
        emit_json(data)
    else:
        for line in repaired.done if repaired else []:
            console.print(f"repaired: {line}")
        for line in repaired.skipped if repaired else []:
            console.print(f"left: {line}")
        if problems:
            rows = [(f.check, f.subject, f.problem) for f in problems]
            table("registry problems", ["check", "subject", "problem"], rows)
        else:
            console.print(f"registry OK ({', '.join(found)})")
    if problems:
        raise typer.Exit(code=1)

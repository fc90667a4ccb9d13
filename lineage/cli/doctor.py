"""``lineage doctor``: versions, device, registry and tracking — what a bug report needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lineage.cli.common import JsonOption, emit_json
from lineage.errors import LineageError


def _workspace_facts(ctx: typer.Context) -> dict[str, Any]:
    """Registry URL and schema revision, tracking URI; the reason when there is no workspace."""
    from sqlalchemy.engine import make_url

    from lineage.workspace import Workspace

    try:
        ws = Workspace.open(ctx.find_root().obj.get("workspace"))
        url = ws.registry_url
        return {
            "workspace": str(ws.root),
            "registry_url": make_url(url).render_as_string(hide_password=True),
            "schema_revision": _revision(url),
            "tracking_uri": ws.tracking_uri,
        }
    except LineageError as exc:
        return {"workspace": None, "workspace_error": str(exc)}


def _revision(url: str) -> str:
    """The registry's schema revision, read without creating or upgrading anything."""
    from sqlalchemy.engine import make_url

    from lineage.registry.db import make_engine
    from lineage.registry.schema import current_revision, head_revision

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return "none (the database is not created yet)"
    engine = make_engine(url)
    try:
        current = current_revision(engine)
    except LineageError as exc:  # unreachable: say why (the URL in it hides the password)
        return f"unknown: {exc}"
    finally:
        engine.dispose()
    return f"{current or 'empty'} (this lineage: {head_revision()})"


def doctor(
    ctx: typer.Context,
    lock: Annotated[
        Path | None, typer.Option(help="Lock file to compare with (default: the checkout's).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print Python, torch (and its device), transformers, PEFT, Accelerate, MLflow and
    SQLAlchemy versions, the registry and tracking stores, and whether the installed packages
    match the lock. Exits 1 when they do not."""
    from lineage.environment import report

    data = report(lock).to_dict() | _workspace_facts(ctx)
    if as_json:
        emit_json(data)
    else:
        typer.echo("\n".join(_lines(data)))
    if data["drift"]:
        raise typer.Exit(code=1)


def _lines(data: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, str]] = [
        ("lineage", data["lineage"]),
        ("python", f"{data['python']} ({data['platform']})"),
        *((name, version or "not installed") for name, version in data["packages"].items()),
        ("device", data["device"]),
        ("processes", data["processes"]),
    ]
    if data["workspace"]:
        rows += [
            ("workspace", data["workspace"]),
            ("registry", data["registry_url"]),
            ("schema revision", data["schema_revision"]),
            ("tracking", data["tracking_uri"]),
        ]
    else:
        rows.append(("workspace", f"none: {data['workspace_error']}"))
    if data["lock"] is None:
        rows.append(("lock", "no lock found (installed from a wheel?)"))
    else:
        verdict = "the environment DIFFERS" if data["drift"] else "matches"
        rows.append(("lock", f"{data['lock']}: {verdict}"))
    width = max(len(key) for key, _ in rows) + 2
    return [f"{key:<{width}}{value}" for key, value in rows] + [f"  {d}" for d in data["drift"]]

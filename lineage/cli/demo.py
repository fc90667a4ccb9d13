"""``lineage demo``: the whole story on the bundled domains, in a fresh workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import QuietOption, console, emit_json, quiet_mode


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``… : the first that does not exist yet."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def demo(
    directory: Annotated[
        Path | None,
        typer.Argument(help="New workspace folder (default: ./lineage-demo, numbered)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="A few steps of everything (about a minute).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON at the end.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Build a model family on the bundled domains: KI, generations, growth, adaptation."""
    from lineage.demo import DemoConfig, run_demo

    path = directory or fresh_folder(Path("lineage-demo").resolve())
    progress = quiet_mode(quiet)
    config = DemoConfig.quick_config() if quick else DemoConfig()
    summary = run_demo(path, config, console=console, progress=progress)
    if as_json:
        emit_json(summary)

"""The ``lineage`` command line: one Typer app per noun; each body calls the Python API."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from lineage.cli import cache, db, domain, edge, model, plan, report, route, tokenizer
from lineage.cli.adapt import adapt_command
from lineage.cli.common import JsonOption, console, err_console, workspace
from lineage.cli.common import app as make_app
from lineage.cli.demo import demo
from lineage.cli.doctor import doctor
from lineage.cli.grow import grow
from lineage.cli.train import train
from lineage.cli.ui import ui
from lineage.distributed import launch_rank
from lineage.files import atomic_write_text
from lineage.registry.graph import FORMATS, PICTURE_FORMATS, render
from lineage.workspace import ENV_VAR, Workspace

app = make_app("Continual domain adaptation and model lineage: Knowledge Inheritance and growth.")
app.add_typer(db.app, name="db")
app.add_typer(model.app, name="model")
app.add_typer(domain.app, name="domain")
app.add_typer(edge.app, name="edge")
app.add_typer(plan.app, name="plan")
app.command("route")(route.route)
app.add_typer(tokenizer.app, name="tokenizer")
app.command()(ui)
app.command()(train)
app.command()(demo)
app.command()(grow)
app.add_typer(cache.app, name="cache")
app.command("adapt")(adapt_command)
app.add_typer(report.app, name="report")
app.command()(doctor)


def _print_version(value: bool) -> None:
    if value:
        from lineage import __version__

        typer.echo(f"lineage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    workspace_dir: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", envvar=ENV_VAR, help="Workspace folder (default: .)."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.obj = {"workspace": workspace_dir}
    console.quiet = False  # a command's --quiet lasts for that command only


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the workspace in.")] = Path(),
    registry_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of a shared registry (default: SQLite).")
    ] = None,
) -> None:
    """Create a workspace: lineage.toml, the registry database and the model/data folders."""
    ws = Workspace.init(directory, registry_url=registry_url)
    console.print(f"Created workspace [bold]{ws.root}[/] (registry {ws.registry.schema_revision})")
    ws.close()


# What an --output file's suffix asks for when --format is not given.
SUFFIX_FORMATS = {
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".json": "json",
    ".txt": "text",
    ".png": "png",
    ".svg": "svg",
}


@app.command()
def graph(
    ctx: typer.Context,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help=f"One of {', '.join((*FORMATS, *PICTURE_FORMATS))} (png and svg need "
            "--output); default: from --output's suffix, else text.",
        ),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option("--model", help="Only this model, its ancestors and descendants.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the model family (each model with its generation): text tree, Graphviz DOT,
    Mermaid or JSON; or draw it laid out by Graphviz (png, svg)."""
    if fmt is None:
        fmt = "json" if as_json else SUFFIX_FORMATS.get(output.suffix if output else "", "text")
    elif as_json and fmt != "json":
        raise typer.BadParameter(f"--json prints JSON: drop it or --format {fmt}")
    if fmt not in (*FORMATS, *PICTURE_FORMATS):
        raise typer.BadParameter(
            f"unknown format {fmt!r}; formats: {', '.join((*FORMATS, *PICTURE_FORMATS))}"
        )
    reg = workspace(ctx).registry
    models, edges = reg.models(), reg.edges()
    if model_name is not None:
        keep = {model_name} | {
            r.name for r in reg.ancestors(model_name) + reg.descendants(model_name)
        }
        models = [m for m in models if m.name in keep]
        edges = [e for e in edges if e.parent in keep and e.child in keep]
    if fmt in PICTURE_FORMATS:
        if output is None:
            raise typer.BadParameter(f"--format {fmt} draws a picture: give --output FILE")
        from lineage.report.plots import lineage_picture

        (path,) = lineage_picture(render(models, edges, "dot"), output, formats=(fmt,))
        console.print(f"Wrote {path}")
        return
    text = render(models, edges, fmt)
    for loop in reg.graph().cycles():  # drawn, but the registry should not hold one
        err_console.print(
            f"warning: cycle {' -> '.join([*loop, loop[0]])} (see `lineage db check`)",
            highlight=False,
            soft_wrap=True,
        )
    if output is None:
        typer.echo(text)
    else:
        atomic_write_text(output, text + "\n")
        console.print(f"Wrote {output}")


def main() -> None:
    # lineage draws its own progress bars; transformers' per-file load/save bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    quiet_libraries()
    _process_setup(launch_rank())
    app(prog_name="lineage")


def quiet_libraries() -> None:
    """MLflow logs INFO lines (creating its tracking database, ...) that say nothing to a lineage
    user; its own setting keeps warnings and errors (a value the user exported wins)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _process_setup(rank: int) -> None:
    """One voice per job, also under ``torchrun``/``accelerate launch``: only rank 0 writes to
    standard output (one table, one JSON document); lineage's log lines go to standard error
    (rank 0's from INFO, the others' warnings and errors). SIGTERM — what torchrun sends every
    rank once one has failed — interrupts like Ctrl-C, so the job's records end KILLED."""
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    signal.signal(signal.SIGTERM, _on_sigterm)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"lineage{f' [rank {rank}]' if rank else ''}: %(message)s")
    )
    logger = logging.getLogger("lineage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt, unless an error is being handled right now — a job closing its
    records as FAILED because a peer process died, when torchrun's SIGTERM typically arrives:
    interrupting that would leave them RUNNING. Then the signal comes again a second later."""
    if sys.exception() is not None:
        again = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()
        return
    raise KeyboardInterrupt

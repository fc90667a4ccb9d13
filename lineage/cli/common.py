"""What every CLI command shares: the workspace from the context, JSON and table output."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from lineage.errors import LineageError
from lineage.workspace import Workspace

console = Console()
# Piped or redirected, a line is not cut at rich's assumed 80 columns (tables: print_table).
console.soft_wrap = not console.is_terminal
err_console = Console(stderr=True)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
]

QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bars or messages (errors still go to stderr)."),
]


def quiet_mode(quiet: bool, as_json: bool = False) -> bool:
    """Silence this command's console output when ``quiet``; returns whether progress bars
    should show (not when quiet, nor with --json, whose output must stay parseable)."""
    console.quiet = quiet
    if quiet:  # the libraries' own bars too (loading and saving weights)
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bars()
        disable_progress_bar()
    return not (quiet or as_json)


# Options every training command shares (lineage train, lineage adapt): one spelling, one help.
StudyOption = Annotated[
    str | None,
    typer.Option(help="MLflow tag lineage.study that groups the runs to compare."),
]
BuildCachesOption = Annotated[
    bool,
    typer.Option(
        "--build-caches/--no-build-caches",
        help="Build the teacher caches the run needs (listed first with their estimated "
        "time and size); --no-build-caches stops before any work when one is missing.",
    ),
]
TeacherModeOption = Annotated[str, typer.Option(help="cached (top-K logit cache) or online.")]
BatchSizeOption = Annotated[int, typer.Option(help="Blocks per micro-batch.")]
LrOption = Annotated[
    float, typer.Option(help="Peak learning rate (10% warm-up, then linear decay).")
]
BlockSizeOption = Annotated[int, typer.Option(help="Tokens per block.")]
EvalEveryOption = Annotated[int, typer.Option(help="Evaluate every N steps (targets and sources).")]
EvalBlocksOption = Annotated[int, typer.Option(help="Blocks per domain per evaluation.")]
CheckpointEveryOption = Annotated[int, typer.Option(help="Checkpoint every N steps.")]
SeedOption = Annotated[int, typer.Option(help="Seed for data order, masking and dropout.")]


def os_error_line(exc: OSError) -> str:
    """An OSError (read-only folder, full disk, name too long, ...) as one line naming the path."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason


class LineageGroup(TyperGroup):
    """Turns a LineageError, or an OSError from the file system, into one clear message and exit
    code 1 (no traceback); its own options get click's metavars (as LineageCommand's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        click_metavars(self.params)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LineageError as exc:
            message = str(exc)
        except OSError as exc:
            message = os_error_line(exc)
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


# Python types as click names them in help (TEXT, INTEGER, ...); lists show their element type.
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": "BOOLEAN"}


def _type_metavar(param: TyperOption) -> str:
    inner = param.bare_type().removeprefix("list[").removesuffix("]")
    return _TYPE_NAMES.get(inner, inner.upper())


def _argument_metavar(param: TyperArgument) -> str:
    name = param.metavar or (param.name or "").upper()
    name = name if param.required else f"[{name}]"
    return f"{name}..." if param.nargs != 1 and not name.endswith("...") else name


def click_metavars(params: Sequence[Any]) -> None:
    """Give every option that takes a value its type's name (TEXT, PATH) and every argument its
    upper-case name as metavar, unless one was set."""
    for param in params:
        if isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
            param.metavar = _type_metavar(param)
        elif isinstance(param, TyperArgument) and param.metavar is None:
            param.metavar = (param.name or "").upper()


class LineageCommand(TyperCommand):
    """Help in click's conventions, as the tools beside lineage (pip, mlflow, accelerate) print
    it: ``NAME`` for an argument and ``-d, --domain TEXT`` for an option, where typer would
    show ``{name}``, ``<str>`` or ``<list[str]>``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        click_metavars(self.params)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [
            _argument_metavar(p) for p in self.get_params(ctx) if isinstance(p, TyperArgument)
        ]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [
            (_argument_metavar(p), getattr(p, "help", None) or "")
            for p in self.get_params(ctx)
            if isinstance(p, TyperArgument)
        ]
        options = [
            record
            for p in self.get_params(ctx)
            if isinstance(p, TyperOption) and (record := p.get_help_record(ctx))
        ]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class LineageTyper(typer.Typer):
    """A Typer app whose commands are LineageCommands."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or LineageCommand, **kwargs)


def app(help: str) -> typer.Typer:
    return LineageTyper(
        help=help,
        cls=LineageGroup,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def workspace(ctx: typer.Context) -> Workspace:
    """The workspace chosen by --workspace / $LINEAGE_WORKSPACE / the current folder."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    if "ws" not in obj:
        obj["ws"] = Workspace.open(obj.get("workspace"))
        root.obj = obj
        root.call_on_close(obj["ws"].close)
    return obj["ws"]


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def print_table(t: Table, out: Console | None = None) -> None:
    """Print a rich table whole: on a terminal it fits the window; piped or redirected (where
    rich would assume 80 columns and wrap or cut cells) it takes the width its cells need."""
    out = out or console
    if out.quiet:
        return
    if out.is_terminal:
        out.print(t)
        return
    needed = out.measure(t, options=out.options.update_width(1_000_000)).maximum
    Console(file=out.file, width=max(needed, out.width)).print(t)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    print_table(t)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they can be (numbers, lists, ...)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LineageError(f"--param takes key=value, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params

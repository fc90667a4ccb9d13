"""What every CLI command shares: the workspace from the context, JSON and table output."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from lineage.errors import LineageError
from lineage.workspace import Workspace

console = Console()
err_console = Console(stderr=True)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
]

# Options every training command shares (lineage train, lineage adapt): one spelling, one help.
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


class LineageGroup(TyperGroup):
    """Turns a LineageError into one clear message and exit code 1 (no traceback)."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LineageError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None


def app(help: str) -> typer.Typer:
    return typer.Typer(
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


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


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

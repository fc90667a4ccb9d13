"""``lineage cache``: teachers' top-K logit caches, built once and shared by students."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import (
    JsonOption,
    QuietOption,
    console,
    emit_json,
    err_console,
    quiet_mode,
    table,
    workspace,
)
from lineage.cli.common import app as make_app
from lineage.models.shapes import DEFAULT_BLOCK_SIZE

app = make_app("Teacher logit caches: top-K predictions computed once per teacher and shard.")


@app.command()
def build(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="Registered teacher model.")],
    domain: Annotated[
        list[str], typer.Option("--domain", "-d", help="Domain whose train shards to cache.")
    ],
    top_k: Annotated[
        int, typer.Option(help="Logits kept per target position (paper: 10 is enough).")
    ] = 10,
    block_size: Annotated[
        int, typer.Option(help="Tokens per block (must match training).")
    ] = DEFAULT_BLOCK_SIZE,
    mask_rate: Annotated[
        float, typer.Option(help="MLM: share of tokens masked (must match training).")
    ] = 0.15,
    mask_draws: Annotated[
        int,
        typer.Option(
            help="MLM: masks per block; epoch e of a student reads draw e mod N "
            "(must match training)."
        ),
    ] = 4,
    quiet: QuietOption = False,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="v2: coded rows, several times smaller (default up to K = 256); "
            "v1: plain arrays (default above).",
        ),
    ] = None,
    max_blocks: Annotated[
        int | None,
        typer.Option(help="Cache only each shard's first N blocks (a cheaper, partial cache)."),
    ] = None,
    data_fraction: Annotated[
        float | None,
        typer.Option(
            help="Cache only this share of each shard's first blocks (as train --data-fraction)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the teacher once over the domains' training blocks and store its top-K logits.

    The caches to build are listed first with an estimated time (the teacher timed on two
    blocks) and size. A shard whose cache already holds at least K entries per row over at
    least the blocks asked for keeps it: a cache of K serves every K' <= K. A cache of the first
    N blocks (--max-blocks, --data-fraction) serves only jobs that read at most those blocks
    (train/adapt --data-fraction), never one that reads the whole shard."""
    from lineage.errors import LineageError
    from lineage.inherit.cache_costs import PlannedCache, describe
    from lineage.train.caches import build_caches

    if format_ not in (None, "v1", "v2"):
        raise LineageError(f"--format must be v1 or v2, not {format_!r}")
    planned: list[PlannedCache] = []

    def announce(items: list[PlannedCache]) -> None:
        planned.extend(items)
        if not as_json and not quiet:
            for line in describe(items):
                err_console.print(line, highlight=False, soft_wrap=True)

    caches = build_caches(
        workspace(ctx),
        teacher,
        domain,
        top_k=top_k,
        block_size=block_size,
        progress=quiet_mode(quiet, as_json),
        mask_probability=mask_rate,
        mask_draws=mask_draws,
        format_version=None if format_ is None else int(format_[1]),
        max_blocks=max_blocks,
        data_fraction=data_fraction,
        announce=announce,
    )
    if as_json:
        emit_json(
            {
                "caches": [c.to_dict() for c in caches],
                "planned": [p.to_dict() for p in planned],
                "estimated_seconds": sum(p.seconds or 0.0 for p in planned),
            }
        )
    else:
        console.print(f"{len(caches)} cache(s) for {teacher}: " + ", ".join(c.path for c in caches))


@app.command("list")
def list_(
    ctx: typer.Context,
    teacher: Annotated[str | None, typer.Option(help="Only this teacher's caches.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List registered caches."""
    caches = workspace(ctx).registry.caches(teacher)
    if as_json:
        emit_json([c.to_dict() for c in caches])
        return
    table(
        "logit caches",
        ["teacher", "domain", "K", "format", "blocks", "of", "targets", "path"],
        [
            (
                c.teacher,
                c.domain,
                c.top_k,
                f"v{c.manifest.get('format', 1)}",
                c.manifest.get("n_blocks"),
                c.manifest.get("shard_blocks") or "all",
                c.manifest.get("n_targets"),
                c.path,
            )
            for c in caches
        ],
    )


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="A cache folder.")], as_json: JsonOption = False
) -> None:
    """Re-hash every file of a cache against its manifest."""
    from lineage.inherit.cache import open_cache

    cache = open_cache(path, verify=True)
    if as_json:
        emit_json(
            {
                "path": str(path),
                "ok": True,
                "blocks": cache.manifest.n_blocks,
                "teacher": cache.meta.teacher_name,
            }
        )
        return
    console.print(
        f"ok: {path} (format v{cache.format_version}, K = {cache.meta.top_k}, "
        f"{cache.manifest.n_blocks} blocks, teacher {cache.meta.teacher_name})"
    )

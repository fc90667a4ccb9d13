"""``lineage domain``: named bodies of text, their shards, profiles and proximity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.cli.common import app as make_app
from lineage.corpora.domains import (
    add_domain,
    bundled_domains,
    bundled_domains_dir,
    compute_proximity,
)
from lineage.errors import LineageError

app = make_app("Domains: named bodies of text, their shards, profiles and proximity.")


@app.command()
def add(
    ctx: typer.Context,
    name: str,
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Files, folders or globs of .txt, .jsonl, .parquet (optionally .gz)."),
    ] = None,
    description: Annotated[str, typer.Option(help="One line about the domain.")] = "",
    text_field: Annotated[
        str, typer.Option(help="Field/column holding the text (.jsonl, .parquet).")
    ] = "text",
    valid_every: Annotated[
        int | None,
        typer.Option(help="One document in N goes to valid (default from lineage.toml)."),
    ] = None,
    shard_mb: Annotated[float | None, typer.Option(help="Target shard size in MB.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a domain from text sources (a bundled domain's name alone adds the bundled corpus)."""
    if not sources:
        if name not in bundled_domains():
            raise LineageError(
                f"give SOURCES for {name!r} (bundled domains: {', '.join(bundled_domains())})"
            )
        sources = [str(bundled_domains_dir() / name)]
    domain, report = add_domain(
        workspace(ctx),
        name,
        sources,
        description=description,
        text_field=text_field,
        valid_every=valid_every,
        shard_mb=shard_mb,
    )
    if as_json:
        emit_json(domain.to_dict() | {"profile": None})
        return
    console.print(
        f"Added domain [bold]{domain.name}[/]: {report.documents:,} documents "
        f"({report.bytes / 1e6:.2f} MB, {report.words:,} words) from {len(report.files)} file(s); "
        f"train {report.train_documents:,} / valid {report.valid_documents:,}; {report.shards} shard(s)"
    )
    for skipped in report.skipped_empty_files:
        console.print(f"[yellow]skipped empty file[/] {skipped}")


@app.command("add-bundled")
def add_bundled(ctx: typer.Context) -> None:
    """Add every corpus bundled with lineage (literature, cs, bio) not yet in the workspace."""
    ws = workspace(ctx)
    have = {d.name for d in ws.registry.domains()}
    for name in bundled_domains():
        if name not in have:
            _, report = add_domain(ws, name, [bundled_domains_dir() / name])
            console.print(f"Added {name}: {report.documents:,} documents, {report.shards} shard(s)")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List domains."""
    domains = workspace(ctx).registry.domains()
    if as_json:
        emit_json([d.to_dict() | {"profile": None} for d in domains])
        return
    table(
        "domains",
        ["name", "documents", "MB", "words", "train/valid", "shards", "description"],
        [
            (
                d.name,
                f"{d.stats.get('documents', 0):,}",
                f"{d.stats.get('bytes', 0) / 1e6:.2f}",
                f"{d.stats.get('words', 0):,}",
                f"{d.stats.get('train_documents', 0)}/{d.stats.get('valid_documents', 0)}",
                d.stats.get("shards", 0),
                d.description,
            )
            for d in domains
        ],
    )


@app.command()
def show(ctx: typer.Context, name: str, as_json: JsonOption = False) -> None:
    """Show a domain: statistics, shards and its most frequent words."""
    reg = workspace(ctx).registry
    domain = reg.domain(name)
    shards = reg.shards(name)
    top = (domain.profile or {}).get("top_words", [])[:25]
    if as_json:
        emit_json(
            domain.to_dict()
            | {
                "profile": None,
                "top_words": top,
                "shards": [s.to_dict() | {"profile": None} for s in shards],
            }
        )
        return
    console.print(f"[bold]{name}[/]: {domain.description}")
    console.print(domain.stats)
    console.print("top words: " + ", ".join(top))
    table(
        "shards",
        ["name", "split", "documents", "bytes", "path"],
        [(s.name, s.split, s.n_documents, s.n_bytes, s.path) for s in shards],
    )


@app.command()
def proximity(
    ctx: typer.Context,
    measure: Annotated[
        str | None,
        typer.Option(help="overlap (|A∩B|/k, the paper's text) or jaccard (its script)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Heatmap PNG (default: plots/proximity.png).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Vocabulary-overlap proximity between domains (the paper's Table 8); stored and plotted."""
    from lineage.report.plots import heatmap  # matplotlib loads only when a plot is drawn

    ws = workspace(ctx)
    names, matrix = compute_proximity(ws, measure=measure)
    measure = measure or ws.config.profiles.measure
    plot = plot or ws.plots_dir / f"proximity-{measure}.png"
    heatmap(matrix, names, names, plot, title=f"domain proximity ({measure})")
    data = {
        "measure": measure,
        "domains": names,
        "matrix": matrix.round(4).tolist(),
        "plot": str(plot),
    }
    (ws.plots_dir / f"proximity-{measure}.json").write_text(emit_text(data), encoding="utf-8")
    if as_json:
        emit_json(data)
        return
    table(
        f"proximity ({measure})",
        ["", *names],
        [(a, *(f"{v:.1%}" for v in row)) for a, row in zip(names, matrix, strict=True)],
    )
    console.print(f"heatmap: {plot}")


def emit_text(data: object) -> str:
    import json

    return json.dumps(data, indent=2)

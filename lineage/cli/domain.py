"""``lineage domain``: named bodies of text, their shards, profiles and proximity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import (
    JsonOption,
    QuietOption,
    console,
    emit_json,
    quiet_mode,
    table,
    workspace,
)
from lineage.cli.common import app as make_app
from lineage.corpora.domains import (
    LAYOUTS,
    IngestReport,
    add_domain,
    bundled_domains,
    bundled_domains_dir,
    compute_proximity,
    remove_domain,
)
from lineage.errors import LineageError
from lineage.models.shapes import DEFAULT_BLOCK_SIZE
from lineage.registry.entities import DomainUsage

BYTES_PER_TOKEN = 4  # about, for byte-level BPE on English text: to warn of a short valid split

app = make_app("Domains: named bodies of text, their shards, profiles and proximity.")


LAYOUT_NAMES = {
    "blank-line": "documents separated by blank lines",
    "line": "one document per line",
    "file": "one document per file",
}


@app.command()
def add(
    ctx: typer.Context,
    name: str,
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files, folders or globs: .txt, .jsonl, .parquet (optionally .gz), .arrow, "
            "Hugging Face save_to_disk folders."
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="One line about the domain.")] = "",
    documents: Annotated[
        str,
        typer.Option(
            help="How files split into documents: auto (text: blank-line or line, detected), "
            "blank-line, line, file (whole file), or read every file as jsonl, parquet, arrow."
        ),
    ] = "auto",
    text_field: Annotated[
        str,
        typer.Option(help="Field/column holding the text; dotted for nested ones (meta.body)."),
    ] = "text",
    valid_every: Annotated[
        int | None,
        typer.Option(help="One document in N goes to valid (default from lineage.toml)."),
    ] = None,
    min_valid: Annotated[
        int | None,
        typer.Option(
            help="Valid keeps at least min(this, a tenth of the documents) (default: "
            "lineage.toml, 50)."
        ),
    ] = None,
    shard_mb: Annotated[float | None, typer.Option(help="Target shard size in MB.")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Swap out the registered domain of this name.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --replace: also remove the plans and caches that use it."
        ),
    ] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Add a domain from text sources (a bundled domain's name alone adds the bundled corpus)."""
    if documents not in LAYOUTS:
        raise typer.BadParameter(
            f"{documents!r} is not one of {', '.join(LAYOUTS)}", param_hint="--documents"
        )
    progress = quiet_mode(quiet, as_json)
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
        documents=documents,
        valid_every=valid_every,
        min_valid=min_valid,
        shard_mb=shard_mb,
        replace=replace,
        force=force,
        progress=progress,
    )
    if as_json:
        emit_json(domain.to_dict() | {"profile": None})
        return
    _print_layouts(report)
    if report.replaced is not None:
        console.print(f"Replaced domain [bold]{name}[/]{_removed(report.replaced)}")
    console.print(
        f"Added domain [bold]{domain.name}[/]: {report.documents:,} documents "
        f"({report.bytes / 1e6:.2f} MB, {report.words:,} words) from {len(report.files)} file(s); "
        f"train {report.train_documents:,} / valid {report.valid_documents:,} "
        f"({report.split.describe()}); {report.shards} shard(s)"
    )
    for skipped in report.skipped_empty_files:
        console.print(f"[yellow]skipped empty file[/] {skipped}")
    if report.valid_bytes < BYTES_PER_TOKEN * DEFAULT_BLOCK_SIZE:
        console.print(
            f"[yellow]note[/]: valid holds {report.valid_bytes:,} bytes, likely less than one "
            f"block of {DEFAULT_BLOCK_SIZE} tokens: evaluating on it will need a smaller "
            "--block-size (or more text)"
        )


def _print_layouts(report: IngestReport, show: int = 5) -> None:
    """How the text files were split: each detected layout with its reason (the first few)."""
    detected = [(f, lay) for f, lay in report.layouts if lay.layout in LAYOUT_NAMES]
    for path, layout in detected[:show]:
        console.print(
            f"{Path(path).name}: {LAYOUT_NAMES[layout.layout]} ({layout.reason})", highlight=False
        )
    if len(detected) > show:
        console.print(f"... and {len(detected) - show:,} more text file(s)")
    if any(lay.reason != "as given" for _, lay in detected):
        console.print("(pass --documents blank-line|line|file to choose another split)")


def _removed(usage: DomainUsage) -> str:
    parts = [f"{usage.shards} shard(s)", f"{usage.evaluations} evaluation(s)"]
    if usage.plans:
        parts.append(f"plan(s) {', '.join(usage.plans)}")
    if usage.caches:
        parts.append(f"{len(usage.caches)} logit cache(s)")
    if usage.runs:
        parts.append(f"run(s) {', '.join(map(str, usage.runs))} marked failed")
    return ": removed " + ", ".join(parts)


@app.command()
def remove(
    ctx: typer.Context,
    name: str,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also remove the plans and logit caches that use it (running jobs on it are "
            "marked failed).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove a domain: its shards, evaluations and token blocks (refused while in use)."""
    removal = remove_domain(workspace(ctx), name, force=force)
    if as_json:
        emit_json(
            {
                "domain": name,
                "removed": None if removal.usage is None else removal.usage.to_dict(),
                "files": removal.files,
            }
        )
        return
    if removal.usage is None:
        console.print(f"No domain {name!r} was registered; removed what an interrupted job left:")
        for path in removal.files:
            console.print(f"  {path}", highlight=False)
        return
    console.print(f"Removed domain [bold]{name}[/]{_removed(removal.usage)}")
    if removal.usage.models:
        console.print(
            f"models trained on it keep its name in their history: {', '.join(removal.usage.models)}"
        )


@app.command("add-bundled")
def add_bundled(ctx: typer.Context) -> None:
    """Add every corpus bundled with lineage (literature, cs, bio) not yet in the workspace."""
    ws = workspace(ctx)
    have = {d.name for d in ws.registry.domains()}
    for name in bundled_domains():
        if name not in have:
            _, report = add_domain(ws, name, [bundled_domains_dir() / name], progress=True)
            console.print(
                f"Added {name}: {report.documents:,} documents, {report.shards} shard(s); "
                f"valid {report.valid_documents:,} ({report.split.describe()})"
            )


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

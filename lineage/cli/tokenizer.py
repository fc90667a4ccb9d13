"""``lineage tokenizer``: shared vocabularies for teachers and students."""

from __future__ import annotations

from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.cli.common import app as make_app

app = make_app("Tokenizers: byte-level BPE vocabularies shared by teachers and students.")


@app.command()
def train(
    ctx: typer.Context,
    name: str,
    domain: Annotated[
        list[str], typer.Option("--domain", "-d", help="Domain to train on (repeat).")
    ],
    vocab_size: Annotated[
        int, typer.Option(help="Vocabulary size (bytes + specials + merges).")
    ] = 8000,
    min_frequency: Annotated[int, typer.Option(help="Minimum pair count for a merge.")] = 2,
    as_json: JsonOption = False,
) -> None:
    """Train a byte-level BPE tokenizer on domains' train text and register its fingerprint."""
    from lineage.lifecycle import train_workspace_tokenizer

    tok = train_workspace_tokenizer(
        workspace(ctx), name, domain, vocab_size=vocab_size, min_frequency=min_frequency
    )
    if as_json:
        emit_json(tok.to_dict())
    else:
        console.print(
            f"Trained [bold]{tok.name}[/]: {tok.vocab_size} tokens, fingerprint {tok.fingerprint[:16]}…"
        )


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List tokenizers."""
    toks = workspace(ctx).registry.tokenizers()
    if as_json:
        emit_json([t.to_dict() for t in toks])
        return
    table(
        "tokenizers",
        ["name", "vocab", "fingerprint", "domains"],
        [
            (t.name, t.vocab_size, t.fingerprint[:16], ", ".join(t.params.get("domains", [])))
            for t in toks
        ],
    )

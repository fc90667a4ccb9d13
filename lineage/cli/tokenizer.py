"""``lineage tokenizer``: shared vocabularies for teachers and students."""

from __future__ import annotations

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

app = make_app("Tokenizers: vocabularies shared by teachers and students.")


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
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train a byte-level BPE tokenizer on domains' train text and register its fingerprint."""
    from lineage.lifecycle import train_workspace_tokenizer

    quiet_mode(quiet, as_json)

    tok = train_workspace_tokenizer(
        workspace(ctx), name, domain, vocab_size=vocab_size, min_frequency=min_frequency
    )
    if as_json:
        emit_json(tok.to_dict())
    else:
        console.print(
            f"Trained [bold]{tok.name}[/]: {tok.vocab_size} tokens, fingerprint {tok.fingerprint[:16]}…"
        )


@app.command()
def register(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="A registered model, or a folder holding tokenizer.json.")
    ],
    name: Annotated[
        str | None, typer.Option(help="Registry name (default: the model's or folder's name).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a real model's tokenizer (any Hugging Face fast tokenizer: byte-level BPE,
    SentencePiece/Llama, WordPiece) so new students can share that model's vocabulary."""
    from lineage.lifecycle import register_workspace_tokenizer

    tok = register_workspace_tokenizer(workspace(ctx), source, name)
    if as_json:
        emit_json(tok.to_dict())
        return
    specials = ", ".join(f"{k} {v}" for k, v in tok.params["specials"].items())
    console.print(
        f"Registered [bold]{tok.name}[/]: {tok.params['kind']}, {tok.vocab_size} tokens, "
        f"fingerprint {tok.fingerprint[:16]}…; specials: {specials}; documents end with "
        f"{tok.params['separator']}",
        highlight=False,
        soft_wrap=True,
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
        ["name", "kind", "vocab", "fingerprint", "domains / source"],
        [
            (
                t.name,
                t.params.get("kind", "-"),
                t.vocab_size,
                t.fingerprint[:16],
                ", ".join(t.params.get("domains", [])) or t.params.get("source", "-"),
            )
            for t in toks
        ],
    )

"""``lineage model``: register, inspect, document and remove models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineage.cli.common import JsonOption, console, emit_json, table, workspace
from lineage.cli.common import app as make_app
from lineage.models.shapes import DEFAULT_BLOCK_SIZE, FAMILIES, PRESETS, ModelShape

app = make_app("Models: Hugging Face checkpoints in the registry.")


@app.command()
def register(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A local Hugging Face model directory.")],
    name: Annotated[
        str | None, typer.Option(help="Registry name (default: the folder name).")
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", "-d", help="A domain it was trained on.")
    ] = None,
    description: Annotated[str, typer.Option(help="One line about the model.")] = "",
    hub_id: Annotated[
        str | None,
        typer.Option(help="Its Hugging Face Hub id (org/name): cards of its children cite it."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a local model directory (reads config.json, safetensors headers, tokenizer)."""
    model = workspace(ctx).register_model(
        path, name=name, domains=domain or [], description=description, hub_id=hub_id
    )
    if as_json:
        emit_json(model.to_dict())
    else:
        console.print(
            f"Registered [bold]{model.name}[/]: {model.family} {model.objective}, "
            f"{model.layers} layers x {model.d_model}, {model.n_params:,} parameters"
        )


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List registered models."""
    models = workspace(ctx).registry.models()
    if as_json:
        emit_json([m.to_dict() for m in models])
        return
    table(
        "models",
        ["name", "family", "objective", "layers", "d_model", "params", "domains"],
        [
            (
                m.name,
                m.family,
                m.objective,
                m.layers,
                m.d_model,
                f"{m.n_params:,}",
                ", ".join(m.domains),
            )
            for m in models
        ],
    )


@app.command()
def show(ctx: typer.Context, name: str, as_json: JsonOption = False) -> None:
    """Show a model with its parents, children, generation and evaluations."""
    reg = workspace(ctx).registry
    model = reg.model(name)
    data = model.to_dict() | {
        "generation": reg.generation(name),
        "parents": [e.to_dict() for e in reg.edges(name) if e.child == name],
        "children": [e.to_dict() for e in reg.edges(name) if e.parent == name],
        "evaluations": [
            e.to_dict() | {"protocol": e.protocol.short() if e.protocol else None}
            for e in reg.evaluations(model=name)
        ],
    }
    if as_json:
        emit_json(data)
        return
    console.print(f"[bold]{name}[/]  generation {data['generation']}  {model.path}")
    console.print(
        f"{model.family} {model.objective}: {model.layers} layers, d_model {model.d_model}, "
        f"{model.heads} heads{_kv(model.kv_heads, model.heads)}, d_ffn {model.d_ffn}, "
        f"vocab {model.vocab_size}, "
        f"{model.n_params:,} parameters; domains: {', '.join(model.domains) or '-'}"
    )
    for e in data["parents"]:
        console.print(f"  <- [{e['kind']}] {e['parent']}  {e['params']}")
    for e in data["children"]:
        console.print(f"  -> [{e['kind']}] {e['child']}")
    if model.description:
        console.print(f"  {model.description}", highlight=False, markup=False)
    if data["evaluations"]:
        table(
            "evaluations (ppl compare only within one protocol: blocks x size, sample digest)",
            ["domain", "step", "loss", "ppl", "protocol"],
            [
                (
                    e["domain"],
                    e["step"],
                    f"{e['loss']:.4f}",
                    f"{e['ppl']:.2f}",
                    e["protocol"] or "unrecorded",
                )
                for e in data["evaluations"]
            ],
        )


def _kv(kv_heads: int | None, heads: int) -> str:
    """' (4 kv heads: GQA)' when keys and values have fewer heads than queries."""
    if kv_heads is None or kv_heads == heads:
        return ""
    return f" ({kv_heads} kv heads: {'MQA' if kv_heads == 1 else 'GQA'})"


@app.command()
def card(ctx: typer.Context, name: str) -> None:
    """Write the model directory's README.md model card (base_model metadata + lineage)."""
    path = workspace(ctx).write_model_card(name)
    console.print(f"Wrote {path}")


@app.command()
def remove(
    ctx: typer.Context,
    name: str,
    force: Annotated[bool, typer.Option(help="Also when other models derive from it.")] = False,
) -> None:
    """Remove a model from the registry (its files stay where they are)."""
    workspace(ctx).registry.remove_model(name, force=force)
    console.print(f"Removed {name}")


@app.command()
def create(
    ctx: typer.Context,
    name: str,
    family: Annotated[str, typer.Option(help=f"One of {', '.join(FAMILIES)}.")],
    tokenizer: Annotated[
        str | None, typer.Option(help="A registered tokenizer (see `lineage tokenizer list`).")
    ] = None,
    tokenizer_from: Annotated[
        str | None,
        typer.Option(help="Use this registered model's tokenizer (a student of that teacher)."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help=f"A named shape: {', '.join(PRESETS)}.")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="Transformer blocks.")] = None,
    hidden: Annotated[int | None, typer.Option(help="d_model.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    ffn: Annotated[int | None, typer.Option(help="Feed-forward size (default 4 x hidden).")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="Key/value heads (llama GQA).")] = None,
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
    max_positions: Annotated[int, typer.Option(help="Longest sequence the model accepts.")] = 512,
    dropout: Annotated[
        float | None, typer.Option(help="Hidden and attention dropout (default 0.1).")
    ] = None,
    init_range: Annotated[
        float | None, typer.Option(help="Std of the initial weights (default 0.02).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a randomly initialised model (safetensors) from a preset or explicit shape, with
    a registered tokenizer or the tokenizer of a registered model (--tokenizer-from)."""
    from lineage.lifecycle import create_workspace_model

    if (tokenizer is None) == (tokenizer_from is None):
        raise typer.BadParameter("give exactly one of --tokenizer and --tokenizer-from")

    if preset is not None:
        shape: ModelShape | str = preset
    elif layers and hidden and heads:
        shape = ModelShape(
            layers=layers, hidden=hidden, heads=heads, ffn=ffn or 4 * hidden, kv_heads=kv_heads
        )
    else:
        raise typer.BadParameter("give --preset, or --layers, --hidden and --heads")
    model = create_workspace_model(
        workspace(ctx),
        name,
        family=family,
        shape=shape,
        tokenizer=tokenizer,
        tokenizer_from=tokenizer_from,
        seed=seed,
        max_positions=max_positions,
        dropout=dropout,
        init_range=init_range,
    )
    if as_json:
        emit_json(model.to_dict())
    else:
        console.print(
            f"Created [bold]{model.name}[/]: {model.family}, {model.n_params:,} parameters at {model.path}"
        )


@app.command("eval")
def eval_(
    ctx: typer.Context,
    name: str,
    domain: Annotated[
        list[str], typer.Option("--domain", "-d", help="Domain to evaluate on (repeat).")
    ],
    block_size: Annotated[int, typer.Option(help="Tokens per block.")] = DEFAULT_BLOCK_SIZE,
    max_blocks: Annotated[
        int | None, typer.Option(help="Evaluate on at most this many blocks.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Perplexity on domains' valid splits (MLM: fixed-mask pseudo-perplexity); stored."""
    from lineage.lifecycle import evaluate_model

    evals = evaluate_model(
        workspace(ctx), name, domain, block_size=block_size, max_blocks=max_blocks
    )
    if as_json:
        emit_json([e.to_dict() for e in evals])
        return
    table(
        f"{name}: perplexity",
        ["domain", "loss", "ppl", "tokens"],
        [(e.domain, f"{e.loss:.4f}", f"{e.ppl:.2f}", e.n_tokens) for e in evals],
    )


@app.command()
def verify(
    ctx: typer.Context,
    name: str,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Record the checksums of a model registered before lineage recorded them "
            "(its files as they are now).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Hash a model's config and weights again and compare them with the sha256 recorded at
    registration. Exits 1 when a file is missing, changed or new."""
    from lineage.errors import LineageError
    from lineage.registry.modelfiles import model_files, verify_files

    reg = workspace(ctx).registry
    model = reg.model(name)
    if record:
        if model.files is not None:
            raise LineageError(f"{name!r} has its checksums already (recorded at registration)")
        files = model_files(Path(model.path))
        if not files:
            raise LineageError(f"{model.path} holds no config or weights to record")
        reg.record_model_files(name, files)
        console.print(f"recorded: {name} ({len(files)} files)")
        return
    if model.files is None:
        raise LineageError(
            f"{name!r} was registered before lineage recorded checksums: nothing to verify "
            f"(record them with `lineage model verify --record {name}`)"
        )
    problems = verify_files(Path(model.path), model.files, full=True)
    if as_json:
        emit_json({"model": name, "ok": not problems, "files": model.files, "problems": problems})
        if problems:
            raise typer.Exit(code=1)
        return
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LineageError(f"{name!r} differs from its registration: {problems[0]}{more}")
    console.print(f"ok: {name} ({len(model.files)} files match their sha256)")

"""bert2BERT index maps and per-family parameter templates (papers/004 §3.3, Eq. 5–6, 9–13).

Pure data and pure functions: which unit of the source model each unit of the grown model
copies (the maps g), and, per model family, which axis of which parameter follows which map.
`lineage.growth.expand` runs the one copy loop over these templates.

Axis names used by the templates:

- ``hidden``: the residual stream, d_model (map g_e: embedding out = Q/K/V in = O out = FFN …)
- ``q``: query-head units, heads * head_dim (Q/K/V out-map = O in-map, whole heads)
- ``kv``: key/value-head units, kv_heads * head_dim (grouped-query attention)
- ``qkv``: GPT-2's fused c_attn columns, [q | k | v], each heads * head_dim
- ``ffn``: FFN inner units (W1 out-map = W2 in-map)
- ``-``: an axis that never grows (vocabulary, positions, token types)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from transformers import (
    BertForMaskedLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    RobertaForMaskedLM,
)

from lineage.errors import LineageError

FIXED = "-"


@dataclass(frozen=True)
class ModelShape:
    """The sizes growth cares about, read from a config (see `shape_of`)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.heads // self.kv_heads

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class AxisMap:
    """Index map g for one axis: target unit i copies source unit ``src[i]``.

    ``src``: [n_target] long; ``old``: [n_target] bool, True where unit i is the identity copy
    of a source unit (what DirectCopy keeps and what AKI takes from the same layer).
    """

    src: Tensor
    old: Tensor
    n_source: int

    def __post_init__(self) -> None:
        assert self.src.ndim == 1 and self.src.shape == self.old.shape, "map and mask must match"
        assert int(self.src.max()) < self.n_source, "map points past the source axis"

    @property
    def n_target(self) -> int:
        return int(self.src.shape[0])

    def counts(self) -> Tensor:
        """[n_target] long: how many target units copy the same source unit as unit i (C_g(i))."""
        return torch.bincount(self.src, minlength=self.n_source)[self.src]


@dataclass(frozen=True)
class ParamSpec:
    """How one parameter grows: an axis name per tensor dimension, and which one is "in".

    The in-dimension is divided by the copy counts (Eq. 7); ``in_dim=0`` on a 1-D norm vector
    carries that division for a tied output embedding (see the family templates).
    """

    axes: tuple[str, ...]
    in_dim: int | None = None

    def __post_init__(self) -> None:
        assert self.in_dim is None or self.axes[self.in_dim] != FIXED, "a fixed axis has no copies"


@dataclass(frozen=True)
class Family:
    """Parameter-name templates for one model family (STYLE.md #5)."""

    name: str
    model_class: type[PreTrainedModel]
    layers_path: str  # dotted attribute path of the ModuleList of blocks
    global_params: dict[str, ParamSpec]  # full names, outside the blocks
    layer_params: dict[str, ParamSpec]  # names relative to f"{layers_path}.{l}."


def expansion_map(
    old: int, new: int, generator: torch.Generator, *, balanced: bool = True
) -> Tensor:
    """[new] long: identity on the first ``old`` units, sampled source units after (Eq. 5–6).

    ``balanced`` draws the new units from shuffled full cycles of the old ones, so every old
    unit is copied the same number of times when ``new`` is a multiple of ``old`` (then
    LayerNorm/RMSNorm statistics are unchanged and FPI is exact) and the counts differ by at
    most one otherwise; each new unit is still uniform over the old ones. ``balanced=False`` is
    the paper's literal i.i.d. uniform sampling.
    """
    if old < 1 or new < old:
        raise LineageError(f"cannot grow an axis from {old} to {new} units")
    extra = new - old
    if balanced:
        cycles = -(-extra // old)  # ceil
        pool = [torch.randperm(old, generator=generator) for _ in range(cycles)]
        fresh = torch.cat(pool)[:extra] if pool else torch.empty(0, dtype=torch.long)
    else:
        fresh = torch.randint(old, (extra,), generator=generator)
    return torch.cat([torch.arange(old), fresh])


def _head_units(head_src: Tensor, head_old: Tensor, head_dim: int, n_heads: int) -> AxisMap:
    """Expand a map over whole heads to a map over their units (head size fixed)."""
    offsets = torch.arange(head_dim)
    src = (head_src[:, None] * head_dim + offsets[None, :]).reshape(-1)  # [heads_t * head_dim]
    old = head_old[:, None].expand(-1, head_dim).reshape(-1)
    return AxisMap(src, old, n_heads * head_dim)


def build_axis_maps(
    source: ModelShape, target: ModelShape, *, seed: int, balanced: bool = True
) -> tuple[dict[str, AxisMap], dict[str, list[int]]]:
    """All axis maps for one growth, and their JSON-able summary (head-level maps).

    Draw order is fixed (hidden, kv heads, heads within a group, ffn), so a seed reproduces
    the maps. Query heads grow per key/value group: target query head (j, r) copies source
    query head (g_kv(j), g_r(r)), so it still attends with the key/value head it was trained
    with (grouped-query attention keeps its group structure).
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = expansion_map(source.hidden, target.hidden, gen, balanced=balanced)
    kv = expansion_map(source.kv_heads, target.kv_heads, gen, balanced=balanced)
    group = expansion_map(source.group, target.group, gen, balanced=balanced)
    ffn = expansion_map(source.ffn, target.ffn, gen, balanced=balanced)

    kv_old = torch.arange(target.kv_heads) < source.kv_heads
    group_old = torch.arange(target.group) < source.group
    q_heads = (kv[:, None] * source.group + group[None, :]).reshape(-1)  # [heads_t]
    q_old = (kv_old[:, None] & group_old[None, :]).reshape(-1)
    hd = source.head_dim
    q = _head_units(q_heads, q_old, hd, source.heads)
    kvu = _head_units(kv, kv_old, hd, source.kv_heads)
    # GPT-2's fused [q | k | v]: the same head map in each third, offset by the source width.
    width = source.heads * hd
    qkv = AxisMap(
        torch.cat([q.src + part * width for part in range(3)]),
        torch.cat([q.old] * 3),
        3 * width,
    )
    maps = {
        "hidden": AxisMap(hidden, torch.arange(target.hidden) < source.hidden, source.hidden),
        "q": q,
        "kv": kvu,
        "qkv": qkv,
        "ffn": AxisMap(ffn, torch.arange(target.ffn) < source.ffn, source.ffn),
    }
    summary = {
        "hidden": hidden.tolist(),
        "heads": q_heads.tolist(),
        "kv_heads": kv.tolist(),
        "ffn": ffn.tolist(),
    }
    return maps, summary


def depth_map(source_layers: int, target_layers: int) -> list[int]:
    """Source layer behind each target layer under Alg. 1 (papers/004).

    k = floor(L_t / L_s) stacked copies of the widened model, then its top L_t − k·L_s
    layers: e.g. (2, 5) -> [0, 1, 0, 1, 1], (3, 7) -> [0, 1, 2, 0, 1, 2, 2].
    """
    if source_layers < 1 or target_layers < source_layers:
        raise LineageError(f"depth can only grow: {source_layers} -> {target_layers} layers")
    k = target_layers // source_layers
    rest = target_layers - k * source_layers
    return list(range(source_layers)) * k + list(range(source_layers - rest, source_layers))


# ---- configs -----------------------------------------------------------------------------


def family_of(config: PretrainedConfig) -> Family:
    """The growth templates for a config's model family, or a LineageError naming the known."""
    tied = bool(getattr(config, "tie_word_embeddings", True))
    builders = {"bert": _bert, "roberta": _roberta, "gpt2": _gpt2, "llama": _llama}
    if config.model_type not in builders:
        known = ", ".join(sorted(builders))
        raise LineageError(f"growth supports model families {known}, not {config.model_type!r}")
    return builders[config.model_type](tied)


def shape_of(config: PretrainedConfig) -> ModelShape:
    """Sizes from a config; standard names work for GPT-2 too through its attribute_map."""
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    if config.model_type == "gpt2":
        ffn = int(config.n_inner or 4 * hidden)
    else:
        ffn = int(config.intermediate_size)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return ModelShape(
        layers=int(config.num_hidden_layers),
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=ffn,
        vocab=int(config.vocab_size),
    )


def axis_sizes(shape: ModelShape) -> dict[str, int]:
    """Length of each named axis for a model of this shape."""
    q = shape.heads * shape.head_dim
    return {
        "hidden": shape.hidden,
        "q": q,
        "kv": shape.kv_heads * shape.head_dim,
        "qkv": 3 * q,
        "ffn": shape.ffn,
    }


# ---- per-family templates ----------------------------------------------------------------
# torch Linear weights are [out, in]; GPT-2's Conv1D weights are [in, out].

_VEC = ParamSpec(("hidden",))
_EMB = ParamSpec((FIXED, "hidden"))  # Eq. 9: embeddings grow only in the out-dimension
_VOCAB = ParamSpec((FIXED,))


def _linear(out_axis: str, in_axis: str) -> ParamSpec:
    return ParamSpec((out_axis, in_axis), in_dim=1)


def _encoder(prefix: str) -> tuple[dict[str, ParamSpec], dict[str, ParamSpec]]:
    """BERT/RoBERTa (post-LN) embeddings and blocks, shared by both families."""
    globals_ = {
        f"{prefix}.embeddings.word_embeddings.weight": _EMB,
        f"{prefix}.embeddings.position_embeddings.weight": _EMB,
        f"{prefix}.embeddings.token_type_embeddings.weight": _EMB,
        f"{prefix}.embeddings.LayerNorm.weight": _VEC,
        f"{prefix}.embeddings.LayerNorm.bias": _VEC,
    }
    layer = {
        "attention.self.query.weight": _linear("q", "hidden"),
        "attention.self.query.bias": ParamSpec(("q",)),
        "attention.self.key.weight": _linear("kv", "hidden"),
        "attention.self.key.bias": ParamSpec(("kv",)),
        "attention.self.value.weight": _linear("kv", "hidden"),
        "attention.self.value.bias": ParamSpec(("kv",)),
        "attention.output.dense.weight": _linear("hidden", "q"),
        "attention.output.dense.bias": _VEC,
        "attention.output.LayerNorm.weight": _VEC,
        "attention.output.LayerNorm.bias": _VEC,
        "intermediate.dense.weight": _linear("ffn", "hidden"),
        "intermediate.dense.bias": ParamSpec(("ffn",)),
        "output.dense.weight": _linear("hidden", "ffn"),
        "output.dense.bias": _VEC,
        "output.LayerNorm.weight": _VEC,
        "output.LayerNorm.bias": _VEC,
    }
    return globals_, layer


def _mlm_head(
    dense: str, norm: str, decoder: str, biases: tuple[str, ...], tied: bool
) -> dict[str, ParamSpec]:
    """MLM head: dense -> act -> LayerNorm -> decoder (tied to the word embeddings).

    Tied: the decoder is the word-embedding matrix, which grows only in its out-dimension
    (Eq. 9) and so cannot take the in-dimension division without changing the input side.
    The head's LayerNorm is the last thing before the decoder and acts per unit, so its weight
    and bias take the division instead: (n·w + b)/C per copy, summed C times = the source.
    """
    scaled = ParamSpec(("hidden",), in_dim=0) if tied else _VEC
    head = {
        f"{dense}.weight": _linear("hidden", "hidden"),
        f"{dense}.bias": _VEC,
        f"{norm}.weight": scaled,
        f"{norm}.bias": scaled,
        f"{decoder}.weight": _EMB if tied else _linear(FIXED, "hidden"),
    }
    head.update({name: _VOCAB for name in biases})
    return head


def _bert(tied: bool) -> Family:
    globals_, layer = _encoder("bert")
    globals_ |= _mlm_head(
        "cls.predictions.transform.dense",
        "cls.predictions.transform.LayerNorm",
        "cls.predictions.decoder",
        ("cls.predictions.bias", "cls.predictions.decoder.bias"),
        tied,
    )
    return Family("bert", BertForMaskedLM, "bert.encoder.layer", globals_, layer)


def _roberta(tied: bool) -> Family:
    globals_, layer = _encoder("roberta")
    globals_ |= _mlm_head(
        "lm_head.dense",
        "lm_head.layer_norm",
        "lm_head.decoder",
        ("lm_head.bias", "lm_head.decoder.bias"),
        tied,
    )
    return Family("roberta", RobertaForMaskedLM, "roberta.encoder.layer", globals_, layer)


def _final_norm(names: tuple[str, ...], head: str, tied: bool) -> dict[str, ParamSpec]:
    """Final norm and LM head of a decoder-only model.

    Tied: wte/embed_tokens doubles as the LM head and grows only in its out-dimension, so the
    in-dimension division moves onto the final norm's weight (and bias, for LayerNorm), the
    last per-unit operation before the head. Untied: the head is an ordinary [vocab, hidden]
    linear and takes the division itself; the norm is copied.
    """
    norm = ParamSpec(("hidden",), in_dim=0) if tied else _VEC
    specs = {name: norm for name in names}
    specs[head] = _EMB if tied else _linear(FIXED, "hidden")
    return specs


def _gpt2(tied: bool) -> Family:
    globals_ = {
        "transformer.wte.weight": _EMB,
        "transformer.wpe.weight": _EMB,
        **_final_norm(("transformer.ln_f.weight", "transformer.ln_f.bias"), "lm_head.weight", tied),
    }
    conv = ParamSpec  # Conv1D: [in, out], so the in-dimension is dim 0
    layer = {
        "ln_1.weight": _VEC,
        "ln_1.bias": _VEC,
        "attn.c_attn.weight": conv(("hidden", "qkv"), in_dim=0),
        "attn.c_attn.bias": conv(("qkv",)),
        "attn.c_proj.weight": conv(("q", "hidden"), in_dim=0),
        "attn.c_proj.bias": _VEC,
        "ln_2.weight": _VEC,
        "ln_2.bias": _VEC,
        "mlp.c_fc.weight": conv(("hidden", "ffn"), in_dim=0),
        "mlp.c_fc.bias": conv(("ffn",)),
        "mlp.c_proj.weight": conv(("ffn", "hidden"), in_dim=0),
        "mlp.c_proj.bias": _VEC,
    }
    return Family("gpt2", GPT2LMHeadModel, "transformer.h", globals_, layer)


def _llama(tied: bool) -> Family:
    globals_ = {
        "model.embed_tokens.weight": _EMB,
        **_final_norm(("model.norm.weight",), "lm_head.weight", tied),
    }
    layer = {
        "self_attn.q_proj.weight": _linear("q", "hidden"),
        "self_attn.k_proj.weight": _linear("kv", "hidden"),
        "self_attn.v_proj.weight": _linear("kv", "hidden"),
        "self_attn.o_proj.weight": _linear("hidden", "q"),
        # present only with attention_bias / mlp_bias
        "self_attn.q_proj.bias": ParamSpec(("q",)),
        "self_attn.k_proj.bias": ParamSpec(("kv",)),
        "self_attn.v_proj.bias": ParamSpec(("kv",)),
        "self_attn.o_proj.bias": _VEC,
        "mlp.gate_proj.weight": _linear("ffn", "hidden"),
        "mlp.up_proj.weight": _linear("ffn", "hidden"),
        "mlp.down_proj.weight": _linear("hidden", "ffn"),
        "mlp.gate_proj.bias": ParamSpec(("ffn",)),
        "mlp.up_proj.bias": ParamSpec(("ffn",)),
        "mlp.down_proj.bias": _VEC,
        "input_layernorm.weight": _VEC,
        "post_attention_layernorm.weight": _VEC,
    }
    return Family("llama", LlamaForCausalLM, "model.layers", globals_, layer)

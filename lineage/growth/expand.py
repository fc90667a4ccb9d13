"""bert2BERT growth: initialise a wider, deeper model from a trained one (papers/004 §3.3).

Width (Eq. 5–16): every parameter is expanded by the index maps of `lineage.growth.maps`:
- ``fpi``: copy units by the maps and divide in-dimension copies by their count, so the grown
  model computes the source's function (exactly when the maps are balanced, see
  `expansion_map`; LayerNorm statistics make it approximate otherwise);
- ``aki``: as FPI, but the *new* out-dimension units of layer l come from layer l+1 (the top
  layer falls back to itself), which breaks FPI's symmetry;
- ``copy`` (DirectCopy): the source where it fits, random values at the source's scale elsewhere
  (per tensor: a normal draw with the source tensor's mean and standard deviation), so the new
  units are as loud as the old ones and break the function — the paper's weak baseline
  (papers/004 Fig. 3: loss 9.05 right after growth vs the source's 1.89);
- ``copy-hf-init``: DirectCopy with the target model's own (Hugging Face) random init in the new
  units instead, which at init_range 0.02 is quiet next to trained weights.
Depth (Alg. 1): stack the widened model until the target depth (`depth_map`).
Alg. 2 helpers (`submodel_layers`, `trainable_layer_range`, `truncate_depth`) are in
`lineage.growth.twostage`.

All of this is pure over state dicts except `grow_model` (builds a model).
"""

from __future__ import annotations

import copy
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from lineage.errors import LineageError
from lineage.growth.maps import (
    FIXED,
    AxisMap,
    Family,
    ModelShape,
    ParamSpec,
    axis_sizes,
    build_axis_maps,
    depth_map,
    family_of,
    shape_of,
)

GrowthMethod = Literal["fpi", "aki", "copy", "copy-hf-init"]
StateDict = dict[str, Tensor]

# Starting-loss checks (`growth_warnings`). FPI at the source's depth keeps the loss up to
# normalisation statistics (papers/004 Table 1: +0.03 nats); AKI, DirectCopy and depth stacking
# are not function-preserving. AKI measured on small trained Llama models (GQA, RMSNorm, SwiGLU,
# tied; 2-30 layers) started 0.5-2.2 nats above the source at 1.5x width and 1.2-3.8 at 2x,
# near a uniform guess; SmolLM2-135M was reported above it (ppl 311,120 > V = 49,152 at 2x).
# README ("Growth") has the table.
FPI_LOSS_TOLERANCE = 0.1  # nats over the source before FPI is reported as broken
LOSS_GAP_WARNING = 1.0  # nats over the source before a non-preserving growth is reported


@dataclass(frozen=True)
class GrowthRecord:
    """What a growth did, enough to reproduce it; JSON-able (`to_json` / `from_json`).

    ``maps`` holds the head-level index maps: ``hidden``, ``heads`` (query heads),
    ``kv_heads``, ``ffn`` — target unit i copies source unit ``maps[axis][i]`` — and ``layers``,
    the source layer behind each target layer (Alg. 1).
    """

    method: GrowthMethod
    seed: int
    family: str
    source_shape: dict[str, int]
    target_shape: dict[str, int]
    maps: dict[str, list[int]] = field(repr=False)
    balanced: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GrowthRecord:
        return cls(**json.loads(text))


def growth_warnings(record: GrowthRecord, source_loss: float, grown_loss: float) -> list[str]:
    """What a user should be told about a grown model's loss before training (empty if fine).

    ``source_loss`` / ``grown_loss``: mean cross-entropy in nats on the same sample. FPI at the
    source's depth should keep the loss (within ``FPI_LOSS_TOLERANCE``); other growths are
    reported once they start ``LOSS_GAP_WARNING`` nats above the source, and any growth whose
    loss reaches ln(vocab) is worse than guessing uniformly over the vocabulary.
    """
    gap = grown_loss - source_loss
    src, tgt = record.source_shape, record.target_shape
    deeper = tgt["layers"] > src["layers"]
    scores = f"loss {grown_loss:.3f} vs the source's {source_loss:.3f} ({gap:+.3f} nats)"
    out = []
    if record.method == "fpi" and not deeper:
        if gap > FPI_LOSS_TOLERANCE:
            out.append(
                f"FPI should keep the source's function, but the grown model has {scores}; "
                "an unsupported module or a normalisation the maps do not preserve changed it"
            )
    elif gap > LOSS_GAP_WARNING:
        why = {
            "aki": "AKI fills the new units from the layer above and pairs them with this "
            "layer's output weights, so it is not function-preserving (papers/004 §3.3.2: it "
            "starts above FPI and DirectCopy)",
            "copy": "DirectCopy fills the new units with random weights",
            "fpi": "depth stacking is not function-preserving",
        }[record.method]
        out.append(f"the grown model starts far from its source: {scores}; {why}")
    uniform = math.log(src["vocab"])
    if grown_loss >= uniform:
        out.append(
            f"the grown model is worse than a uniform guess over its {src['vocab']} tokens "
            f"(loss {grown_loss:.3f} >= ln V = {uniform:.3f}): it keeps none of the source's "
            "knowledge as it stands; FPI (the default) keeps the source's loss"
        )
    return out


# ---- one tensor --------------------------------------------------------------------------


def _gather(w: Tensor, spec: ParamSpec, maps: Mapping[str, AxisMap]) -> Tensor:
    """Copy units along every growing axis (Eq. 8, and the in-dimension copy of Eq. 7)."""
    assert w.ndim == len(spec.axes), f"{tuple(w.shape)} does not fit axes {spec.axes}"
    for dim, axis in enumerate(spec.axes):
        if axis == FIXED:
            continue
        g = maps[axis]
        assert w.shape[dim] == g.n_source, f"axis {axis}: {w.shape[dim]} != {g.n_source} units"
        w = w.index_select(dim, g.src.to(w.device))
    return w


def _along(vector: Tensor, dim: int, ndim: int) -> Tensor:
    """View a [n] vector so it broadcasts along dimension ``dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return vector.view(shape)


def _fpi(w: Tensor, spec: ParamSpec, maps: Mapping[str, AxisMap]) -> Tensor:
    """EXPN(W; g_in, g_out): copy by the maps, divide in-dimension copies by their count."""
    u = _gather(w, spec, maps)
    if spec.in_dim is not None:
        counts = maps[spec.axes[spec.in_dim]].counts().to(u.device, u.dtype)
        u = u / _along(counts, spec.in_dim, u.ndim)
    return u


def _mask(spec: ParamSpec, maps: Mapping[str, AxisMap], *, new_out: bool) -> Tensor:
    """Bool mask broadcastable to the grown tensor.

    ``new_out``: True where any out-dimension unit is new (where AKI takes layer l+1);
    otherwise True where every growing axis is an old unit (what DirectCopy keeps).
    """
    mask = torch.tensor(not new_out)
    for dim, axis in enumerate(spec.axes):
        if axis == FIXED or (new_out and dim == spec.in_dim):
            continue
        old = _along(maps[axis].old, dim, len(spec.axes))
        mask = (mask | ~old) if new_out else (mask & old)
    return mask


def expand_tensor(
    w: Tensor,
    spec: ParamSpec,
    maps: Mapping[str, AxisMap],
    *,
    method: GrowthMethod,
    upper: Tensor | None = None,
    init: Tensor | None = None,
) -> Tensor:
    """Grow one parameter. ``w``: source-shaped; returns the target-shaped tensor.

    ``upper``: the same parameter of layer l+1 (AKI; None falls back to FPI).
    ``init``: the values of the new units (DirectCopy: ``source_scale_init`` or the target
    model's random init).
    """
    if method == "fpi" or (method == "aki" and upper is None):
        return _fpi(w, spec, maps)
    if method == "aki":
        assert upper is not None and upper.shape == w.shape, "AKI needs layer l+1 of equal shape"
        # Eq. 15–16: in-expand both layers, new out-units from layer l+1.
        return torch.where(
            _mask(spec, maps, new_out=True).to(w.device),
            _fpi(upper, spec, maps),
            _fpi(w, spec, maps),
        )
    if method in ("copy", "copy-hf-init"):
        assert init is not None, "DirectCopy needs the new units' values"
        copied = _gather(w, spec, maps)
        assert init.shape == copied.shape, f"init {tuple(init.shape)} != {tuple(copied.shape)}"
        return torch.where(_mask(spec, maps, new_out=False).to(w.device), copied, init.to(w))
    raise LineageError(f"unknown growth method {method!r}; use one of {get_args(GrowthMethod)}")


# ---- whole state dicts -------------------------------------------------------------------


def _split_layers(sd: Mapping[str, Tensor], family: Family) -> tuple[StateDict, list[StateDict]]:
    """(parameters outside the blocks, per-block parameters keyed by their relative name)."""
    pattern = re.compile(rf"^{re.escape(family.layers_path)}\.(\d+)\.(.+)$")
    outside: StateDict = {}
    blocks: dict[int, StateDict] = {}
    unknown = []
    for name, tensor in sd.items():
        match = pattern.match(name)
        if match and match.group(2) in family.layer_params:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        elif not match and name in family.global_params:
            outside[name] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise LineageError(f"{family.name} growth has no template for: {', '.join(unknown[:5])}")
    if sorted(blocks) != list(range(len(blocks))):
        raise LineageError(f"{family.name} blocks are not numbered 0..n-1: {sorted(blocks)}")
    return outside, [blocks[i] for i in range(len(blocks))]


def _target_shape(spec: ParamSpec, source: Tensor, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(
        n if axis == FIXED else sizes[axis] for n, axis in zip(source.shape, spec.axes, strict=True)
    )


def check_growth(source: ModelShape, target: ModelShape) -> None:
    """Refuse a target the maps cannot reach from the source (LineageError says why)."""
    problems = []
    if target.vocab != source.vocab:
        problems.append(f"vocabulary differs ({source.vocab} -> {target.vocab})")
    if target.head_dim != source.head_dim:
        problems.append(f"head size must stay {source.head_dim}, got {target.head_dim}")
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn"):
        if getattr(target, name) < getattr(source, name):
            problems.append(f"{name} shrinks ({getattr(source, name)} -> {getattr(target, name)})")
    for shape in (source, target):
        if shape.heads % shape.kv_heads:
            problems.append(f"{shape.heads} heads do not split into {shape.kv_heads} kv groups")
    if not problems and target.group < source.group:
        problems.append(f"heads per kv group shrinks ({source.group} -> {target.group})")
    if problems:
        raise LineageError("cannot grow this way: " + "; ".join(problems))


def source_scale_init(name: str, w: Tensor, shape: tuple[int, ...], seed: int) -> Tensor:
    """DirectCopy's new units for parameter ``name``: [shape] drawn from N(mean(w), std(w)) of
    the source tensor ``w`` (a LayerNorm gain stays near its mean, a weight matrix gets its
    trained spread), float32 on the CPU, seeded by (seed, name) so each tensor draws its own."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    flat = w.detach().float().cpu().reshape(-1)
    std = float(flat.std()) if flat.numel() > 1 else 0.0
    return torch.randn(shape, generator=gen) * std + float(flat.mean())


def _random_init(family: Family, config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """The target architecture with its own initializer, seeded without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.model_class(config)


def grow_state_dict(
    source_sd: Mapping[str, Tensor],
    source_config: PretrainedConfig,
    target_config: PretrainedConfig,
    *,
    method: GrowthMethod,
    seed: int = 0,
    balanced: bool = True,
    init_state_dict: Mapping[str, Tensor] | None = None,
) -> tuple[StateDict, GrowthRecord]:
    """Grow a state dict to ``target_config``'s shape: width by ``method``, depth by Alg. 1.

    ``init_state_dict`` (DirectCopy only): the new units' values; by default ``copy`` draws them
    at the source's scale (``source_scale_init``) and ``copy-hf-init`` takes the target
    architecture's own init built from ``target_config`` with ``seed``. The source is not modified; every returned
    tensor is new (tied names get equal, separate tensors, as ``state_dict()`` lists them).
    """
    if method not in get_args(GrowthMethod):
        raise LineageError(f"unknown growth method {method!r}; use one of {get_args(GrowthMethod)}")
    family = family_of(source_config)
    if target_config.model_type != source_config.model_type or family != family_of(target_config):
        raise LineageError("source and target configs differ in family or embedding tying")
    src, tgt = shape_of(source_config), shape_of(target_config)
    check_growth(src, tgt)
    maps, summary = build_axis_maps(src, tgt, seed=seed, balanced=balanced)
    layers = depth_map(src.layers, tgt.layers)
    outside, blocks = _split_layers(source_sd, family)
    if len(blocks) != src.layers:
        raise LineageError(f"state dict has {len(blocks)} blocks, config says {src.layers}")
    if method == "copy-hf-init" and init_state_dict is None:
        init_state_dict = _random_init(family, target_config, seed).state_dict()
    sizes = axis_sizes(tgt)

    def grow(name: str, w: Tensor, spec: ParamSpec, upper: Tensor | None) -> Tensor:
        expected = _target_shape(spec, w, sizes)
        init = None if init_state_dict is None else init_state_dict[name]
        if method == "copy" and init is None:
            init = source_scale_init(name, w, expected, seed)
        u = expand_tensor(w, spec, maps, method=method, upper=upper, init=init)
        assert tuple(u.shape) == expected, f"{name}: grew to {tuple(u.shape)}, want {expected}"
        return u

    out: StateDict = {}
    for name, w in outside.items():
        out[name] = grow(name, w, family.global_params[name], None)
    for i, s in enumerate(layers):
        above = blocks[s + 1] if s + 1 < src.layers else None  # AKI: top layer uses itself
        for rel, w in blocks[s].items():
            name = f"{family.layers_path}.{i}.{rel}"
            upper = None if above is None else above[rel]
            out[name] = grow(name, w, family.layer_params[rel], upper)
    record = GrowthRecord(
        method=method,
        seed=seed,
        family=family.name,
        source_shape=src.to_dict(),
        target_shape=tgt.to_dict(),
        maps={**summary, "layers": layers},
        balanced=balanced,
    )
    return out, record


# ---- configs and models ------------------------------------------------------------------


def grown_config(
    source_config: PretrainedConfig,
    *,
    layers: int,
    hidden: int,
    heads: int | None = None,
    ffn: int | None = None,
    kv_heads: int | None = None,
) -> PretrainedConfig:
    """A copy of ``source_config`` resized for growth; the source is left unchanged.

    Defaults keep the head size (heads = hidden / head_dim), the query heads per key/value
    group (kv_heads = heads / group), and the FFN ratio (ffn = ffn_s · hidden / hidden_s).
    """
    family_of(source_config)
    src = shape_of(source_config)
    if heads is None:
        if hidden % src.head_dim:
            raise LineageError(f"hidden {hidden} is not a multiple of head size {src.head_dim}")
        heads = hidden // src.head_dim
    if kv_heads is None:
        if heads % src.group:
            raise LineageError(f"{heads} heads do not keep groups of {src.group}; pass kv_heads")
        kv_heads = heads // src.group
    if ffn is None:
        ffn = round(src.ffn * hidden / src.hidden)
    cfg = copy.deepcopy(source_config)
    cfg.num_hidden_layers = layers
    cfg.hidden_size = hidden
    cfg.num_attention_heads = heads
    if cfg.model_type == "llama":
        cfg.num_key_value_heads = kv_heads
        cfg.head_dim = src.head_dim  # set explicitly: Llama otherwise derives it from hidden
        cfg.intermediate_size = ffn
    elif kv_heads != heads:
        raise LineageError(f"{cfg.model_type} has no grouped-query attention (kv_heads={kv_heads})")
    elif cfg.model_type == "gpt2":
        cfg.n_inner = None if (source_config.n_inner is None and ffn == 4 * hidden) else ffn
    else:
        cfg.intermediate_size = ffn
    target = shape_of(cfg)
    if cfg.model_type != "llama" and target.heads * target.head_dim != target.hidden:
        raise LineageError(f"{heads} heads of size {src.head_dim} do not make hidden {hidden}")
    check_growth(src, target)
    return cfg


def grow_model(
    source: PreTrainedModel,
    *,
    layers: int,
    hidden: int,
    heads: int | None = None,
    ffn: int | None = None,
    kv_heads: int | None = None,
    method: GrowthMethod = "fpi",
    seed: int = 0,
    balanced: bool = True,
) -> tuple[PreTrainedModel, GrowthRecord]:
    """A new model of the grown shape initialised from ``source`` (same class, dtype, device,
    train/eval mode). The source is not modified."""
    cfg = grown_config(
        source.config, layers=layers, hidden=hidden, heads=heads, ffn=ffn, kv_heads=kv_heads
    )
    family = family_of(cfg)
    target = _random_init(family, cfg, seed)
    nn.Module.to(target, device=source.device, dtype=source.dtype)  # in place; typed call
    init = target.state_dict() if method == "copy-hf-init" else None
    sd, record = grow_state_dict(
        source.state_dict(),
        source.config,
        cfg,
        method=method,
        seed=seed,
        balanced=balanced,
        init_state_dict=init,
    )
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == expected, f"grown state dict does not fit {type(target).__name__}"
    target.load_state_dict(sd, strict=True)
    target.tie_weights()
    target.train(source.training)
    return target, record

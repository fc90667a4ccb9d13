"""Model shapes and families as plain data: no torch, so the CLI can show them instantly.

Families: ``roberta`` and ``bert`` (masked LM), ``gpt2`` and ``llama`` (causal LM). Shapes are
the paper's Table 5 (papers/001 App. B) plus tiny sizes that train on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lineage.errors import LineageError

FAMILIES: dict[str, str] = {"roberta": "mlm", "bert": "mlm", "gpt2": "clm", "llama": "clm"}


@dataclass(frozen=True)
class ModelShape:
    """Transformer size; ``kv_heads`` < ``heads`` gives grouped-query attention (llama only)."""

    layers: int  # number of transformer blocks
    hidden: int  # d_model
    heads: int  # attention heads (head size = hidden / heads)
    ffn: int  # feed-forward inner size
    kv_heads: int | None = None  # key/value heads, None = heads

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "ffn"):
            if getattr(self, name) < 1:
                raise LineageError(f"model shape: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise LineageError(
                f"model shape: hidden {self.hidden} is not divisible by heads {self.heads}"
            )
        if self.kv_heads is not None and (self.kv_heads < 1 or self.heads % self.kv_heads):
            raise LineageError(
                f"model shape: heads {self.heads} is not a multiple of kv_heads {self.kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


# Table 5 of papers/001: heads are 12 (16 for LARGE) and BASE_PLUS has d_FFN 3600, not the
# "d/64 heads, 4d FFN" rule of thumb (864/64 is not an integer).
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(layers=2, hidden=64, heads=2, ffn=256),
    "small": ModelShape(layers=4, hidden=128, heads=4, ffn=512),
    "medium-cpu": ModelShape(layers=6, hidden=192, heads=6, ffn=768),
    "MEDIUM": ModelShape(layers=9, hidden=576, heads=12, ffn=3072),
    "BASE": ModelShape(layers=12, hidden=768, heads=12, ffn=3072),
    "BASE_PLUS": ModelShape(layers=18, hidden=864, heads=12, ffn=3600),
    "LARGE": ModelShape(layers=24, hidden=1024, heads=16, ffn=4096),
}


def resolve_shape(shape: ModelShape | str) -> ModelShape:
    """A shape, or the name of a preset (case-sensitive, e.g. ``tiny`` or ``BASE``)."""
    if isinstance(shape, ModelShape):
        return shape
    if shape not in PRESETS:
        raise LineageError(f"unknown model size {shape!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[shape]


def objective_of_family(family: str) -> str:
    """'mlm' or 'clm'; LineageError listing the families for an unknown one."""
    if family not in FAMILIES:
        raise LineageError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


DEFAULT_BLOCK_SIZE = 128  # tokens per training/evaluation block (models need that many positions)

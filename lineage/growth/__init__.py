"""Stage 7, growth: bert2BERT (papers/004) — a larger model initialised from a smaller one.

Beside the KI flow (router → plan → cache → trainer), growth makes the student the trainer
starts from: index maps and per-family parameter templates (``maps``), width and depth
expansion of whole models (``expand``: FPI, AKI, DirectCopy, Alg. 1), and the two-stage
training helpers (``twostage``, Alg. 2). Imports only the foundation; nothing above it.

``lineage.growth.grow_model`` (and the rest of what the module ``lineage.growth`` offered
before it became this package) loads on first use, so importing the package stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lineage.growth.expand import (
        GrowthMethod,
        GrowthRecord,
        check_growth,
        expand_tensor,
        grow_model,
        grow_state_dict,
        grown_config,
        growth_warnings,
    )
    from lineage.growth.twostage import submodel_layers, trainable_layer_range, truncate_depth

_EXPORTS = {
    "GrowthMethod": "lineage.growth.expand",
    "GrowthRecord": "lineage.growth.expand",
    "check_growth": "lineage.growth.expand",
    "expand_tensor": "lineage.growth.expand",
    "grow_model": "lineage.growth.expand",
    "grow_state_dict": "lineage.growth.expand",
    "grown_config": "lineage.growth.expand",
    "growth_warnings": "lineage.growth.expand",
    "submodel_layers": "lineage.growth.twostage",
    "trainable_layer_range": "lineage.growth.twostage",
    "truncate_depth": "lineage.growth.twostage",
}
__all__ = [
    "GrowthMethod",
    "GrowthRecord",
    "check_growth",
    "expand_tensor",
    "grow_model",
    "grow_state_dict",
    "grown_config",
    "growth_warnings",
    "submodel_layers",
    "trainable_layer_range",
    "truncate_depth",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lineage.growth' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

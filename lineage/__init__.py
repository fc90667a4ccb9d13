"""lineage: continual domain adaptation and model lineage for pre-trained language models.

The public names load lazily, so ``import lineage`` (and the CLI's start) stays light until a
name that needs torch is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Workspace": "lineage.workspace",
    "LineageError": "lineage.errors",
    "ki_loss": "lineage.losses",
    "KILoss": "lineage.losses",
    "inheritance_rate": "lineage.schedules",
    "InheritanceSchedule": "lineage.schedules",
    "AutoInheritance": "lineage.schedules",
    "Router": "lineage.router",
    "TrainJob": "lineage.training",
    "run_training": "lineage.training",
    "TrainConfig": "lineage.trainer",
    "grow_model": "lineage.growth",
}
__all__ = [
    "AutoInheritance",
    "InheritanceSchedule",
    "KILoss",
    "LineageError",
    "Router",
    "TrainConfig",
    "TrainJob",
    "Workspace",
    "grow_model",
    "inheritance_rate",
    "ki_loss",
    "run_training",
]

if TYPE_CHECKING:
    from lineage.errors import LineageError
    from lineage.growth import grow_model
    from lineage.losses import KILoss, ki_loss
    from lineage.router import Router
    from lineage.schedules import AutoInheritance, InheritanceSchedule, inheritance_rate
    from lineage.trainer import TrainConfig
    from lineage.training import TrainJob, run_training
    from lineage.workspace import Workspace


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lineage' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value

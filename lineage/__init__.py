"""lineage: continual domain adaptation and model lineage for pre-trained language models.

The package is laid out by the stages of the flow, lowest first (a module imports only from
its own stage or lower ones; ``tests/test_layout.py`` holds the table and checks it):
foundation (``errors``, ``files``, ``config``, ``environment``) → ``registry`` →
``workspace`` → ``corpora`` → ``models`` → ``routing`` → ``inherit`` → ``growth`` → ``train``
→ ``continual`` → ``report`` → ``lifecycle``, ``demo``, ``cli``.

The public names load lazily, so ``import lineage`` (and the CLI's start) stays light until a
name that needs torch is used. Modules that moved into the stage subpackages keep their old
names for one release (``lineage.losses`` is ``lineage.inherit.losses``), with a
DeprecationWarning: see ``_MOVED``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from importlib import import_module
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Workspace": "lineage.workspace",
    "LineageError": "lineage.errors",
    "ki_loss": "lineage.inherit.losses",
    "KILoss": "lineage.inherit.losses",
    "inheritance_rate": "lineage.inherit.schedules",
    "InheritanceSchedule": "lineage.inherit.schedules",
    "AutoInheritance": "lineage.inherit.schedules",
    "Router": "lineage.routing.router",
    "TrainJob": "lineage.train.training",
    "run_training": "lineage.train.training",
    "TrainConfig": "lineage.train.trainer",
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

# Old module name -> its module now. Deprecated: the old names go away in the next release.
_MOVED = {
    "lineage.adaptation": "lineage.continual.adaptation",
    "lineage.adapters": "lineage.continual.adapters",
    "lineage.ancestry": "lineage.registry.ancestry",
    "lineage.blocks": "lineage.corpora.blocks",
    "lineage.cache": "lineage.inherit.cache",
    "lineage.checkpoints": "lineage.train.checkpoints",
    "lineage.compare": "lineage.report.compare",
    "lineage.data": "lineage.corpora.batches",
    "lineage.db": "lineage.registry.db",
    "lineage.domains": "lineage.corpora.domains",
    "lineage.entities": "lineage.registry.entities",
    "lineage.evaluation": "lineage.models.evaluation",
    "lineage.forgetting": "lineage.continual.forgetting",
    "lineage.graph": "lineage.registry.graph",
    "lineage.growth_maps": "lineage.growth.maps",
    "lineage.jobs": "lineage.train.runs",
    "lineage.losses": "lineage.inherit.losses",
    "lineage.modelcard": "lineage.registry.modelcard",
    "lineage.modelinfo": "lineage.registry.modelinfo",
    "lineage.modeling": "lineage.models.modeling",
    "lineage.plans": "lineage.inherit.plans",
    "lineage.plots": "lineage.report.plots",
    "lineage.profiles": "lineage.corpora.profiles",
    "lineage.router": "lineage.routing.router",
    "lineage.router_quality": "lineage.routing.quality",
    "lineage.schedules": "lineage.inherit.schedules",
    "lineage.schema": "lineage.registry.schema",
    "lineage.shapes": "lineage.models.shapes",
    "lineage.teachers": "lineage.inherit.teachers",
    "lineage.tokenizer": "lineage.corpora.tokenizer",
    "lineage.tracking": "lineage.train.tracking",
    "lineage.trainer": "lineage.train.trainer",
    "lineage.training": "lineage.train.training",
}

if TYPE_CHECKING:
    from lineage.errors import LineageError
    from lineage.growth import grow_model
    from lineage.inherit.losses import KILoss, ki_loss
    from lineage.inherit.schedules import AutoInheritance, InheritanceSchedule, inheritance_rate
    from lineage.routing.router import Router
    from lineage.train.trainer import TrainConfig
    from lineage.train.training import TrainJob, run_training
    from lineage.workspace import Workspace


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lineage' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module under its old name: the same module object, registered under
    both names, and a DeprecationWarning that names the new one."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        new = _MOVED[spec.name]
        warnings.warn(
            f"{spec.name} has moved to {new}; the old name goes away in the next release",
            DeprecationWarning,
            stacklevel=2,  # the importing line (the warnings module skips importlib's frames)
        )
        module = import_module(new)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the old name's
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # type: ignore[union-attr]


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())

"""bert2BERT's two-stage training (papers/004 Alg. 2): first train sub-models of depth l_b,
2·l_b, … updating only their top l_b layers and a shared head, then the full model.

Pure helpers except `truncate_depth`, which temporarily swaps a model's block list; the
training loop (``lineage.train.loop``) uses them when ``TrainConfig.two_stage_layers`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from lineage.errors import LineageError
from lineage.growth.maps import family_of


def submodel_layers(total_layers: int, l_b: int) -> list[int]:
    """Depths of the Alg. 2 sub-models: l_b, 2·l_b, …, ending at ``total_layers`` itself."""
    if not 1 <= l_b <= total_layers:
        raise LineageError(f"l_b must be in 1..{total_layers}, got {l_b}")
    depths = list(range(l_b, total_layers + 1, l_b))
    return depths if depths[-1] == total_layers else [*depths, total_layers]


def trainable_layer_range(depth: int, l_b: int) -> range:
    """Layers a sub-model of ``depth`` updates in Alg. 2: its top ``l_b`` (fewer if shallower)."""
    if depth < 1 or l_b < 1:
        raise LineageError(f"depth and l_b must be positive, got {depth}, {l_b}")
    return range(max(depth - l_b, 0), depth)


@contextmanager
def truncate_depth(model: PreTrainedModel, depth: int) -> Iterator[PreTrainedModel]:
    """Within the block, ``model`` runs only its bottom ``depth`` layers and its shared head.

    No weights are copied: the block list is swapped for a shorter list of the same modules
    (so ``model.parameters()`` lists only those layers meanwhile) and restored on exit.
    """
    family = family_of(model.config)
    parent_path, attr = family.layers_path.rsplit(".", 1)
    parent = model.get_submodule(parent_path)
    full = getattr(parent, attr)
    if not 1 <= depth <= len(full):
        raise LineageError(f"depth must be in 1..{len(full)}, got {depth}")
    configs: dict[int, PretrainedConfig] = {}
    for module in model.modules():  # submodules may hold their own config object
        cfg = getattr(module, "config", None)
        if isinstance(cfg, PretrainedConfig):
            configs[id(cfg)] = cfg
    saved = {key: cfg.num_hidden_layers for key, cfg in configs.items()}
    setattr(parent, attr, nn.ModuleList(list(full)[:depth]))
    for cfg in configs.values():
        cfg.num_hidden_layers = depth  # Llama's forward slices its layers by this
    try:
        yield model
    finally:
        setattr(parent, attr, full)
        for key, cfg in configs.items():
            cfg.num_hidden_layers = saved[key]

"""Two-stage training (papers/004 Alg. 2) in the training loop: sub-models of depth l_b, 2·l_b,
… update only their top l_b layers and the shared head; then the full model trains; the depth
drawn at each step survives a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from lineage.corpora.batches import BlockShard, MixtureSampler
from lineage.corpora.tokenizer import TokenizerInfo
from lineage.errors import LineageError
from lineage.growth.twostage import trainable_layer_range
from lineage.models.modeling import ModelShape, build_config
from lineage.train.tracking import NullTracker
from lineage.train.trainer import TrainConfig, stage_one_frozen, train

INFO = TokenizerInfo(vocab_size=300, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))
BLOCKS = np.random.default_rng(0).integers(5, 300, size=(24, 16), dtype=np.uint16)
LAYERS, L_B = 5, 2  # sub-models of 2, 4 and 5 layers


def model(family: str = "roberta", layers: int = LAYERS, seed: int = 0) -> PreTrainedModel:
    config = build_config(family, ModelShape(layers, 32, 2, 64), 300, 16)
    auto = AutoModelForMaskedLM if family in ("roberta", "bert") else AutoModelForCausalLM
    torch.manual_seed(seed)
    return auto.from_config(config)


def run(lm: PreTrainedModel, tmp: Path, **kw: Any) -> NullTracker:
    tracker = NullTracker()
    cfg = {
        "steps": 8,
        "batch_size": 4,
        "lr": 1e-3,
        "eval_every": 0,
        "checkpoint_every": 0,
        "log_every": 1,
        "two_stage_layers": L_B,
        "two_stage_fraction": 0.75,
    }
    train(
        lm,
        config=TrainConfig(**(cfg | kw.pop("config", {}))),
        sampler=MixtureSampler([BlockShard("a", BLOCKS, "mlm", INFO)], batch_size=4, seed=0),
        eval_sets={},
        objective="mlm",
        out_dir=tmp / "out",
        checkpoint_dir=tmp / "ckpt",
        tracker=tracker,
        progress=False,
        tokenizer=None,
        **kw,
    )
    return tracker


def snapshot(lm: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    names = [k for k in before if k.startswith(prefix)]
    assert names, prefix
    return any(not torch.equal(before[k], after[k]) for k in names)


def test_config_is_validated() -> None:
    with pytest.raises(LineageError, match="two_stage"):
        TrainConfig(two_stage_layers=-1)
    with pytest.raises(LineageError, match="two_stage"):
        TrainConfig(two_stage_layers=2, two_stage_fraction=1.5)


def test_l_b_deeper_than_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LineageError, match=r"l_b must be in 1\.\.5"):
        run(model(), tmp_path, config={"two_stage_layers": 6})


@pytest.mark.parametrize(
    ("family", "frozen_outside", "trained_outside"),
    [
        # tied word embeddings are the MLM head's decoder: they train with the head
        (
            "roberta",
            {"roberta.embeddings.position_embeddings.weight", "roberta.embeddings.LayerNorm.bias"},
            {"roberta.embeddings.word_embeddings.weight", "lm_head.dense.weight"},
        ),
        ("gpt2", {"transformer.wpe.weight"}, {"transformer.wte.weight", "transformer.ln_f.weight"}),
        ("llama", {"model.embed_tokens.weight"}, {"lm_head.weight", "model.norm.weight"}),
    ],
)
def test_stage_one_freezes_blocks_outside_the_top_l_b_and_the_input_side(
    family: str, frozen_outside: set[str], trained_outside: set[str]
) -> None:
    lm = model(family)
    names = {id(p): n for n, p in lm.named_parameters()}
    layers = {"roberta": "roberta.encoder.layer", "gpt2": "transformer.h", "llama": "model.layers"}
    for depth in (2, 4, 5):
        frozen = {names[id(p)] for p in stage_one_frozen(lm, depth, L_B)}
        assert frozen_outside <= frozen and not trained_outside & frozen
        for i in range(LAYERS):
            in_layer = {n for n in names.values() if n.startswith(f"{layers[family]}.{i}.")}
            trains = i in trainable_layer_range(depth, L_B)
            assert (in_layer & frozen) == (set() if trains else in_layer), (depth, i)


def test_stage_one_updates_only_the_sampled_sub_models_top_layers(tmp_path: Path) -> None:
    lm = model()
    states = [snapshot(lm)]
    tracker = run(lm, tmp_path, on_step=lambda step: states.append(snapshot(lm)))
    depths = dict(tracker.history("submodel_depth"))  # step -> depth of the step ending there
    assert sorted(depths) == [1, 2, 3, 4, 5, 6]  # 0.75 of 8 steps, then the full model
    assert set(depths.values()) <= {2, 4, 5} and len(set(depths.values())) > 1
    for step, depth in depths.items():
        before, after = states[step - 1], states[step]
        top = trainable_layer_range(int(depth), L_B)
        for i in range(LAYERS):
            assert changed(before, after, f"roberta.encoder.layer.{i}.") == (i in top), (step, i)
        assert not changed(before, after, "roberta.embeddings.position_embeddings")
        assert changed(before, after, "lm_head.dense") and changed(before, after, "lm_head.bias")
        assert changed(before, after, "roberta.embeddings.word_embeddings")  # tied decoder
    for step in (7, 8):  # stage two: everything trains
        for i in range(LAYERS):
            assert changed(states[step - 1], states[step], f"roberta.encoder.layer.{i}.")
        assert changed(states[step - 1], states[step], "roberta.embeddings.position_embeddings")


def test_without_the_first_stage_it_is_plain_training(tmp_path: Path) -> None:
    plain, staged = model(), model()
    run(plain, tmp_path / "a", config={"steps": 3, "two_stage_layers": 0})
    run(staged, tmp_path / "b", config={"steps": 3, "two_stage_fraction": 0.0})
    for (name, a), b in zip(plain.state_dict().items(), staged.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_in_the_first_stage_reaches_the_same_weights(tmp_path: Path) -> None:
    cfg = {"checkpoint_every": 2, "keep_checkpoints": 1}
    reference = model()
    expected = run(reference, tmp_path / "ref", config=cfg).history("submodel_depth")

    def crash(step: int) -> None:
        if step == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        run(model(), tmp_path / "b", config=cfg, on_step=crash)
    resumed = model(seed=99)  # the weights come from the checkpoint at step 2
    tracker = run(resumed, tmp_path / "b", config=cfg, resume=True)
    assert tracker.history("submodel_depth") == [d for d in expected if d[0] > 2]
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

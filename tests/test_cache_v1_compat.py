"""Caches written in format 1 by the code before format 2, and in format 2 by codec 1 before
codec 2 (tests/data, see its README), still open, verify, decode as they did, serve any K up
to theirs, and train through the real trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from lineage.corpora.batches import IGNORE_INDEX, MixtureSampler, causal_targets
from lineage.errors import LineageError
from lineage.inherit.cache import CacheMeta, open_cache
from lineage.inherit.schedules import InheritanceSchedule
from lineage.models.modeling import build_config
from lineage.train.tracking import NullTracker
from lineage.train.trainer import TrainConfig, train

DATA = Path(__file__).parent / "data"
BLOCKS = np.load(DATA / "v1-cache-blocks.npy")  # [6, 16], vocabulary 300


def raw(objective: str, name: str) -> np.ndarray:
    return np.load(DATA / f"v1-cache-{objective}" / "part-00000" / f"{name}.npy")


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_v1_cache_opens_verified_and_serves_its_rows(objective: str) -> None:
    cache = open_cache(DATA / f"v1-cache-{objective}", expect=CacheMeta(top_k=10), verify=True)
    assert cache.format_version == 1 and cache.manifest.codec is None and cache.decoder is None
    batch = cache.shard("fixture", "v1-teacher").batch(range(6))
    indices, logits = batch.teacher_topk()
    assert torch.equal(indices, torch.from_numpy(raw(objective, "topk_indices").astype(np.int64)))
    assert torch.equal(logits, torch.from_numpy(raw(objective, "topk_logits").astype(np.float32)))
    target = batch.labels != IGNORE_INDEX
    assert torch.equal(
        batch.labels[target], torch.from_numpy(raw(objective, "labels").astype(np.int64))
    )
    if objective == "clm":
        assert torch.equal(batch.input_ids, torch.from_numpy(BLOCKS.astype(np.int64)))
        assert torch.equal(batch.labels, causal_targets(batch.input_ids))
    small = cache.shard("fixture", top_k=4).batch([5, 1]).teacher_topk()
    rows = np.load(DATA / f"v1-cache-{objective}" / "part-00000" / "offsets.npy")
    want = np.concatenate(
        [raw(objective, "topk_indices")[rows[b] : rows[b + 1], :4] for b in (5, 1)]
    )
    assert torch.equal(small[0], torch.from_numpy(want.astype(np.int64)))


def test_v1_cache_still_refuses_a_flipped_byte(tmp_path: Path) -> None:
    copy = shutil.copytree(DATA / "v1-cache-clm", tmp_path / "c")
    file = copy / "part-00000" / "topk_logits.npy"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10
    file.write_bytes(bytes(data))
    with pytest.raises(LineageError, match=r"topk_logits\.npy: sha256 differs"):
        open_cache(copy)
    manifest = json.loads((DATA / "v1-cache-clm" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "codec" not in manifest


@pytest.mark.parametrize(("objective", "family"), [("clm", "gpt2"), ("mlm", "roberta")])
def test_student_trains_from_a_v1_cache(tmp_path: Path, objective: str, family: str) -> None:
    shard = open_cache(DATA / f"v1-cache-{objective}").shard("fixture", "v1-teacher")
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    torch.manual_seed(0)
    student = auto.from_config(build_config(family, "tiny", 300, 16))
    tracker = NullTracker()
    config = TrainConfig(
        steps=4, batch_size=3, lr=3e-3, eval_every=2, eval_blocks=4, checkpoint_every=0,
        log_every=1,
    )  # fmt: skip
    result = train(
        student, config=config, sampler=MixtureSampler([shard], batch_size=3, seed=0),
        eval_sets={"fixture": BLOCKS[:4]} if objective == "clm" else {}, objective=objective, out_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt", tracker=tracker, progress=False,
        schedules={"v1-teacher": InheritanceSchedule(kind="constant", constant=0.5, total_steps=1)},
    )  # fmt: skip
    assert result.step == 4
    for (_, total), (_, ce), (_, kl) in zip(
        tracker.history("loss"),
        tracker.history("loss_self"),
        tracker.history("loss_ki/v1-teacher"),
        strict=True,
    ):
        assert kl > 0 and total == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-5)


V2 = DATA / "v2-cache-clm"


def test_codec_1_cache_decodes_as_it_did_when_written() -> None:
    cache = open_cache(V2, expect=CacheMeta(top_k=10), verify=True)
    assert cache.format_version == 2 and cache.manifest.codec is not None
    assert cache.manifest.codec["name"] == "topk-classes" and "version" not in cache.manifest.codec
    assert cache.decoder is not None and not cache.decoder.spec.sorts_ties
    indices, logits = cache.shard("fixture").batch(range(6)).teacher_topk()
    want_i = np.load(DATA / "v2-cache-clm-decoded-indices.npy").astype(np.int64)
    assert torch.equal(indices, torch.from_numpy(want_i))
    assert torch.equal(logits, torch.from_numpy(np.load(DATA / "v2-cache-clm-decoded-logits.npy")))
    tied = logits[:, 1:] == logits[:, :-1]
    assert bool(tied.any())  # ties in teacher order: decoding them as codec 2 would differ
    small = cache.shard("fixture", top_k=4).batch([5, 1]).teacher_topk()[0]
    assert torch.equal(small, cache.shard("fixture").batch([5, 1]).teacher_topk()[0][:, :4])


def test_student_trains_from_a_codec_1_cache(tmp_path: Path) -> None:
    shard = open_cache(V2).shard("fixture", "v2-teacher")
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(build_config("gpt2", "tiny", 300, 16))
    tracker = NullTracker()
    config = TrainConfig(
        steps=3, batch_size=3, lr=3e-3, eval_every=3, eval_blocks=4, checkpoint_every=0,
        log_every=1,
    )  # fmt: skip
    result = train(
        student, config=config, sampler=MixtureSampler([shard], batch_size=3, seed=0),
        eval_sets={"fixture": BLOCKS[:4]}, objective="clm", out_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt", tracker=tracker, progress=False,
        schedules={"v2-teacher": InheritanceSchedule(kind="constant", constant=0.5, total_steps=1)},
    )  # fmt: skip
    assert result.step == 3
    assert all(kl > 0 for _, kl in tracker.history("loss_ki/v2-teacher"))

"""Atomic directories, checkpoint round trips, corruption detection, retention."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lineage.errors import LineageError
from lineage.train.checkpoints import (
    TrainingState,
    atomic_dir,
    checkpoint_run_id,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_partial,
    save_checkpoint,
)


class Tied(nn.Module):
    """Embedding and output projection share one matrix (as in BERT/GPT-2)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 20)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))


def trained(seed: int) -> tuple[Tied, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.arange(10)).logsumexp(-1).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def save(root: Path, step: int, keep: int | None = None) -> Path:
    model, opt, sched = trained(step)
    state = TrainingState(step=step, sampler={"index": step}, run_id=f"run{step}")
    return save_checkpoint(root, state, model=model, optimizer=opt, scheduler=sched, keep=keep)


def test_atomic_dir(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []  # nothing visible, temp removed
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(LineageError, match="already exists"), atomic_dir(target):
        pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    model, opt, sched = trained(0)
    state = TrainingState(
        step=3,
        sampler={"index": 7, "shards": {"a": {"epoch": 1}}},
        schedules={"t": {"stopped_at": None}},
        run_id="abc",
        extra={"history": [{"step": 0.0, "ppl/a": 12.5}]},
    )
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, state, model=model, optimizer=opt, scheduler=sched)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    fresh, fresh_opt, fresh_sched = trained(1)
    fresh_sched.step()
    loaded = load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh.out.weight is fresh.emb.weight  # still tied after loading
    assert fresh_sched.state_dict() == sched.state_dict()
    s1, s2 = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) for k in s1)
    assert (loaded.step, loaded.sampler, loaded.schedules) == (3, state.sampler, state.schedules)
    assert (loaded.run_id, loaded.extra) == ("abc", state.extra)


def test_corruption_is_named(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    weights = path / "model.safetensors"
    good = weights.read_bytes()
    data = bytearray(good)
    data[-3] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    model, opt, sched = trained(0)
    with pytest.raises(LineageError, match=r"model\.safetensors is corrupted"):
        load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    weights.write_bytes(good)
    load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    optimizer_file = path / "optimizer.pt"
    good = optimizer_file.read_bytes()
    optimizer_file.write_bytes(good[:-10])
    with pytest.raises(LineageError, match=r"optimizer\.pt is truncated"):
        load_checkpoint(path, model=model)
    optimizer_file.write_bytes(good)
    (path / "rng.pt").unlink()
    with pytest.raises(LineageError, match=r"rng\.pt is missing"):
        load_checkpoint(path, model=model)


def test_latest_skips_bad_and_incomplete_checkpoints(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None and checkpoint_run_id(tmp_path) is None
    save(tmp_path, 2)
    newest = save(tmp_path, 4)
    (tmp_path / "step-00000006").mkdir()  # crashed mid-write: no manifest
    (tmp_path / ".step-00000008.tmp-1234").mkdir()
    assert latest_checkpoint(tmp_path) == newest
    assert checkpoint_run_id(tmp_path) == "run4"
    (newest / "state.json").write_text("{}")  # corrupted later
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000002"
    (tmp_path / "step-00000002" / "scheduler.pt").write_bytes(b"")
    with pytest.raises(LineageError, match="no valid checkpoint"):
        latest_checkpoint(tmp_path)
    assert remove_partial(tmp_path) == [tmp_path / ".step-00000008.tmp-1234"]
    assert not (tmp_path / ".step-00000008.tmp-1234").exists() and newest.is_dir()


def test_keep_last_n(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_checkpoint_lists_files_in_sub_folders_and_verifies_them(tmp_path: Path) -> None:
    """Sharded state (FSDP) lives in sub-folders; the manifest covers it like the rest."""
    path = save(tmp_path, 1)
    manifest = (path / "manifest.json").read_text()
    assert '"rng.pt"' in manifest and '"state.json"' in manifest
    state = load_checkpoint(path, model=Tied())
    assert state.step == 1
    shard = path / "pytorch_model_fsdp_0" / "__0_0.distcp"
    shard.parent.mkdir()
    shard.write_bytes(b"x")
    from lineage.train.checkpoints import _write_manifest, verify_checkpoint

    _write_manifest(path, 1)
    assert "pytorch_model_fsdp_0/__0_0.distcp" in verify_checkpoint(path)["files"]
    shard.write_bytes(b"y")
    with pytest.raises(LineageError, match="corrupted"):
        verify_checkpoint(path)


def test_model_must_fit(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    with pytest.raises(LineageError, match="does not fit"):
        load_checkpoint(path, model=nn.Linear(3, 3))

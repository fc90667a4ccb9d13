"""Atomic directory writes and training checkpoints that resume exactly.

A checkpoint is a directory ``step-00000120/`` under the run's checkpoint folder:

    model.safetensors   the student's weights (tied tensors stored once)
    optimizer.pt        optimizer state (tensors and numbers only: loads with weights_only)
    scheduler.pt        learning-rate scheduler state
    rng.pt              torch CPU and CUDA generator states (rank 0; rank r: rng-<r>.pt)
    state.json          step, sampler and schedule states, python/numpy RNG, run id, extras
    manifest.json       sha256 and size of every file (sub-folders included), written last

Under several processes every rank calls :func:`save_checkpoint` and :func:`load_checkpoint`
with the run's Accelerator. DDP ranks hold the same weights, so the main process writes them
and each rank adds its own RNG state. With sharded state (FSDP, DeepSpeed) the weights and
optimizer go through ``accelerator.save_state`` instead — every rank writes its shards (FSDP:
``torch.distributed.checkpoint`` files) and its RNG states — beside the same scheduler, state
and manifest files.

It is written into a hidden temporary directory (shared by the ranks) and renamed into place by
the main process once every rank has written its part, so a crash (even ``kill -9``) leaves
either the whole checkpoint or none; the manifest is verified on load so a file truncated or
corrupted later is reported by name instead of being half-loaded.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from lineage.distributed import barrier, broadcast
from lineage.errors import LineageError
from lineage.files import atomic_dir as atomic_dir  # re-exported: callers write models with it
from lineage.files import publish_dir, sha256_file, temp_dir_beside
from lineage.train.parallel import is_sharded

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainingState:
    """Everything besides tensors-with-parameters that a resumed run needs (JSON-serialisable)."""

    step: int  # optimizer steps completed
    sampler: dict[str, Any]  # MixtureSampler.state_dict()
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)  # per teacher
    rng: dict[str, Any] = field(default_factory=dict)  # python and numpy states (capture_rng)
    run_id: str | None = None  # the MLflow run to continue
    extra: dict[str, Any] = field(default_factory=dict)  # eval history, tokens seen, ...


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON-able python/numpy states, tensor states for torch CPU and CUDA generators)."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = cast(tuple[Any, ...], np.random.get_state())
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return plain, tensors


def restore_rng(plain: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only where CUDA is present)."""
    if "python" in plain:
        version, state, gauss = plain["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in plain:
        kind, keys, pos, has_gauss, cached = plain["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories (those with a manifest), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(
    root: Path,
    state: TrainingState,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Any,
    scheduler: Any,
    keep: int | None = None,
    accelerator: Any = None,
) -> Path:
    """Write ``root/step-<state.step>/`` atomically, then delete all but the newest ``keep``.

    ``model`` is the unwrapped module (no DDP/compile wrapper: parameter names must match the
    module the checkpoint is loaded into). ``accelerator``: the run's, when several processes
    write the checkpoint together (every rank calls this). Returns the checkpoint directory.
    """
    final = step_dir(root, state.step)
    rank = accelerator.process_index if accelerator is not None else 0
    main = rank == 0
    sharded = accelerator is not None and is_sharded(accelerator)
    tmp = Path(broadcast(str(temp_dir_beside(final)) if main else ""))
    if main:
        tmp.mkdir()
    barrier()
    try:
        plain_rng, tensor_rng = capture_rng()
        if sharded:
            accelerator.save_state(str(tmp))  # every rank: its shards and its RNG states
        else:
            torch.save(tensor_rng, tmp / _rng_file(rank))
        if main:
            if not sharded:
                save_safetensors_model(model, str(tmp / "model.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            world = accelerator.num_processes if accelerator is not None else 1
            _write_state(tmp, state, plain_rng, {"world_size": world, "sharded": sharded})
            torch.save(
                scheduler.state_dict() if scheduler is not None else {}, tmp / "scheduler.pt"
            )
        barrier()  # every rank's files are in place
        if main:
            _write_manifest(tmp, state.step)
            publish_dir(tmp, final)
            if keep is not None and keep > 0:
                for old in list_checkpoints(root)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        barrier()
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-{rank}.pt"


def _write_state(
    tmp: Path, state: TrainingState, plain_rng: dict[str, Any], layout: dict[str, Any]
) -> None:
    payload = {
        "format": FORMAT_VERSION,
        "step": state.step,
        "sampler": state.sampler,
        "schedules": state.schedules,
        "rng": {**state.rng, **plain_rng},
        "run_id": state.run_id,
        "extra": state.extra,
        **layout,
    }
    (tmp / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")


def _write_manifest(tmp: Path, step: int) -> None:
    files = {
        p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest.

    Raises LineageError naming the missing, truncated or corrupted file.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError as exc:
        raise LineageError(f"checkpoint {path} is incomplete: no {MANIFEST}") from exc
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise LineageError(f"checkpoint manifest {manifest_path} is corrupted ({exc})") from exc
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise LineageError(f"checkpoint file {file} is missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise LineageError(
                f"checkpoint file {file} is truncated or altered: {size} bytes, "
                f"manifest says {meta['bytes']}"
            )
        if sha256_file(file) != meta["sha256"]:
            raise LineageError(f"checkpoint file {file} is corrupted: sha256 mismatch")
    return manifest


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Any | None = None,
    scheduler: Any = None,
    restore_rng_states: bool = True,
    verified: bool = False,
    accelerator: Any = None,
) -> TrainingState:
    """Verify ``path``, load weights/optimizer/scheduler in place, restore RNGs; return the rest.

    ``model`` is the unwrapped module; load before wrapping for DDP (or into the unwrapped one).
    ``verified``: the caller has just checked the checksums (``latest_checkpoint`` does), so
    every file is not hashed twice. ``accelerator``: the run's, when several processes resume
    together (every rank calls this; sharded state loads through ``accelerator.load_state``).
    """
    path = Path(path)
    if not verified:
        verify_checkpoint(path)
    payload = json.loads((path / "state.json").read_text(encoding="utf-8"))
    rank = accelerator.process_index if accelerator is not None else 0
    sharded = bool(payload.get("sharded", False))
    if sharded != (accelerator is not None and is_sharded(accelerator)):
        saved = "sharded (FSDP/DeepSpeed)" if sharded else "replicated (one process or DDP)"
        raise LineageError(
            f"checkpoint {path} holds {saved} training state: resume it the way it was launched"
        )
    if sharded:
        accelerator.load_state(str(path))  # weights, optimizer, every rank's RNG states
    else:
        _load_replicated(path, model, optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    world = accelerator.num_processes if accelerator is not None else 1
    if payload.get("world_size", 1) != world:
        log.warning(
            "checkpoint %s was written by %s processes, resuming on %s: the run continues, "
            "but not bit for bit as it would have",
            path,
            payload.get("world_size", 1),
            world,
        )
    if restore_rng_states and not sharded:
        own = path / _rng_file(rank)
        tensors = torch.load(own if own.is_file() else path / "rng.pt", weights_only=True)
        restore_rng(payload["rng"], tensors)
    return TrainingState(
        step=int(payload["step"]),
        sampler=payload["sampler"],
        schedules=payload["schedules"],
        rng=payload["rng"],
        run_id=payload["run_id"],
        extra=payload["extra"],
    )


def _load_replicated(path: Path, model: torch.nn.Module, optimizer: Any) -> None:
    missing, unexpected = load_safetensors_model(
        model, str(path / "model.safetensors"), strict=False
    )
    if missing or unexpected:
        raise LineageError(
            f"checkpoint {path} does not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


def remove_partial(root: Path) -> list[Path]:
    """Delete the temporary folders of checkpoints that a killed run left half-written (they
    are never read: a checkpoint exists only once renamed into place); returns them."""
    root = Path(root)
    partial = sorted(root.glob(".step-*.tmp-*")) if root.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupted newer ones are skipped with a warning.

    Raises LineageError if checkpoints exist but none verifies (naming the newest bad file).
    """
    candidates = list_checkpoints(root)
    first_error: LineageError | None = None
    for path in reversed(candidates):
        try:
            verify_checkpoint(path)
            return path
        except LineageError as exc:
            log.warning("skipping checkpoint: %s", exc)
            first_error = first_error or exc
    if first_error is not None:
        raise LineageError(f"no valid checkpoint in {root}: {first_error}") from first_error
    return None


def checkpoint_run_id(root: Path) -> str | None:
    """The MLflow run id recorded in the newest checkpoint (to resume the same run), if any."""
    for path in reversed(list_checkpoints(root)):
        try:
            return json.loads((path / "state.json").read_text(encoding="utf-8")).get("run_id")
        except (OSError, json.JSONDecodeError):
            continue
    return None

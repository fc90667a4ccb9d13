"""Run by tests/test_scaling.py on two processes (torchrun, or accelerate launch with FSDP).

scaling_child.py grads OUT CACHES BATCH   every rank saves each case's step gradients
scaling_child.py resume OUT               train 6 steps; crash at 4 and resume; every rank
                                          writes the digests of both final models
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

import scaling_cases as sc  # noqa: E402

from lineage.distributed import process_state  # noqa: E402


def grads(out: Path, caches_root: Path, batch: int) -> None:
    caches = {o: caches_root / f"cache-{o}" for o in sc.FAMILY}
    rank = process_state().process_index
    for case in sc.CASES:
        gradients, targets = sc.step_gradients(case, caches, batch, 1)
        torch.save({"grads": gradients, "targets": targets}, out / f"{case}-rank{rank}.pt")
    (out / f"failure-rank{rank}.txt").write_text(sc.failing_step())
    (out / f"on-main-rank{rank}.json").write_text(json.dumps(sc.shared_from_main()))


def resume(out: Path) -> None:
    straight = sc.train_digest(out / "straight")
    crashed = sc.train_digest(out / "resumed", crash_at=4)
    resumed = sc.train_digest(out / "resumed", resume=True)
    rank = process_state().process_index
    payload = {"straight": straight, "crashed": crashed, "resumed": resumed}
    (out / f"resume-rank{rank}.json").write_text(json.dumps(payload))


if __name__ == "__main__":
    if sys.argv[1] == "grads":
        grads(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        resume(Path(sys.argv[2]))

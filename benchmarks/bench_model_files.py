"""What checksumming a model's weights costs: sha256 at registration (``model_files``), the
cheap check before each use (``check_model_files``: stat, size and mtime against the record),
and the full re-hash of ``lineage model verify``, on a weights file of ``--mb`` megabytes.

    python benchmarks/bench_model_files.py [--mb 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from lineage.registry.entities import Model
from lineage.registry.modelfiles import check_model_files, model_files, verify_files


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text('{"model_type": "gpt2"}')
        (folder / "model.safetensors").write_bytes(os.urandom(args.mb * 1_000_000))
        files = model_files(folder)  # warm the page cache: the file was just written anyway
        model = Model(
            1,
            "m",
            str(folder),
            "gpt2",
            "clm",
            1,
            1,
            1,
            1,
            1,
            1,
            None,
            [],
            "",
            datetime.now(UTC),
            files,
        )
        hash_s = _best(lambda: model_files(folder), args.repeats)
        check_s = _best(lambda: check_model_files(model, "teacher"), args.repeats * 100)
        verify_s = _best(lambda: verify_files(folder, files, full=True), args.repeats)
    print(f"weights file: {args.mb} MB (page cache warm), best of {args.repeats}")
    print(f"register (sha256 of all files): {hash_s * 1000:8.1f} ms  ({args.mb / hash_s:.0f} MB/s)")
    print(
        f"use (stat, size + mtime check): {check_s * 1000:8.3f} ms  ({hash_s / check_s:,.0f}x less)"
    )
    print(f"model verify (full re-hash):    {verify_s * 1000:8.1f} ms")


if __name__ == "__main__":
    main()

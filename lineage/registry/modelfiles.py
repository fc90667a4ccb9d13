"""A registered model's files (config and weights) checksummed at registration, checked on use.

Hashing is paid once, when a model is registered (sha256 streams at a few hundred MB/s: see
``benchmarks/bench_model_files.py``). Before a model is used as a base or a teacher, each recorded
file's size and mtime are compared with the record, and only a file whose stat changed is hashed
again; ``lineage model verify`` hashes every file. A changed byte is refused with one line naming
the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lineage.errors import LineageError
from lineage.files import sha256_file
from lineage.registry.entities import Model

CONFIG_FILES = ("config.json", "adapter_config.json")  # a model's or a PEFT adapter's config


def tracked_files(model_dir: Path) -> list[Path]:
    """The files a model's behaviour depends on: its configuration and safetensors weights."""
    model_dir = Path(model_dir)
    configs = [model_dir / name for name in CONFIG_FILES if (model_dir / name).is_file()]
    return configs + sorted(model_dir.glob("*.safetensors"))


def model_files(model_dir: Path) -> dict[str, dict[str, Any]]:
    """File name -> {sha256, size, mtime_ns}: what the registry records at registration."""
    out: dict[str, dict[str, Any]] = {}
    for path in tracked_files(model_dir):
        stat = path.stat()
        out[path.name] = {
            "sha256": sha256_file(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    return out


def verify_files(model_dir: Path, recorded: dict[str, Any], *, full: bool) -> list[str]:
    """Lines ``path: what is wrong`` (empty when the files are as registered). Without ``full``
    a file is hashed again only when its size or mtime differs from the record."""
    model_dir = Path(model_dir)
    problems = []
    for name, rec in sorted(recorded.items()):
        path = model_dir / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if stat.st_size != rec["size"]:
            problems.append(f"{path}: {stat.st_size} bytes, {rec['size']} when registered")
        elif (full or stat.st_mtime_ns != rec["mtime_ns"]) and sha256_file(path) != rec["sha256"]:
            problems.append(f"{path}: sha256 differs from the one recorded at registration")
    problems += [
        f"{path}: not there when the model was registered"
        for path in tracked_files(model_dir)
        if path.name not in recorded
    ]
    return problems


def check_model_files(model: Model, role: str) -> None:
    """Refuse a model whose config or weights changed since registration (cheap stat check;
    models registered before checksums were recorded pass unchecked)."""
    if model.files is None:
        return
    problems = verify_files(Path(model.path), model.files, full=False)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LineageError(
            f"{role} {model.name!r} changed since it was registered: {problems[0]}{more}; "
            f"see `lineage model verify {model.name}`"
        )

"""The environment lineage runs in: package versions against the lock, devices, and what a bug
report needs (`lineage doctor`).

`requirements.lock` pins every package at the version the tests passed with. An installed
environment that differs from it is named here, package by package, instead of surfacing as a
strange failure deep inside transformers or PEFT.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

LOCK_FILE = "requirements.lock"
LOCK_ENV_VAR = "LINEAGE_LOCK"
# The packages whose versions decide whether lineage works; doctor prints these.
KEY_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "mlflow",
    "sqlalchemy",
    "alembic",
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass(frozen=True)
class Drift:
    """One locked package whose installed version differs (``installed`` None: missing)."""

    package: str
    locked: str
    installed: str | None

    def __str__(self) -> str:
        found = self.installed or "not installed"
        return f"{self.package}: locked {self.locked}, installed {found}"


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_', '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalised package name: exact version} of a pip-format lock (``name==version`` lines)."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def lock_drift(lock: dict[str, str]) -> list[Drift]:
    """Every locked package that is missing or at another version than locked."""
    drift = []
    for package, locked in sorted(lock.items()):
        installed = installed_version(package)
        if installed is None or normalise_version(installed) != normalise_version(locked):
            drift.append(Drift(package, locked, installed))
    return drift


def normalise_version(version: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        return version


def find_lock() -> Path | None:
    """$LINEAGE_LOCK, else the lock beside the package's source tree (a checkout); None when
    lineage was installed from a wheel."""
    if env := os.environ.get(LOCK_ENV_VAR):
        return Path(env)
    candidate = Path(__file__).resolve().parent.parent / LOCK_FILE
    return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class Report:
    """What `lineage doctor` prints: paste it into a bug report."""

    lineage: str
    python: str
    platform: str
    packages: dict[str, str | None]
    device: str
    cuda: str | None
    processes: str  # world size, rank and backend when launched by torchrun/accelerate
    lock: str | None
    drift: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_summary() -> tuple[str, str | None]:
    """("cuda: <name> x N" or "cpu (N threads)", torch's CUDA version or None)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"cuda: {name} x {torch.cuda.device_count()}", torch.version.cuda
    return f"cpu ({torch.get_num_threads()} threads)", torch.version.cuda


def report(lock_path: Path | None = None) -> Report:
    from lineage import __version__
    from lineage.distributed import launch_summary

    lock_path = lock_path or find_lock()
    drift = [str(d) for d in lock_drift(read_lock(lock_path))] if lock_path else []
    device, cuda = device_summary()
    return Report(
        lineage=__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        packages={p: installed_version(p) for p in KEY_PACKAGES},
        device=device,
        cuda=cuda,
        processes=launch_summary(),
        lock=str(lock_path) if lock_path else None,
        drift=drift,
    )

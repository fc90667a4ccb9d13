"""Workspace configuration: small typed sections loaded from ``lineage.toml`` and validated.

Every section is a frozen dataclass, one field one line of help, checked in ``__post_init__``.
Errors name the file and the key, and nothing is half-loaded.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from lineage.errors import LineageError

CONFIG_FILE = "lineage.toml"
SEED_MAX = 2**32 - 1  # NumPy's seeds are 32-bit; torch's would take more


def check_seed(seed: object) -> int:
    """A seed every job takes: an integer in [0, 2**32 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise LineageError(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}")
    return seed


@dataclass(frozen=True)
class RegistryConfig:
    url: str = "sqlite:///{workspace}/registry.db"  # SQLite or PostgreSQL SQLAlchemy URL

    def __post_init__(self) -> None:
        if "://" not in self.url:
            raise ValueError(
                f"url must be an SQLAlchemy URL such as sqlite:///path, got {self.url!r}"
            )


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///{workspace}/mlflow.db"  # any MLflow tracking URI
    experiment: str = "lineage"  # MLflow experiment that every run of this workspace goes to
    artifacts: str = "{workspace}/mlartifacts"  # artifact root for a new experiment

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ValueError("experiment must not be empty")


@dataclass(frozen=True)
class StorageConfig:
    root: str = "{workspace}"  # where models, adapters, caches, data live; a team's shared mount

    def __post_init__(self) -> None:
        if not self.root.strip():
            raise ValueError("root must not be empty")


@dataclass(frozen=True)
class PathsConfig:
    models: str = "models"  # trained and registered model directories
    adapters: str = "adapters"  # PEFT adapters
    caches: str = "caches"  # teacher top-K logit caches
    domains: str = "domains"  # text shards and profiles of added domains
    data: str = "data"  # token blocks per tokenizer
    plots: str = "plots"  # PNG figures


@dataclass(frozen=True)
class DomainsConfig:
    valid_every: int = 200  # one document in this many goes to the valid split (paper 199:1)
    shard_mb: float = 0.5  # target size of a training text shard
    seed: int = 0  # seed of the deterministic train/valid split
    min_valid_documents: int = 50  # valid keeps >= min(this, a tenth of the documents, 1)

    def __post_init__(self) -> None:
        if self.valid_every < 2:
            raise ValueError(f"valid_every must be >= 2, got {self.valid_every}")
        if self.min_valid_documents < 1:
            raise ValueError(f"min_valid_documents must be >= 1, got {self.min_valid_documents}")
        if self.shard_mb <= 0:
            raise ValueError(f"shard_mb must be > 0, got {self.shard_mb}")


@dataclass(frozen=True)
class ProfilesConfig:
    top_k: int = 10_000  # words kept per vocabulary profile (paper: 10k)
    min_df: int = 1  # minimum document frequency of a word
    measure: str = "overlap"  # "overlap" (|A∩B|/k, paper text) or "jaccard" (paper's script)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.min_df < 1:
            raise ValueError(f"min_df must be >= 1, got {self.min_df}")
        if self.measure not in ("overlap", "jaccard"):
            raise ValueError(f"measure must be 'overlap' or 'jaccard', got {self.measure!r}")


@dataclass(frozen=True)
class CardsConfig:
    license: str = "other"  # the Hub licence id written on model cards, e.g. "apache-2.0"

    def __post_init__(self) -> None:
        if not self.license.strip() or self.license != self.license.strip().lower():
            raise ValueError(
                f"license must be a Hub licence id such as apache-2.0, got {self.license!r}"
            )


@dataclass(frozen=True)
class Config:
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    cards: CardsConfig = field(default_factory=CardsConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def default_config_text() -> str:
    """The embedded default ``lineage.toml`` (the repository's own file)."""
    return resources.files("lineage").joinpath("default.toml").read_text(encoding="utf-8")


def _section(cls: type, raw: Any, name: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise LineageError(f"{source}: [{name}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in raw.items():
        if key not in known:
            raise LineageError(
                f"{source}: unknown key {name}.{key} (known: {', '.join(sorted(known))})"
            )
        expected = hints[key]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise LineageError(
                f"{source}: {name}.{key} must be {expected.__name__}, got {type(value).__name__}"
            )
    try:
        return cls(**raw)
    except ValueError as exc:
        raise LineageError(f"{source}: [{name}] {exc}") from exc


def parse_config(text: str, source: str = CONFIG_FILE) -> Config:
    """Parse and validate configuration text; errors name ``source`` and the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LineageError(f"{source}: not valid TOML ({exc})") from exc
    sections = {f.name: f for f in fields(Config)}
    kwargs = {}
    for name, value in raw.items():
        if name not in sections:
            raise LineageError(f"{source}: unknown section [{name}] (known: {', '.join(sections)})")
        kwargs[name] = _section(get_type_hints(Config)[name], value, name, source)
    return Config(**kwargs)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LineageError(f"{path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise LineageError(f"{path}: not UTF-8 text") from exc
    return parse_config(text, str(path))

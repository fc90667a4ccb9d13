"""Corpora into domains: read sources, split train/valid deterministically, cut shards, profile.

A domain's text lives in the workspace as plain UTF-8 shard files (documents separated by a
blank line): ``domains/<name>/train-00000.txt ...`` and ``valid.txt``. Profiles are cached by
content hash, so unchanged text is never profiled twice.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from lineage.corpora.profiles import (
    MEASURES,
    ProfileCounter,
    VocabularyProfile,
    iter_documents,
    proximity_matrix,
)
from lineage.errors import ConflictError, LineageError
from lineage.files import atomic_dir, atomic_write_text
from lineage.registry.entities import Domain
from lineage.workspace import Workspace

SUPPORTED = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
BLANK_LINES = re.compile(r"\n\s*\n")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def bundled_domains_dir() -> Path:
    """The corpora shipped in the repository (``domains/`` beside the package)."""
    return Path(__file__).resolve().parents[2] / "domains"


def bundled_domains() -> list[str]:
    root = bundled_domains_dir()
    return sorted(p.parent.name for p in root.glob("*/card.toml"))


@dataclass
class IngestReport:
    """What ``add_domain`` read, kept and skipped."""

    files: list[str] = field(default_factory=list)
    documents: int = 0
    train_documents: int = 0
    valid_documents: int = 0
    bytes: int = 0
    words: int = 0
    skipped_empty_files: list[str] = field(default_factory=list)
    shards: int = 0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED, key=len, reverse=True) if name.endswith(s)), "")


def expand_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Files, folders (searched recursively) and globs -> the supported files, sorted."""
    found: list[Path] = []
    for source in sources:
        text = str(source)
        if any(c in text for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise LineageError(f"{text}: the pattern matches no file")
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise LineageError(f"{path}: no such file or folder")
            matches = sorted(path.rglob("*")) if path.is_dir() else [path]
        for match in matches:
            if match.is_file() and _suffix(match):
                found.append(match.resolve())
            elif match.is_file() and match.name != "card.toml" and not path_is_dir(source):
                raise LineageError(
                    f"{match}: unsupported file type (supported: {', '.join(SUPPORTED)})"
                )
    if not found:
        raise LineageError(
            f"no text files in {', '.join(map(str, sources))} ({', '.join(SUPPORTED)})"
        )
    return sorted(set(found))


def path_is_dir(source: str | Path) -> bool:
    return Path(str(source)).expanduser().is_dir()


def _open_text(path: Path) -> IO[str]:
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")  # noqa: SIM115 (closed with the wrapper)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)


def read_documents(path: Path, *, text_field: str = "text") -> Iterator[str]:
    """The documents of one file; non-UTF-8 bytes and malformed records raise a LineageError."""
    suffix = _suffix(path)
    try:
        if suffix == ".parquet":
            yield from _parquet_documents(path, text_field)
            return
        with _open_text(path) as fh:
            if suffix.startswith(".jsonl"):
                yield from _jsonl_documents(fh, path, text_field)
            else:
                yield from iter_documents(fh)
    except UnicodeDecodeError as exc:
        raise LineageError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
            "of a read block); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from exc
    except (OSError, EOFError) as exc:
        raise LineageError(f"{path}: cannot read ({exc})") from exc


def _jsonl_documents(fh: IO[str], path: Path, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LineageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise LineageError(f"{path}:{lineno}: no string field {text_field!r}")
        yield record[text_field]


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for a damaged file
        raise LineageError(f"{path}: not a readable Parquet file ({exc})") from exc
    if text_field not in parquet.schema_arrow.names:
        raise LineageError(
            f"{path}: no column {text_field!r} (columns: {parquet.schema_arrow.names})"
        )
    for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value


def normalise(document: str) -> str:
    """Strip and fold inner blank lines, so a document survives the blank-line shard format."""
    return BLANK_LINES.sub("\n", document.strip())


def is_valid(document: str, *, valid_every: int, seed: int) -> bool:
    """Deterministic split by content: stable when documents are added or reordered."""
    digest = hashlib.blake2b(f"{seed}\0{document}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % valid_every == 0


class _ShardWriter:
    """Streams documents into ``train-NNNNN.txt`` files of about ``limit`` bytes each."""

    def __init__(self, folder: Path, prefix: str, limit: int | None) -> None:
        self.folder, self.prefix, self.limit = folder, prefix, limit
        self.done: list[dict[str, Any]] = []
        self._fh: IO[bytes] | None = None
        self._sha = hashlib.sha256()
        self._bytes = self._docs = 0

    def _name(self) -> str:
        return self.prefix if self.limit is None else f"{self.prefix}-{len(self.done):05d}"

    def write(self, document: str) -> None:
        if self._fh is None:
            self._fh = (self.folder / f"{self._name()}.txt").open("wb")
        data = (document + "\n\n").encode("utf-8")
        self._fh.write(data)
        self._sha.update(data)
        self._bytes += len(data)
        self._docs += 1
        if self.limit is not None and self._bytes >= self.limit:
            self.close()

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self.done.append(
            {
                "name": self._name(),
                "n_bytes": self._bytes,
                "n_documents": self._docs,
                "digest": self._sha.hexdigest(),
            }
        )
        self._fh, self._sha, self._bytes, self._docs = None, hashlib.sha256(), 0, 0


def load_card(sources: Sequence[str | Path]) -> dict[str, Any]:
    """A bundled domain's card.toml, when the only source is its folder."""
    if len(sources) == 1 and (card := Path(str(sources[0])).expanduser() / "card.toml").is_file():
        with card.open("rb") as fh:
            return tomllib.load(fh)
    return {}


def shard_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        yield from iter_documents(fh)


def add_domain(
    ws: Workspace,
    name: str,
    sources: Sequence[str | Path],
    *,
    description: str = "",
    text_field: str = "text",
    valid_every: int | None = None,
    shard_mb: float | None = None,
) -> tuple[Domain, IngestReport]:
    """Read ``sources`` into a new domain: split, shards, profiles; registered in one transaction."""
    if not NAME.match(name):
        raise LineageError(f"domain name {name!r}: use letters, digits, '_', '.', '-'")
    if any(d.name == name for d in ws.registry.domains()):
        raise ConflictError(f"a domain named {name!r} is already registered")
    cfg = ws.config.domains
    valid_every = valid_every or cfg.valid_every
    limit = int((shard_mb or cfg.shard_mb) * 1_000_000)
    files = expand_sources(sources)
    card = load_card(sources)
    report = IngestReport(files=[str(f) for f in files])
    target = ws.domains_dir / name
    with atomic_dir(target) as tmp:
        train, valid = _ShardWriter(tmp, "train", limit), _ShardWriter(tmp, "valid", None)
        for path in files:
            before = report.documents
            for document in map(normalise, read_documents(path, text_field=text_field)):
                if not document:
                    continue
                report.documents += 1
                report.bytes += len(document.encode("utf-8"))
                if is_valid(document, valid_every=valid_every, seed=cfg.seed):
                    valid.write(document)
                else:
                    train.write(document)
            if report.documents == before:
                report.skipped_empty_files.append(str(path))
        train.close()
        valid.close()
        if not train.done:
            raise LineageError(f"domain {name!r}: no documents in {', '.join(map(str, sources))}")
        report.train_documents = sum(s["n_documents"] for s in train.done)
        report.valid_documents = sum(s["n_documents"] for s in valid.done)
        report.shards = len(train.done)
        shards, domain_profile = _profile_shards(ws, tmp, target, train.done, valid.done)
        report.words = domain_profile.n_words
        stats = {
            "files": len(files),
            "documents": report.documents,
            "bytes": report.bytes,
            "words": report.words,
            "train_documents": report.train_documents,
            "valid_documents": report.valid_documents,
            "shards": report.shards,
            "valid_every": valid_every,
            "skipped_empty_files": report.skipped_empty_files,
        }
        domain = ws.registry.add_domain(
            name,
            description=description or card.get("description", ""),
            sources=[str(s) for s in sources],
            card=card,
            stats=stats,
            content_digest=domain_profile.digest,
            profile=domain_profile.to_dict(),
            shards=shards,
        )
    return domain, report


def _profile_shards(
    ws: Workspace, tmp: Path, target: Path, train: list[dict[str, Any]], valid: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], VocabularyProfile]:
    """Profile each shard (cached by digest) and the whole train split in one pass over the text."""
    params = _profile_params(ws)
    whole = ProfileCounter(**params)
    rows = []
    for split, done in (("train", train), ("valid", valid)):
        for shard in done:
            path = tmp / f"{shard['name']}.txt"
            cached = _cached_profile(ws, shard["digest"], params)
            counter = None if cached is not None else ProfileCounter(**params)
            for document in shard_documents(path):
                if split == "train":
                    whole.add(document)
                if counter is not None:
                    counter.add(document)
            profile = cached or _store_profile(ws, shard["digest"], params, counter)
            rows.append(
                shard
                | {"split": split, "path": str(target / path.name), "profile": profile.to_dict()}
            )
    return rows, whole.profile()


def _profile_params(ws: Workspace) -> dict[str, Any]:
    cfg = ws.config.profiles
    # Jaccard (the paper's script) needs min_df applied to the stored vocabulary too.
    return {"top_k": cfg.top_k, "min_df": cfg.min_df}


def _profile_cache_path(ws: Workspace, digest: str, params: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return ws.domains_dir / ".profiles" / f"{digest}-{key}.json"


def _cached_profile(ws: Workspace, digest: str, params: dict[str, Any]) -> VocabularyProfile | None:
    path = _profile_cache_path(ws, digest, params)
    if not path.is_file():
        return None
    try:
        return VocabularyProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
        return None


def _store_profile(
    ws: Workspace, digest: str, params: dict[str, Any], counter: ProfileCounter | None
) -> VocabularyProfile:
    assert counter is not None
    profile = counter.profile()
    atomic_write_text(_profile_cache_path(ws, digest, params), json.dumps(profile.to_dict()))
    return profile


def domain_texts(ws: Workspace, name: str, split: str = "train") -> Iterator[str]:
    """Stream a registered domain's documents of one split."""
    for shard in ws.registry.shards(name, split=split):
        yield from shard_documents(Path(shard.path))


def compute_proximity(
    ws: Workspace, names: Iterable[str] | None = None, *, measure: str | None = None
) -> tuple[list[str], np.ndarray]:
    """The domains' proximity matrix (paper's Table 8), stored in the registry."""
    measure = measure or ws.config.profiles.measure
    domains = {d.name: d for d in ws.registry.domains()}
    chosen = list(names) if names is not None else list(domains)
    if len(chosen) < 2:
        raise LineageError("proximity needs at least two domains (see `lineage domain add`)")
    profiles = {}
    for n in chosen:
        if n not in domains:
            raise LineageError(
                f"no domain named {n!r} (registered: {', '.join(domains) or 'none'})"
            )
        profile = domains[n].profile
        if profile is None:
            raise LineageError(f"domain {n!r} has no profile: it was added without text")
        profiles[n] = VocabularyProfile.from_dict(profile)
    if measure not in MEASURES:
        raise LineageError(
            f"proximity measure must be one of {', '.join(MEASURES)}, got {measure!r}"
        )
    labels, matrix = proximity_matrix(profiles, measure=measure)  # type: ignore[arg-type]
    params = _profile_params(ws) | {"measure": measure}
    ws.registry.save_proximity(measure, params, list(labels), matrix.round(6).tolist())
    return list(labels), matrix

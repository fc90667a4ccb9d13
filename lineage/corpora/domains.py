"""Domains: corpora read into a train/valid split of shard files, profiled and registered;
replaced and removed.

A domain's text lives in the workspace as plain UTF-8 shard files (documents separated by a
blank line), ``domains/<name>/<version>/train-00000.txt ...`` and ``valid.txt``, where
``version`` is derived from the shards' digests (``lineage.corpora.splits`` makes the split;
``lineage.corpora.sources`` reads the corpora; ``lineage.corpora.shardprofiles`` profiles the
shards, cached by content hash, so unchanged text is never profiled twice).

Publishing, so that a kill at any point leaves the old state or the new one: files first, then
rows. ``add`` streams into ``domains/<name>/.staging-*``, renames it to its version folder, and
only then commits the registry rows that point at it (replacing the old domain's rows in the
same transaction); the old version folder is deleted after the commit. ``remove`` commits the
rows' removal first, then deletes the files. Registry rows therefore never point at missing
files, and what a killed job leaves is a folder no row points at: every add, replace and
remove of that name first deletes such leftovers (under a per-name lock file, so no two jobs
change one domain at once).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tomllib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineage.corpora.profiles import MEASURES, VocabularyProfile, proximity_matrix
from lineage.corpora.shardprofiles import profile_params, profile_shards, with_profiles
from lineage.corpora.sources import (
    LAYOUTS,
    Layout,
    Source,
    expand_sources,
    layout_of,
    normalise,
    read_documents,
    read_source,
)
from lineage.corpora.splits import (
    SplitOutcome,
    SplitPolicy,
    Splitter,
    is_valid,
    shard_documents,
)
from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.faults import fault_point
from lineage.files import check_name
from lineage.registry.entities import Domain, DomainUsage
from lineage.workspace import Workspace

LEFTOVER = re.compile(r"^(\.staging-[0-9a-f]{8}|[0-9a-f]{16})$")  # what add_domain writes
FLAT_SHARD = re.compile(r"^(train-\d{5}|valid)\.txt$")  # shards before version folders

__all__ = [
    "LAYOUTS",
    "IngestReport",
    "Removal",
    "add_domain",
    "bundled_domains",
    "bundled_domains_dir",
    "compute_proximity",
    "domain_texts",
    "expand_sources",
    "is_valid",
    "normalise",
    "read_documents",
    "remove_domain",
    "shard_documents",
]


def bundled_domains_dir() -> Path:
    """The corpora shipped in the repository (``domains/`` beside the package)."""
    return Path(__file__).resolve().parents[2] / "domains"


def bundled_domains() -> list[str]:
    root = bundled_domains_dir()
    return sorted(p.parent.name for p in root.glob("*/card.toml"))


@dataclass
class IngestReport:
    """What ``add_domain`` read, kept and skipped, and how each file was split."""

    files: list[str] = field(default_factory=list)
    layouts: list[tuple[str, Layout]] = field(default_factory=list)  # (file, how it was read)
    documents: int = 0
    train_documents: int = 0
    valid_documents: int = 0
    valid_bytes: int = 0
    bytes: int = 0
    words: int = 0
    skipped_empty_files: list[str] = field(default_factory=list)
    shards: int = 0
    split: SplitOutcome = field(default_factory=SplitOutcome)
    replaced: DomainUsage | None = None  # what the replaced domain took with it


@dataclass(frozen=True)
class Removal:
    """What ``remove_domain`` removed: the registry's records, and the files deleted."""

    usage: DomainUsage | None  # None: no domain was registered, only leftover files went
    files: list[str]


def load_card(sources: Sequence[str | Path]) -> dict[str, Any]:
    """A bundled domain's card.toml, when the only source is its folder."""
    if len(sources) == 1 and (card := Path(str(sources[0])).expanduser() / "card.toml").is_file():
        with card.open("rb") as fh:
            return tomllib.load(fh)
    return {}


def _check_name(name: str) -> None:
    check_name(name, "domain")


def _shard_limit(shard_mb: float | None, default_mb: float) -> int:
    """Bytes per train shard: a given size must be a number > 0 (never replaced by the default)."""
    mb = default_mb if shard_mb is None else shard_mb
    if not mb > 0:  # NaN too
        raise LineageError(f"shard size must be > 0 MB, got {shard_mb}")
    return int(mb * 1_000_000)


@contextmanager
def domain_lock(ws: Workspace, name: str) -> Iterator[None]:
    """Hold ``domains/.locks/<name>.lock`` (released by the kernel if the process dies)."""
    folder = ws.domains_dir / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.lock").open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConflictError(f"domain {name!r} is being changed by another job") from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _current_version(ws: Workspace, name: str) -> str | None:
    """The name of the version folder the registry's shard rows point into: None for no such
    domain, "" for shards directly in ``domains/<name>/`` (written before version folders).
    Compared by name, so a moved or copied workspace (absolute paths) is never misread."""
    try:
        shards = ws.registry.shards(name)
    except NotFoundError:
        return None
    if not shards:
        return None
    folder = Path(shards[0].path).parent
    return "" if folder.name == name else folder.name


def clean_leftovers(ws: Workspace, name: str) -> list[str]:
    """Delete what killed or replaced jobs left in ``domains/<name>/``: staging and version
    folders no row points into (and shard files of the old flat layout once rows point into a
    version folder). Anything else in the folder is left alone."""
    root = ws.domains_dir / name
    if not root.is_dir():
        return []
    current = _current_version(ws, name)
    removed = []
    for entry in sorted(root.iterdir()):
        ours = LEFTOVER.match(entry.name) or (current != "" and FLAT_SHARD.match(entry.name))
        if entry.name == current or not ours:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        removed.append(str(entry))
    if current is None and not any(root.iterdir()):
        root.rmdir()
    return removed


@dataclass(frozen=True)
class _Request:
    """What ``add_domain`` was asked, checked."""

    name: str
    sources: Sequence[str | Path]
    description: str
    text_field: str
    documents: str
    policy: SplitPolicy
    shard_bytes: int
    replace: bool
    force: bool
    progress: bool


def add_domain(
    ws: Workspace,
    name: str,
    sources: Sequence[str | Path],
    *,
    description: str = "",
    text_field: str = "text",
    documents: str = "auto",
    valid_every: int | None = None,
    min_valid: int | None = None,
    shard_mb: float | None = None,
    replace: bool = False,
    force: bool = False,
    progress: bool = False,
) -> tuple[Domain, IngestReport]:
    """Read ``sources`` into a domain: split, shards, profiles, registered in one transaction.

    ``documents``: how files split into documents (``LAYOUTS``; ``auto`` detects text
    layouts). ``replace``: swap out a registered domain of that name (refused while plans,
    caches or running jobs use it unless ``force``, which removes them with it).
    """
    _check_name(name)
    if force and not replace:
        raise LineageError("--force goes with --replace (it removes what uses the old domain)")
    cfg = ws.config.domains
    policy = SplitPolicy(
        cfg.valid_every if valid_every is None else valid_every,
        cfg.seed,
        min_valid or cfg.min_valid_documents,
    )
    limit = _shard_limit(shard_mb, cfg.shard_mb)
    with domain_lock(ws, name):
        clean_leftovers(ws, name)
        exists = any(d.name == name for d in ws.registry.domains())
        if exists and not replace:
            raise ConflictError(
                f"a domain named {name!r} is already registered (pass --replace to swap it out)"
            )
        if exists and not force and (usage := ws.registry.domain_usage(name)).in_use:
            raise ConflictError(
                f"domain {name!r} is in use by {usage.describe()}; pass --force to replace it "
                "and remove them"
            )
        files = expand_sources(sources, documents)
        request = _Request(name, sources, description, text_field, documents, policy, limit,
                           exists, force, progress)  # fmt: skip
        report = IngestReport(files=[str(f.path) for f in files])
        staging = ws.domains_dir / name / f".staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            domain = _ingest(ws, request, files, staging, report)
            fault_point("domain.registered")  # committed; the staging folder is still there
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            clean_leftovers(ws, name)  # an unreferenced version folder, or the replaced one
        if report.replaced is not None:
            _delete_files(ws, name, report.replaced, keep_shards=True)
    return domain, report


def _ingest(
    ws: Workspace, req: _Request, files: list[Source], staging: Path, report: IngestReport
) -> Domain:
    """Stream, split, profile, publish (files, then rows): the body of ``add_domain``."""
    splitter = Splitter(staging, req.policy, req.shard_bytes)
    _read_into(splitter, files, report, req.documents, req.text_field, req.progress)
    report.split = splitter.finish()
    if report.documents == 0:
        raise LineageError(
            f"domain {req.name!r}: no documents in {', '.join(map(str, req.sources))}"
        )
    train, valid = splitter.train.done, splitter.valid.done
    report.train_documents = sum(s["n_documents"] for s in train)
    report.valid_documents = sum(s["n_documents"] for s in valid)
    report.valid_bytes = sum(s["n_bytes"] for s in valid)
    report.shards = len(train)
    version = hashlib.sha256("".join(s["digest"] for s in train + valid).encode()).hexdigest()
    final = ws.domains_dir / req.name / version[:16]
    shards, profile = profile_shards(ws, staging, final, train, valid, req.progress)
    report.words = profile.n_words
    fault_point("domain.staged")  # shards written and profiled, not yet published
    if final.exists():  # the registered domain already holds exactly this text
        shutil.rmtree(staging)
    else:
        os.replace(staging, final)
    fault_point("domain.published")  # the version folder is in place, no row points at it
    card = load_card(req.sources)
    with ws.registry.transaction() as reg:
        if req.replace:
            report.replaced = reg.remove_domain(req.name, force=req.force)
        return reg.add_domain(
            req.name,
            description=req.description or card.get("description", ""),
            sources=[str(s) for s in req.sources],
            card=card,
            stats=_stats(report, req.policy, len(files)),
            content_digest=profile.digest,
            profile=profile.to_dict(),
            shards=with_profiles(ws, shards),
        )


def _read_into(
    splitter: Splitter,
    files: list[Source],
    report: IngestReport,
    documents: str,
    text_field: str,
    progress: bool,
) -> None:
    """Stream every file's documents, normalised, into the splitter (a bar over source bytes)."""
    from tqdm.auto import tqdm

    total = sum(f.path.stat().st_size for f in files)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="reading", disable=None if progress else True
    ) as bar:
        for source in files:
            layout = layout_of(source, documents)
            report.layouts.append((str(source.path), layout))
            before = report.documents
            for raw in read_source(
                source, layout.layout, text_field=text_field, progress=bar.update
            ):
                document = normalise(raw)
                if not document:
                    continue
                report.documents += 1
                report.bytes += splitter.add(document)
            if report.documents == before:
                report.skipped_empty_files.append(str(source.path))


def _stats(report: IngestReport, policy: SplitPolicy, n_files: int) -> dict[str, Any]:
    layouts: dict[str, int] = {}
    for _, layout in report.layouts:
        layouts[layout.layout] = layouts.get(layout.layout, 0) + 1
    return {
        "files": n_files,
        "documents": report.documents,
        "bytes": report.bytes,
        "words": report.words,
        "train_documents": report.train_documents,
        "valid_documents": report.valid_documents,
        "shards": report.shards,
        "valid_every": policy.valid_every,
        "min_valid_documents": policy.min_valid,
        "layouts": layouts,
        "split": report.split.to_dict(),
        "skipped_empty_files": report.skipped_empty_files,
    }


def remove_domain(ws: Workspace, name: str, *, force: bool = False) -> Removal:
    """Remove a domain: its registry rows (refused while in use, unless ``force``), then its
    shards, token blocks and (with ``force``) the logit caches built on it. With no such
    domain registered, only what a killed job left behind is deleted (or NotFoundError)."""
    _check_name(name)
    with domain_lock(ws, name):
        if not any(d.name == name for d in ws.registry.domains()):
            leftovers = clean_leftovers(ws, name)
            if not leftovers:
                ws.registry.domain(name)  # raises NotFoundError with the registered names
            return Removal(None, leftovers)
        usage = ws.registry.remove_domain(name, force=force)
        return Removal(usage, _delete_files(ws, name, usage, keep_shards=False))


def _delete_files(ws: Workspace, name: str, usage: DomainUsage, *, keep_shards: bool) -> list[str]:
    """Files of removed records: caches (inside the workspace), token blocks, shards."""
    deleted = []
    for cache in map(Path, usage.caches):
        if cache.is_dir() and cache.resolve().is_relative_to(ws.root.resolve()):
            shutil.rmtree(cache)
            deleted.append(str(cache))
    for blocks in sorted(ws.data_dir.glob(f"*/*/{name}")):  # data/<tokenizer>/<block size>/
        shutil.rmtree(blocks)
        deleted.append(str(blocks))
    if not keep_shards:
        deleted += clean_leftovers(ws, name)
    return deleted


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
    params = profile_params(ws) | {"measure": measure}
    ws.registry.save_proximity(measure, params, list(labels), matrix.round(6).tolist())
    return list(labels), matrix

"""``lineage db check`` on the workspace's folders, and ``--repair``.

What killed jobs leave: runs still RUNNING and reservations held by processes that are gone,
hidden temporaries (``.NAME.tmp-*``, ``.NAME.*.partial``, ``.NAME.old-*``, a domain's
``.staging-*``), and folders no registry row points at (models, adapters, tokenizers, caches,
domain versions). ``repair`` fixes what can be fixed without guessing: dead jobs' runs are
failed and their reservations dropped (other hosts' only with ``force``: their processes cannot
be seen from here); temporaries and orphan folders are deleted, but never while a job of this
workspace is alive (it may be about to publish or register them). Rows whose files are missing
are only reported (``checks``): deleting a model's row is a person's decision.
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lineage.owners import liveness
from lineage.registry.checks import Finding
from lineage.registry.reservations import leftovers, remove_paths
from lineage.registry.store import Registry

TEMPORARY = re.compile(r"^\.(.+\.tmp-.+|.+\.partial|.+\.old-.+|staging-[0-9a-f]+)$")
VERSION = re.compile(r"^[0-9a-f]{16}$")  # a domain's version folder (corpora.domains)
CACHE_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Folders:
    """Where the workspace keeps what jobs write (``Workspace`` knows; the registry does not)."""

    models: Path
    adapters: Path
    caches: Path
    domains: Path

    @property
    def tokenizers(self) -> Path:
        return self.models / "tokenizers"


def stale_jobs(reg: Registry) -> list[Finding]:
    """RUNNING runs and reservations whose process is gone (or on another host: unknown)."""
    found = []
    for run in reg.running_runs():
        state = liveness(run.owner) if run.owner.pid else "unknown"
        if state != "alive":
            found.append(
                Finding(
                    "stale-jobs", f"run {run.id} ({run.kind})", _why(state, run.owner.describe())
                )
            )
    for res in reg.reservations():
        state = liveness(res.owner)
        if state != "alive":
            found.append(
                Finding(
                    "stale-jobs",
                    f"reservation {res.kind} {res.name} ({res.job})",
                    _why(state, res.owner.describe()),
                )
            )
    return found


def _why(state: str, owner: str) -> str:
    if state == "gone":
        return f"RUNNING, but its process ({owner}) is gone"
    if state == "unknown":
        return "RUNNING, started before lineage recorded owners; repaired only with --force"
    return f"RUNNING on another host ({owner}); repaired only with --force"


def temporaries(folders: Folders) -> list[Finding]:
    """Hidden temporary folders and files that jobs write before they publish."""
    return [
        Finding("leftovers", str(path), "an unfinished job's temporary", str(path))
        for path in _temporaries(folders)
    ]


def _temporaries(folders: Folders) -> Iterator[Path]:
    roots = [folders.models, folders.tokenizers, folders.adapters]
    roots += [d for d in _dirs(folders.domains)]
    for root in roots:
        yield from (p for p in _entries(root) if TEMPORARY.match(p.name))
    if folders.caches.is_dir():
        yield from (p for p in folders.caches.rglob(".*") if TEMPORARY.match(p.name))


def orphans(reg: Registry, folders: Folders) -> list[Finding]:
    """Folders under models/, adapters/, models/tokenizers/, caches/ and domains/ that no row
    points at and no running job has reserved."""
    known = {Path(m.path).resolve() for m in reg.models()}
    known |= {Path(t.path).resolve() for t in reg.tokenizers()}
    known |= {Path(c.path).resolve() for c in reg.caches()}
    known |= {Path(r.path).resolve() for r in reg.reservations()}
    versions = {Path(s.path).resolve().parent for s in reg.shards()}
    found = []
    for root in (folders.models, folders.adapters, folders.tokenizers):
        for path in _dirs(root):
            if path.resolve() not in known and path != folders.tokenizers:
                found.append(
                    Finding("orphans", str(path), "no registry row points at it", str(path))
                )
    if folders.caches.is_dir():
        for manifest in folders.caches.rglob(CACHE_MANIFEST):
            path = manifest.parent
            if path.resolve() not in known and not any(TEMPORARY.match(p) for p in path.parts):
                found.append(Finding("orphans", str(path), "a cache no row points at", str(path)))
    for domain in _dirs(folders.domains):
        for path in _dirs(domain):
            if VERSION.match(path.name) and path.resolve() not in versions:
                found.append(
                    Finding(
                        "orphans", str(path), "a domain version no shard points into", str(path)
                    )
                )
    return found


def _entries(root: Path) -> list[Path]:
    return sorted(root.iterdir()) if root.is_dir() else []


def _dirs(root: Path) -> list[Path]:
    return [p for p in _entries(root) if p.is_dir() and not p.name.startswith(".")]


def folder_checks(reg: Registry, folders: Folders) -> dict[str, list[Finding]]:
    return {
        "stale-jobs": stale_jobs(reg),
        "leftovers": temporaries(folders),
        "orphans": orphans(reg, folders),
    }


def live_jobs(reg: Registry) -> list[str]:
    """Jobs of this registry whose process is alive here or runs on another host."""
    jobs = [
        f"run {r.id}" for r in reg.running_runs() if r.owner.pid and liveness(r.owner) != "gone"
    ]
    jobs += [f"{r.job} of {r.name}" for r in reg.reservations() if liveness(r.owner) != "gone"]
    return jobs


@dataclass
class Repaired:
    done: list[str]  # what was repaired, one line each
    skipped: list[str]  # what was left, and why
    mlflow_runs: list[str]  # MLflow ids of runs now failed (the caller ends them there)


def repair(reg: Registry, folders: Folders, *, force: bool = False) -> Repaired:
    """Fail dead jobs' runs, drop their reservations (deleting what they left), then delete
    temporaries and orphan folders unless a job is alive. ``force``: other hosts' jobs too."""
    out = Repaired([], [], [])
    for res in reg.reservations():
        state = liveness(res.owner)
        if state == "gone" or (force and state == "elsewhere"):
            remove_paths(
                leftovers(Path(res.path)) if not _registered(reg, res.kind, res.name) else []
            )
            out.mlflow_runs += reg.drop_reservation(res.name, kind=res.kind)
            out.done.append(f"released {res.kind} {res.name} (its {res.job} job is gone)")
    out.mlflow_runs += reg.fail_dead_runs(hosts="all" if force else "this")
    out.done += [f"failed stale run {i}" for i in out.mlflow_runs]
    alive = live_jobs(reg)
    for finding in temporaries(folders) + orphans(reg, folders):
        assert finding.path is not None
        path = Path(finding.path)
        if alive:
            out.skipped.append(f"{path}: kept while jobs run ({', '.join(alive)})")
        elif path.is_relative_to(folders.domains) and not _domain_free(folders, path):
            out.skipped.append(f"{path}: its domain is being changed")
        else:
            remove_paths([path])
            out.done.append(f"removed {path}")
    return out


def _registered(reg: Registry, kind: str, name: str) -> bool:
    if kind == "model":
        return reg.has_model(name)
    return any(t.name == name for t in reg.tokenizers())


def _domain_free(folders: Folders, path: Path) -> bool:
    """Whether no job holds the domain's lock (``corpora.domains.domain_lock``)."""
    name = path.relative_to(folders.domains).parts[0]
    lock = folders.domains / ".locks" / f"{name}.lock"
    if not lock.exists():
        return True
    with lock.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True

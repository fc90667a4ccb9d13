"""Atomic file writes (temporary name in the same folder, then rename), file digests, and the
one rule for names that become paths (``check_name``, ``path_inside``)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lineage.errors import LineageError

NAME_MAX = 100
NAME_RULE = f"1-{NAME_MAX} letters, digits, '_', '.', '-', starting with a letter or digit"
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is a safe registry name (a slug that cannot leave its folder), else a
    LineageError: no separators, not ``.``/``..``, no leading ``.`` or ``-``, bounded length."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    shown = (
        repr(name)
        if not isinstance(name, str) or len(name) <= 60
        else (f"{name[:40]!r}… ({len(name)} characters)")
    )
    raise LineageError(f"{what} {shown} is not a valid name: use {NAME_RULE}")


def path_inside(folder: Path, *parts: str) -> Path:
    """``folder/parts`` resolved (symlinks and ``..`` too), refused unless it lies inside
    ``folder``: every path built from a name goes through here."""
    root = Path(folder).resolve()
    path = root.joinpath(*parts).resolve()
    if path == root or not path.is_relative_to(root):
        raise LineageError(f"{'/'.join(parts)!r} would lie outside {root}; refused")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; rename it to ``final`` on success.

    On an exception the temporary folder is removed and ``final`` is untouched. With
    ``overwrite`` an existing ``final`` is swapped out (renamed aside, then deleted), so readers
    never see a mixture of old and new files.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise LineageError(f"{final} already exists (refusing to overwrite it)")
    tmp = temp_dir_beside(final)
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temp_dir_beside(final: Path) -> Path:
    """A fresh hidden name beside ``final`` (same filesystem: the rename is atomic); its parent
    is created, the folder itself is not."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def publish_dir(tmp: Path, final: Path) -> None:
    """Flush ``tmp``'s files and rename it to ``final``; an existing ``final`` is swapped out
    (renamed aside, then deleted), so readers never see a mixture of old and new files."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename makes them visible (crash consistency)."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()

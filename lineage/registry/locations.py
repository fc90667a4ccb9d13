"""Where registered files live: relative to the storage root, so every machine resolves them.

A team shares one registry and one storage root (a mount such as ``/mnt/lineage``) that each
machine may mount elsewhere. Paths under the root are stored relative to it (POSIX form) and
resolved against the reader's root; a path outside the root (a model registered from
elsewhere) is stored absolute and read back unchanged.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class Locations:
    """Stores and resolves registered paths against ``root`` (None: every path absolute)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root).expanduser().resolve()

    def store(self, path: str | Path) -> str:
        """The form kept in the registry: relative to the root when under it, else absolute."""
        absolute = Path(path).expanduser().resolve()
        if self.root is not None and absolute.is_relative_to(self.root):
            return absolute.relative_to(self.root).as_posix() or "."
        return str(absolute)

    def resolve(self, stored: str) -> str:
        """The path on this machine of a registry value."""
        if self.root is None or Path(stored).is_absolute():
            return stored
        return str(self.root / PurePosixPath(stored))

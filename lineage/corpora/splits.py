"""A domain's train/valid split, written to shard files as the documents stream in.

The split is by content, so it is stable when documents are added or reordered: a document
goes to valid when its keyed hash is 0 mod ``valid_every`` (the paper's 199:1 at 200). The
valid split is never empty:

- it keeps at least ``floor(n)`` = min(``min_valid``, n // 10, at least 1) of the n documents,
  topping up with the train documents of smallest hash (every copy of a duplicated document
  moves with it, so valid text never also sits in train); only the ``min_valid`` smallest keys
  are remembered while streaming, as (shard, position) pairs, and the shards that lose a
  document are rewritten at the end;
- a domain of one document holds out the tail of its text: 1/``valid_every`` of it, or a
  tenth up to ``TAIL_CHARS`` characters if that is more, cut at a line break or a space;
- a domain that can give up nothing (no document, or one word) is refused with a clear error.

Shards: ``train-NNNNN.txt`` of about ``shard_bytes`` each and ``valid.txt``, documents joined
by a blank line, each written as it fills; a record per shard has its name, bytes, documents
and sha256.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lineage.corpora.profiles import iter_documents
from lineage.errors import LineageError

TAIL_CHARS = 20_000  # a one-document domain's valid tail: at least a tenth of it, up to this


@dataclass(frozen=True)
class SplitPolicy:
    valid_every: int  # one document in this many goes to valid, by content hash
    seed: int  # the hash key: another seed, another split
    min_valid: int  # the valid split keeps at least min(min_valid, n // 10, >= 1) documents

    def __post_init__(self) -> None:
        if self.valid_every < 2:
            raise LineageError(f"valid_every must be >= 2, got {self.valid_every}")
        if self.min_valid < 1:
            raise LineageError(f"min_valid_documents must be >= 1, got {self.min_valid}")

    def key(self, document: str | bytes) -> int:
        """The document's split key: blake2b of "<seed>\\0<document>" (UTF-8), 64 bits."""
        data = document if isinstance(document, bytes) else document.encode("utf-8")
        digest = hashlib.blake2b(b"%d\0" % self.seed + data, digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def floor(self, n_documents: int) -> int:
        """The fewest valid documents a domain of ``n_documents`` (>= 2) keeps."""
        return min(self.min_valid, max(1, n_documents // 10))


def is_valid(document: str, *, valid_every: int, seed: int) -> bool:
    """Deterministic split by content: stable when documents are added or reordered."""
    return SplitPolicy(valid_every, seed, 1).key(document) % valid_every == 0


def shard_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        yield from iter_documents(fh)


class ShardWriter:
    """Streams documents into ``<prefix>-NNNNN.txt`` files of about ``limit`` bytes each
    (one ``<prefix>.txt`` when ``limit`` is None)."""

    def __init__(self, folder: Path, prefix: str, limit: int | None) -> None:
        self.folder, self.prefix, self.limit = folder, prefix, limit
        self.done: list[dict[str, Any]] = []
        self._fh: IO[bytes] | None = None
        self._sha = hashlib.sha256()
        self._bytes = self._docs = 0

    def name(self, index: int) -> str:
        return self.prefix if self.limit is None else f"{self.prefix}-{index:05d}"

    def write(self, document: str | bytes) -> tuple[int, int]:
        """Append a document (text, or its UTF-8); its (shard index, position in the shard)."""
        if self._fh is None:
            self._fh = (self.folder / f"{self.name(len(self.done))}.txt").open("wb")
        data = (document if isinstance(document, bytes) else document.encode("utf-8")) + b"\n\n"
        self._fh.write(data)
        self._sha.update(data)
        self._bytes += len(data)
        self._docs += 1
        where = (len(self.done), self._docs - 1)
        if self.limit is not None and self._bytes >= self.limit:
            self.close()
        return where

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self.done.append(_record(self.name(len(self.done)), self._bytes, self._docs, self._sha))
        self._fh, self._sha, self._bytes, self._docs = None, hashlib.sha256(), 0, 0

    @property
    def n_documents(self) -> int:
        return sum(s["n_documents"] for s in self.done) + self._docs

    def path(self, index: int) -> Path:
        return self.folder / f"{self.done[index]['name']}.txt"


def _record(name: str, n_bytes: int, n_documents: int, sha: Any) -> dict[str, Any]:
    return {"name": name, "n_bytes": n_bytes, "n_documents": n_documents, "digest": sha.hexdigest()}


def rewrite_shard(path: Path, documents: list[str]) -> dict[str, Any]:
    """Write ``documents`` to ``path`` (replacing it); its record."""
    data = "".join(d + "\n\n" for d in documents).encode("utf-8")
    path.write_bytes(data)
    return _record(path.stem, len(data), len(documents), hashlib.sha256(data))


@dataclass
class SplitOutcome:
    """How the valid split was made: by hash alone, topped up, or a tail of the text."""

    by_hash: int = 0  # valid documents chosen by hash
    topped_up: int = 0  # train documents moved to valid to reach the floor
    moved_back: int = 0  # valid documents moved to train when hashing left train empty
    tail_chars: int = 0  # for a one-document domain: characters held out
    floor: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def describe(self) -> str:
        if self.tail_chars:
            return f"one document: its last {self.tail_chars:,} characters held out as valid"
        text = f"{self.by_hash:,} by hash"
        if self.topped_up:
            text += f", {self.topped_up:,} topped up to the floor of {self.floor:,}"
        if self.moved_back:
            text += f", {self.moved_back:,} moved back to keep train non-empty"
        return text


@dataclass
class Splitter:
    """Routes streamed documents to train shards or valid, then makes valid non-empty."""

    folder: Path
    policy: SplitPolicy
    shard_bytes: int
    train: ShardWriter = field(init=False)
    valid: ShardWriter = field(init=False)
    # the smallest keys among train documents: a max-heap of -key, and key -> positions
    _heap: list[int] = field(default_factory=list, init=False)
    _where: dict[int, list[tuple[int, int]]] = field(default_factory=dict, init=False)
    outcome: SplitOutcome = field(default_factory=SplitOutcome, init=False)

    def __post_init__(self) -> None:
        self.train = ShardWriter(self.folder, "train", self.shard_bytes)
        self.valid = ShardWriter(self.folder, "valid", None)

    def add(self, document: str) -> int:
        """Route one (normalised, non-empty) document; its size in UTF-8 bytes."""
        data = document.encode("utf-8")
        key = self.policy.key(data)
        if key % self.policy.valid_every == 0:
            self.valid.write(data)
            return len(data)
        where = self.train.write(data)
        if key in self._where:
            self._where[key].append(where)
        elif len(self._heap) < self.policy.min_valid:
            heapq.heappush(self._heap, -key)
            self._where[key] = [where]
        elif key < -self._heap[0]:
            del self._where[-heapq.heappushpop(self._heap, -key)]
            self._where[key] = [where]
        return len(data)

    def finish(self) -> SplitOutcome:
        """Close the files and make the valid split non-empty (or raise LineageError)."""
        n_train, n_valid = self.train.n_documents, self.valid.n_documents
        self.outcome.by_hash = n_valid
        if n_train + n_valid == 0:
            self.train.close()
            self.valid.close()
            return self.outcome
        if n_train + n_valid == 1:
            self._hold_out_tail()
        elif n_train == 0:
            self._move_back()
        else:
            self.outcome.floor = self.policy.floor(n_train + n_valid)
            self._top_up(self.outcome.floor - n_valid)
        self.train.close()
        self.valid.close()
        if not self.train.done or not self.valid.done:
            raise LineageError(
                f"the domain's {n_train + n_valid:,} documents are copies of one text: too small "
                "to hold anything out; add text"
            )
        return self.outcome

    def _top_up(self, need: int) -> None:
        if need <= 0:
            return
        self.train.close()
        left = self.train.n_documents
        moved: dict[int, set[int]] = {}
        for key in sorted(-k for k in self._heap):
            if need <= 0:
                break
            if len(self._where[key]) >= left:
                continue  # every copy of one text: moving it would empty train
            for shard, position in self._where[key]:
                moved.setdefault(shard, set()).add(position)
            need -= len(self._where[key])
            left -= len(self._where[key])
        documents: list[str] = []
        for shard in sorted(moved):
            path = self.train.path(shard)
            keep: list[str] = []
            for position, document in enumerate(shard_documents(path)):
                (documents if position in moved[shard] else keep).append(document)
            self.train.done[shard] = rewrite_shard(path, keep)
        for document in documents:
            self.valid.write(document)
        self.outcome.topped_up = len(documents)
        self._drop_empty_shards()

    def _drop_empty_shards(self) -> None:
        """Remove train shards emptied by the top-up and number the rest without gaps."""
        kept: list[dict[str, Any]] = []
        for record in self.train.done:
            path = self.folder / f"{record['name']}.txt"
            if record["n_documents"] == 0:
                path.unlink()
                continue
            name = self.train.name(len(kept))
            if name != record["name"]:
                path.rename(self.folder / f"{name}.txt")
            kept.append(record | {"name": name})
        self.train.done = kept

    def _move_back(self) -> None:
        """Hashing sent every document to valid (a tiny domain): keep the floor there."""
        self.valid.close()
        path = self.valid.path(0)
        documents = list(shard_documents(path))
        floor = self.policy.floor(len(documents))
        ranked = sorted(range(len(documents)), key=lambda i: (self.policy.key(documents[i]), i))
        stay = set(ranked[:floor])
        self.valid.done = [rewrite_shard(path, [d for i, d in enumerate(documents) if i in stay])]
        for i, document in enumerate(documents):
            if i not in stay:
                self.train.write(document)
        self.outcome.floor, self.outcome.moved_back = floor, len(documents) - floor

    def _hold_out_tail(self) -> None:
        """One document: its tail becomes valid, the rest train."""
        self.train.close()
        self.valid.close()
        writer = self.train if self.train.done else self.valid
        path = writer.path(0)
        (text,) = shard_documents(path)
        path.unlink()
        writer.done = []
        want = max(len(text) // self.policy.valid_every, min(len(text) // 10, TAIL_CHARS))
        cut = len(text) - max(want, 1)
        at = text.rfind("\n", max(cut - want, 0), cut + 1)
        if at <= 0:
            at = max(text.rfind(" ", 0, cut + 1), text.rfind("\n", 0, cut + 1))
        head, tail = text[: max(at, 0)].strip(), text[max(at, 0) :].strip()
        if at <= 0 or not head or not tail:
            raise LineageError(
                f"the domain is one document of {len(text):,} characters with no line break "
                "or space to cut a valid tail at: too small to hold anything out; add text"
            )
        self.train.write(head)
        self.valid.write(tail)
        self.outcome.by_hash, self.outcome.tail_chars = 0, len(tail)

"""Word counts behind vocabulary profiles: occurrences (tf) and documents (df) per word.

Two engines count the same thing:

- ``ArrowCounts``, the fast path, for the profiles' own word pattern ``\\b[^\\W\\d_]{2,}\\b``
  on lower-cased text. That pattern matches exactly the maximal runs of word characters
  (``\\w``: letters, digits, "_") that are letters only and at least two long. So a block of
  many documents is lower-cased (``str.lower``: its final-sigma rule needs the context),
  encoded to UTF-8, every ASCII byte that is not a word character becomes a space
  (``bytes.translate``), and pyarrow splits at the spaces and counts the distinct tokens in
  C++, with no Python object per token. A token of ASCII bytes is one word when it is all
  letters and 2+ long, else none; a token holding non-ASCII bytes (accents, curly quotes,
  non-breaking spaces) is matched with the exact pattern once per distinct token when the
  words are read out. Counts are kept as Arrow tables (token, count), summed by ``group_by``
  when they grow, so memory is a few dozen bytes per distinct token.
- ``RegexCounts``, the reference path (``re.findall`` per document into ``Counter``s), for
  any other token pattern.

Document frequencies need each document's set of words; the Arrow engine gets them for
ASCII documents by (document, token) pairs in numpy and takes the reference path for the
documents that are not ASCII (a token there may yield a word that another token yields too).
``tests/test_profiles.py`` checks that both engines give byte-identical profiles on the bundled
corpora; ``benchmarks/bench_profiles.py`` measures them side by side.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

SEPARATOR = "\n\n"  # documents in a block are joined by a blank line and hold none themselves
_WORD_BYTES = frozenset(b"0123456789_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# One pass over UTF-8 bytes: ASCII letters lower-cased, ASCII non-word bytes to spaces,
# everything else (non-ASCII) kept for the exact path.
_SPACES = bytes(
    b + 32 if 65 <= b <= 90 else b if b >= 0x80 or b in _WORD_BYTES else 0x20 for b in range(256)
)
SIGMA = "\u03a3"  # the one letter whose lower case depends on its neighbours (final sigma)
COMPACT_ROWS = 1 << 20  # sum the per-block tables once they hold this many rows


class Selected(NamedTuple):
    """What a profile keeps: the top words by (frequency desc, word asc), their frequencies,
    every kept word (min_df reached, not a stopword), and all word occurrences counted."""

    top_words: list[str]
    top_counts: list[int]
    kept: Iterable[str]  # streamed from Arrow by the fast engine
    n_words: int


class RegexCounts:
    """The reference engine: ``pattern.findall`` on each lower-cased document, ``Counter``s."""

    def __init__(self, pattern: re.Pattern[str], *, documents: bool) -> None:
        self.pattern = pattern
        self.tf: Counter[str] = Counter()
        self.df: Counter[str] | None = Counter() if documents else None
        self.n_words = 0

    def add(self, block: str, documents: Sequence[str] | None = None) -> None:
        """Count the documents of ``block`` (joined by ``SEPARATOR``), or ``documents``."""
        for document in block.split(SEPARATOR) if documents is None else documents:
            words = self.pattern.findall(document.lower())
            self.tf.update(words)
            if self.df is not None:
                self.df.update(set(words))
            self.n_words += len(words)

    def merge(self, other: RegexCounts) -> None:
        self.tf.update(other.tf)
        if self.df is not None and other.df is not None:
            self.df.update(other.df)
        self.n_words += other.n_words

    def select(self, stop: frozenset[str], *, top_k: int, min_df: int, by_df: bool) -> Selected:
        if self.df is None:  # min_df == 1: every counted word qualifies
            kept = [w for w in self.tf if w not in stop]
        else:
            kept = [w for w, df in self.df.items() if df >= min_df and w not in stop]
        freq = self.df if by_df else self.tf
        assert freq is not None
        top = heapq.nsmallest(top_k, kept, key=lambda w: (-freq[w], w))
        return Selected(top, [freq[w] for w in top], kept, self.n_words)


class ArrowCounts:
    """The fast engine for the profiles' word pattern (see the module docstring)."""

    def __init__(self, pattern: re.Pattern[str], *, documents: bool) -> None:
        self.pattern = pattern
        self.documents = documents
        self._tf: list[pa.Table] = []  # (t: token, n: occurrences) per block, summed when large
        self._df: list[pa.Table] = []  # (t: token, n: ASCII documents holding it)
        self._df_words: Counter[str] = Counter()  # words of the non-ASCII documents

    def add(self, block: str, documents: Sequence[str] | None = None) -> None:
        """Count the words of ``block`` (documents joined by ``SEPARATOR``); ``documents``: the
        same documents one by one, if the caller has them (else the block is split)."""
        import pyarrow.compute as pc

        if self.documents:
            self._add_documents(block.split(SEPARATOR) if documents is None else documents)
            return
        data = _lower_utf8(block).translate(_SPACES)
        counts = pc.value_counts(pc.list_flatten(pc.ascii_split_whitespace(_strings([data]))))
        _push(self._tf, counts.field(0), counts.field(1))

    def _add_documents(self, documents: Sequence[str]) -> None:
        """Occurrences and document frequencies from one tokenisation per document: the tokens
        are dictionary-encoded, and the (document, token) pairs of the ASCII documents are
        deduplicated in numpy; the other documents' word sets take the reference path."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ascii_docs = np.fromiter((d.isascii() for d in documents), bool, len(documents))
        for document in (d for d in documents if not d.isascii()):
            self._df_words.update(set(self.pattern.findall(document.lower())))
        lists = pc.ascii_split_whitespace(
            _strings([_lower_utf8(d).translate(_SPACES) for d in documents])
        )
        encoded = pc.list_flatten(lists).dictionary_encode()
        n_tokens = len(encoded.dictionary)
        if n_tokens == 0:
            return
        tokens = encoded.indices.to_numpy().astype(np.int64)
        _push(self._tf, encoded.dictionary, pa.array(np.bincount(tokens, minlength=n_tokens)))
        parents = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
        keep = ascii_docs[parents]
        pairs = np.sort(parents[keep] * n_tokens + tokens[keep])  # np.unique is slow in numpy 2.4
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        df = np.bincount(pairs % n_tokens, minlength=n_tokens)
        _push(self._df, encoded.dictionary.filter(df > 0), pa.array(df[df > 0]))

    def merge(self, other: ArrowCounts) -> None:
        for mine, theirs in ((self._tf, other._tf), (self._df, other._df)):
            for table in theirs:
                _push(mine, table["t"], table["n"])
        self._df_words.update(other._df_words)

    def select(self, stop: frozenset[str], *, top_k: int, min_df: int, by_df: bool) -> Selected:
        import pyarrow as pa
        import pyarrow.compute as pc

        words, n_words = _words(_summed(self._tf), self.pattern)
        table = words.rename_columns(["w", "tf"])
        if self.documents:
            df, _ = _words(_summed(self._df), self.pattern, extra=self._df_words)
            # every word occurs in some document, so the inner join keeps them all
            df = df.rename_columns(["w", "df"])
            table = table.join(df, "w", join_type="inner", use_threads=False)
            table = table.filter(pc.greater_equal(table["df"], min_df))
        stopwords = pa.array(sorted(stop), pa.large_string())
        table = table.filter(pc.invert(pc.is_in(table["w"], value_set=stopwords)))
        freq = "df" if by_df else "tf"
        keys = [(freq, "descending"), ("w", "ascending")]  # UTF-8 byte order = code point order
        # one full sort is faster here than select_k_unstable + a sort of the k
        top = table.take(pc.sort_indices(table, sort_keys=keys)[:top_k])
        return Selected(top["w"].to_pylist(), top[freq].to_pylist(), _stream(table["w"]), n_words)


def _stream(strings: pa.ChunkedArray, rows: int = 1 << 16) -> Iterator[str]:
    """The strings as Python objects, ``rows`` at a time (a million words are never all
    Python strings at once)."""
    for start in range(0, len(strings), rows):
        yield from strings.slice(start, rows).to_pylist()


def _lower_utf8(text: str) -> bytes:
    """``text`` as UTF-8, lower-cased where it must be now: only text holding a capital sigma
    (its lower case depends on the context, which tokens lose). Elsewhere ``_SPACES`` lowers
    ASCII letters and each distinct non-ASCII token is lower-cased when words are read out,
    which gives the same words: str.lower maps every other character on its own, and no
    character lowers to an ASCII non-word character (a token boundary)."""
    return (text.lower() if SIGMA in text else text).encode("utf-8")


def _strings(items: list[bytes]) -> pa.Array:
    """A large_string array over ``items`` (valid UTF-8) without a per-item Python call."""
    import pyarrow as pa

    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in items], out=offsets[1:])
    data = pa.py_buffer(b"".join(items))
    return pa.Array.from_buffers(pa.large_string(), len(items), [None, pa.py_buffer(offsets), data])


def _push(tables: list[pa.Table], tokens: pa.Array, counts: pa.Array) -> None:
    """Add a (token, count) table. ``tables[0]`` holds sums; the tables after it are summed
    into it once they hold as many rows as it does (and at least COMPACT_ROWS), so each row
    is summed O(log n) times however many distinct tokens there are."""
    import pyarrow as pa

    if len(tokens) == 0:
        return
    tokens = tokens.cast(pa.large_string())
    tables.append(pa.table({"t": tokens, "n": counts.cast(pa.int64())}))
    if len(tables) > 1 and sum(len(t) for t in tables[1:]) >= max(COMPACT_ROWS, len(tables[0])):
        tables[:] = [_summed(tables)]


def _summed(tables: list[pa.Table]) -> pa.Table:
    """One (t, n) table with one row per distinct token."""
    import pyarrow as pa

    if not tables:
        return pa.table({"t": pa.array([], pa.large_string()), "n": pa.array([], pa.int64())})
    if len(tables) == 1:
        return tables[0]
    # dictionary_encode + bincount: a few times faster than Table.group_by here; float64 sums
    # of integers are exact below 2^53
    table = pa.concat_tables(tables)
    encoded = table["t"].combine_chunks().dictionary_encode()
    counts = table["n"].to_numpy()
    sums = np.bincount(
        encoded.indices.to_numpy(), weights=counts, minlength=len(encoded.dictionary)
    )
    return pa.table({"t": encoded.dictionary, "n": pa.array(sums.astype(np.int64))})


def _words(
    tokens: pa.Table, pattern: re.Pattern[str], extra: Counter[str] | None = None
) -> tuple[pa.Table, int]:
    """Token counts -> (word, count) with one row per word, and the word occurrences counted.

    An ASCII token is itself a word (all letters, 2+ long) or none; a non-ASCII token goes
    through ``pattern``, and its count goes to each of its matches. ``extra``: more word counts.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    ascii_ = pc.string_is_ascii(tokens["t"])
    simple = pc.and_(
        ascii_,
        pc.and_(pc.ascii_is_alpha(tokens["t"]), pc.greater_equal(pc.binary_length(tokens["t"]), 2)),
    )
    words = tokens.filter(simple)
    n_words = int(pc.sum(words["n"]).as_py() or 0)
    more: Counter[str] = Counter(extra or {})
    others = tokens.filter(pc.invert(ascii_))
    for token, count in zip(others["t"].to_pylist(), others["n"].to_pylist(), strict=True):
        for match in pattern.findall(token.lower()):
            more[match] += count
            n_words += count
    if more:
        added = pa.table(
            {"t": pa.array(list(more), pa.large_string()), "n": pa.array(list(more.values()))}
        )
        words = _summed([words, added.cast(words.schema)])
    return words, n_words


def make_counts(
    pattern: re.Pattern[str], *, fast: bool, documents: bool
) -> ArrowCounts | RegexCounts:
    """The engine for ``pattern``: Arrow when ``fast`` (the profiles' own pattern only)."""
    return (ArrowCounts if fast else RegexCounts)(pattern, documents=documents)


__all__ = ["ArrowCounts", "RegexCounts", "Selected", "make_counts"]

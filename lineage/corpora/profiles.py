"""Vocabulary profiles of text and the domain proximity between them (papers/001 App. D).

A profile is what the router needs to say how close two bodies of text are: the ``top_k``
most frequent words (stopwords excluded) with their counts, and the set of every word whose
document frequency reaches ``min_df``. Two measures compare profiles:

- ``overlap``: |A ∩ B| / k over the two top-k word sets, k = top_k: the paper's Table 8
  (after Gururangan et al. 2020; Wikipedia+Books vs CS vs BIO gave 19–26 %);
- ``jaccard``: |V_a ∩ V_b| / |V_a ∪ V_b| over the full vocabularies (no top-k cut), as in
  Gururangan et al.'s script with ``min_df=3``.

Everything here is pure (no I/O). Profiling streams: documents are buffered into blocks of
``BLOCK_CHARS`` and counted a block at a time (``lineage.corpora.wordcounts``: pyarrow for the
default word pattern), and only the counts are kept: O(distinct words), a few dozen bytes each
(each 1.5 MB bundled domain has about 10k distinct words besides stopwords). A finished profile
keeps top_k words and counts, plus the vocabulary as sorted 64-bit hashes (8 bytes a word; a
collision among a million words has odds of about 1 in 10^7), which is all Jaccard needs.
``benchmarks/bench_profiles.py`` measures the fast path against the reference one.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Literal, NamedTuple

import numpy as np

from lineage.corpora.wordcounts import SEPARATOR, make_counts

__all__ = [
    "STOPWORD_LISTS",
    "WORD_PATTERN",
    "ProfileCounter",
    "SharedTerm",
    "VocabularyProfile",
    "iter_documents",
    "jaccard",
    "overlap",
    "profile_texts",
    "proximity_matrix",
    "shared_terms",
    "stopword_list",
    "tokenize",
]

# Whole alphabetic words of 2+ letters, matched on lower-cased text: ``\w`` minus digits and
# "_", so "x2", "__init__" and "3rd" are not words, "well-known" gives "well" and "known",
# "Austen's" gives "austen" (the lone "s" is too short). Non-ASCII letters count ("café").
WORD_PATTERN = r"\b[^\W\d_]{2,}\b"

Measure = Literal["tf", "df"]
Proximity = Literal["overlap", "jaccard"]
PROFILE_FORMAT = 1  # bump when to_dict's layout changes
BLOCK_CHARS = 2_000_000  # documents are counted in blocks of about this many characters
Engine = Literal["arrow", "regex"]
STOPWORDS_FILE = "stopwords-sklearn-english.txt"  # scikit-learn's list, with its licence


def _english_stopwords() -> frozenset[str]:
    """scikit-learn's ENGLISH_STOP_WORDS (318 words), from the copy beside this module.

    ``import sklearn`` pulls in scipy and pandas (about 7 s on 2 busy cores, against 0.8 s for
    this whole module) for one constant, so the list ships as a data file with scikit-learn's
    licence; ``tests/test_profiles.py`` checks it equals scikit-learn's public constant.
    """
    text = resources.files("lineage.corpora").joinpath(STOPWORDS_FILE).read_text(encoding="utf-8")
    return frozenset(w for w in text.splitlines() if w and not w.startswith("#"))


# Stopword lists by the name a profile records; the loader runs on first use.
STOPWORD_LISTS = {"sklearn-english": _english_stopwords, "none": frozenset}


@cache
def stopword_list(name: str) -> frozenset[str]:
    """The stopword list recorded as ``name`` in a profile (see ``STOPWORD_LISTS``)."""
    if name not in STOPWORD_LISTS:
        raise ValueError(f"unknown stopword list {name!r}; known: {sorted(STOPWORD_LISTS)}")
    return STOPWORD_LISTS[name]()


@lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def tokenize(text: str, pattern: str = WORD_PATTERN) -> list[str]:
    """The words of ``text``: lower-cased, then every match of ``pattern``; stopwords kept."""
    return _compiled(pattern).findall(text.lower())


def iter_documents(lines: Iterable[str]) -> Iterator[str]:
    """Split a stream of lines into documents separated by blank lines (the bundled format).

    Consecutive non-blank lines form one document, joined by "\\n"; a document never ends
    with a newline. Streams: only the current document is held.
    """
    current: list[str] = []
    for line in lines:
        line = line.rstrip("\n")
        if line.strip():
            current.append(line)
        elif current:
            yield "\n".join(current)
            current = []
    if current:
        yield "\n".join(current)


def _word_hashes(words: Iterable[str]) -> np.ndarray:
    """Sorted unique 64-bit BLAKE2b hashes of ``words``: [n] uint64 (stable across processes)."""
    digests = bytearray()  # filled one word at a time: no list of a million digests
    for w in words:
        digests += hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest()
    hashes = np.sort(np.frombuffer(digests, dtype="<u8"))  # np.unique: slow in numpy 2.4
    return hashes[np.concatenate(([True], hashes[1:] != hashes[:-1]))] if len(hashes) else hashes


@dataclass(frozen=True)
class VocabularyProfile:
    """Word statistics of one body of text (a domain or a shard).

    ``top_words[i]`` has frequency ``top_counts[i]`` (by ``measure``), most frequent first, ties
    broken alphabetically; only words with document frequency >= ``min_df`` and not in the
    stopword list take part. ``vocabulary``: [n_vocabulary] uint64, sorted 64-bit hashes of
    every such word, top-k cut or not.
    """

    top_words: tuple[str, ...]
    top_counts: tuple[int, ...]
    vocabulary: np.ndarray = field(repr=False, compare=False)
    top_k: int
    min_df: int
    stopwords: str
    token_pattern: str
    measure: Measure
    n_words: int  # tokens matched by the pattern, stopwords included
    n_documents: int
    digest: str  # sha256 of the documents joined by a blank line, plus a final "\n"

    def __post_init__(self) -> None:
        if len(self.top_words) != len(self.top_counts):
            raise ValueError("top_words and top_counts differ in length")
        if len(self.top_words) > self.top_k:
            raise ValueError(f"{len(self.top_words)} top words exceed top_k={self.top_k}")
        if self.vocabulary.dtype != np.uint64 or self.vocabulary.ndim != 1:
            raise ValueError("vocabulary must be a 1-D uint64 array of word hashes")
        self.vocabulary.flags.writeable = False  # frozen means the hashes too

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ skips the array (ndarray has no scalar ==); to_dict holds it all.
        if not isinstance(other, VocabularyProfile):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @property
    def n_vocabulary(self) -> int:
        """Number of distinct non-stopwords with document frequency >= min_df."""
        return int(self.vocabulary.shape[0])

    def ranks(self) -> dict[str, int]:
        """1-based rank of every top word."""
        return {w: i + 1 for i, w in enumerate(self.top_words)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the vocabulary hashes travel as base64 of little-endian uint64."""
        return {
            "format": PROFILE_FORMAT,
            "top_words": list(self.top_words),
            "top_counts": list(self.top_counts),
            "vocabulary": base64.b64encode(self.vocabulary.astype("<u8").tobytes()).decode(),
            "top_k": self.top_k,
            "min_df": self.min_df,
            "stopwords": self.stopwords,
            "token_pattern": self.token_pattern,
            "measure": self.measure,
            "n_words": self.n_words,
            "n_documents": self.n_documents,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VocabularyProfile:
        """Inverse of ``to_dict``."""
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"unsupported profile format {data.get('format')!r}")
        raw = base64.b64decode(data["vocabulary"])
        return cls(
            top_words=tuple(data["top_words"]),
            top_counts=tuple(int(c) for c in data["top_counts"]),
            vocabulary=np.frombuffer(raw, dtype="<u8").astype(np.uint64),
            top_k=int(data["top_k"]),
            min_df=int(data["min_df"]),
            stopwords=str(data["stopwords"]),
            token_pattern=str(data["token_pattern"]),
            measure=data["measure"],
            n_words=int(data["n_words"]),
            n_documents=int(data["n_documents"]),
            digest=str(data["digest"]),
        )


class ProfileCounter:
    """The streaming accumulator behind ``profile_texts``: ``add`` documents, then ``profile``.

    Holds the word counts, a running sha256 and at most ``BLOCK_CHARS`` of buffered
    documents, never the whole text. Documents are counted in blocks of many at a time
    (``lineage.corpora.wordcounts``: pyarrow for the default word pattern, the reference
    ``re.findall`` + ``Counter`` path for any other, or when ``engine="regex"``).
    """

    def __init__(
        self,
        *,
        top_k: int = 10_000,
        min_df: int = 1,
        stopwords: str = "sklearn-english",
        token_pattern: str = WORD_PATTERN,
        measure: Measure = "tf",
        engine: Engine | None = None,
    ) -> None:
        if top_k < 1 or min_df < 1:
            raise ValueError("top_k and min_df must be >= 1")
        if measure not in ("tf", "df"):
            raise ValueError(f"measure must be 'tf' or 'df', not {measure!r}")
        if engine not in (None, "arrow", "regex"):
            raise ValueError(f"engine must be 'arrow' or 'regex', not {engine!r}")
        if engine == "arrow" and token_pattern != WORD_PATTERN:
            raise ValueError("the arrow engine counts WORD_PATTERN only")
        self._stop = stopword_list(stopwords)  # fails early on an unknown list name
        self.params: dict[str, Any] = {"top_k": top_k, "min_df": min_df, "stopwords": stopwords}
        self.params |= {"token_pattern": token_pattern, "measure": measure}
        fast = engine == "arrow" or (engine is None and token_pattern == WORD_PATTERN)
        # Document frequencies cost a set per document; skip them when nothing reads them.
        documents = min_df > 1 or measure == "df"
        self._counts = make_counts(_compiled(token_pattern), fast=fast, documents=documents)
        self._sha = hashlib.sha256()
        self._buffer: list[str] = []
        self._buffered = 0
        self.n_documents = 0

    def add(self, text: str) -> None:
        """Count one document (buffered: counted with the next block)."""
        self._buffer.append(text)
        self._buffered += len(text)
        if self._buffered >= BLOCK_CHARS:
            self._flush()

    def add_block(self, block: str, n_documents: int, *, count: bool = True) -> None:
        """Count ``n_documents`` documents joined by a blank line (none holds a blank line).

        ``count=False`` only advances the digest and the document count: for a counter that
        takes its counts from others by ``merge`` (a domain from its shards).
        """
        self._flush()
        self._digest(block, n_documents)
        if count:
            self._counts.add(block)

    def merge(self, other: ProfileCounter) -> None:
        """Add the word counts of ``other`` (same parameters); digests do not merge."""
        if other.params != self.params or type(other._counts) is not type(self._counts):
            raise ValueError("cannot merge counters built with different parameters")
        other._flush()
        self._flush()
        self._counts.merge(other._counts)  # type: ignore[arg-type]  # same type, checked above

    def _digest(self, text: str, n_documents: int) -> None:
        self._sha.update(((SEPARATOR if self.n_documents else "") + text).encode("utf-8"))
        self.n_documents += n_documents

    def _flush(self) -> None:
        if self._buffer:
            block = SEPARATOR.join(self._buffer)
            self._digest(block, len(self._buffer))
            self._counts.add(block, self._buffer)
            self._buffer, self._buffered = [], 0

    def profile(self) -> VocabularyProfile:
        """The profile of everything added so far (the counter stays usable)."""
        self._flush()
        chosen = self._counts.select(
            self._stop,
            top_k=self.params["top_k"],
            min_df=self.params["min_df"],
            by_df=self.params["measure"] == "df",
        )
        sha = self._sha.copy()
        if self.n_documents:
            sha.update(b"\n")  # the final newline of the bundled files
        return VocabularyProfile(
            top_words=tuple(chosen.top_words),
            top_counts=tuple(chosen.top_counts),
            vocabulary=_word_hashes(chosen.kept),
            n_words=chosen.n_words,
            n_documents=self.n_documents,
            digest=sha.hexdigest(),
            **self.params,
        )


def profile_texts(
    texts: Iterable[str],
    *,
    top_k: int = 10_000,
    min_df: int = 1,
    stopwords: str = "sklearn-english",
    token_pattern: str = WORD_PATTERN,
    measure: Measure = "tf",
    engine: Engine | None = None,
) -> VocabularyProfile:
    """Profile a stream of documents (each item one document), holding one at a time.

    ``top_k``: how many top words to keep (paper: 10k). ``min_df``: a word must occur in at
    least this many documents to count at all (top words and vocabulary). ``stopwords``: a
    name in ``STOPWORD_LISTS``. ``measure``: rank top words by occurrences ("tf", the
    paper's "most frequent words") or by documents containing them ("df"). ``engine``:
    see ``ProfileCounter`` (the default picks the fast one the pattern allows).
    """
    if isinstance(texts, str):  # a lone string would be profiled character by character
        raise TypeError("texts must be an iterable of documents, not one str")
    counter = ProfileCounter(
        top_k=top_k,
        min_df=min_df,
        stopwords=stopwords,
        token_pattern=token_pattern,
        measure=measure,
        engine=engine,
    )
    for text in texts:
        counter.add(text)
    return counter.profile()


# --- proximity --------------------------------------------------------------------------------


def _check_comparable(a: VocabularyProfile, b: VocabularyProfile, fields: tuple[str, ...]) -> None:
    """Profiles built differently measure different things: refuse to compare them."""
    diff = {f: (getattr(a, f), getattr(b, f)) for f in fields if getattr(a, f) != getattr(b, f)}
    if diff:
        raise ValueError(f"profiles are not comparable, parameters differ: {diff}")


def overlap(a: VocabularyProfile, b: VocabularyProfile) -> float:
    """|A ∩ B| / k for the top-word sets A, B (papers/001 App. D), k = top_k.

    When a profile has fewer than top_k words (a small shard), k is the larger of the two set
    sizes, so a profile still has overlap 1 with itself. Two empty profiles give 0.
    """
    _check_comparable(a, b, ("top_k", "min_df", "stopwords", "token_pattern", "measure"))
    k = max(len(a.top_words), len(b.top_words))
    if k == 0:
        return 0.0
    return len(set(a.top_words) & set(b.top_words)) / k


def jaccard(a: VocabularyProfile, b: VocabularyProfile) -> float:
    """|V_a ∩ V_b| / |V_a ∪ V_b| over all words with document frequency >= min_df.

    The top-k cut plays no part (Gururangan et al.'s script: ``min_df=3``, no cut). Two
    empty vocabularies give 0.
    """
    _check_comparable(a, b, ("min_df", "stopwords", "token_pattern"))
    inter = np.intersect1d(a.vocabulary, b.vocabulary, assume_unique=True).shape[0]
    union = a.n_vocabulary + b.n_vocabulary - inter
    return inter / union if union else 0.0


MEASURES = {"overlap": overlap, "jaccard": jaccard}


def proximity_matrix(
    profiles: Mapping[str, VocabularyProfile], measure: Proximity = "overlap"
) -> tuple[list[str], np.ndarray]:
    """Pairwise proximity of named profiles: (names in mapping order, [n, n] float64).

    Symmetric, with 1.0 on the diagonal by definition.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}, not {measure!r}")
    fn = MEASURES[measure]
    names = list(profiles)
    n = len(names)
    matrix = np.eye(n, dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i, j] = matrix[j, i] = fn(profiles[names[i]], profiles[names[j]])
    return names, matrix


class SharedTerm(NamedTuple):
    """A top word two profiles share, with its 1-based rank in each."""

    word: str
    rank_a: int
    rank_b: int


def shared_terms(a: VocabularyProfile, b: VocabularyProfile, n: int = 10) -> list[SharedTerm]:
    """The ``n`` shared top words ranked highest in both: by rank_a + rank_b, then word.

    For explanations ("cs and bio both use *function*, *cell*, …").
    """
    ra, rb = a.ranks(), b.ranks()
    shared = [SharedTerm(w, ra[w], rb[w]) for w in ra.keys() & rb.keys()]
    return heapq.nsmallest(n, shared, key=lambda t: (t.rank_a + t.rank_b, t.word))

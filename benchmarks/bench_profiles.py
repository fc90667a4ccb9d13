"""Throughput of vocabulary profiling on the bundled corpora, and the proximity it yields.

Run: ``.venv/bin/python benchmarks/bench_profiles.py [--repeats 3]``. Single process, so
MB/s is per core. Compares the exact ``Counter`` used by ``lineage.corpora.profiles`` (with and
without document frequencies) against a hashing alternative (scikit-learn's HashingVectorizer,
column sums of 2^20 buckets), which keeps no words and so could not name the top words anyway;
then prints both proximity matrices (overlap of the top-10k words; Jaccard at min_df 1 and 3).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lineage.corpora.profiles import (
    WORD_PATTERN,
    VocabularyProfile,
    iter_documents,
    profile_texts,
    proximity_matrix,
    stopword_list,
)

DOMAINS = Path(__file__).resolve().parent.parent / "domains"
NAMES = ("literature", "cs", "bio")


def stream(name: str) -> Iterator[str]:
    """Documents of a bundled domain, decompressed on the fly."""
    with gzip.open(DOMAINS / name / f"{name}.txt.gz", "rt", encoding="utf-8") as fh:
        yield from iter_documents(fh)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hashing_counts(docs: list[str]) -> np.ndarray:
    """Total count per hash bucket: [2^20] float64 (the words themselves are lost)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(
        token_pattern=WORD_PATTERN,
        stop_words=sorted(stopword_list("sklearn-english")),
        alternate_sign=False,
        norm=None,
        n_features=2**20,
    )
    total = np.zeros(2**20)
    for i in range(0, len(docs), 1000):  # batches: streaming, like the counter
        total += np.asarray(vec.transform(docs[i : i + 1000]).sum(axis=0)).ravel()
    return total


def throughput(repeats: int) -> None:
    columns = ("counter tf", "+df", "gz stream", "hashing")
    print(f"{'domain':>10} {'MB':>5}" + "".join(f"{c:>12}" for c in columns))
    hashing_counts(["warm up the import"])
    for name in NAMES:
        docs = list(stream(name))
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        rates = [
            mb / best_of(lambda d=docs: profile_texts(d), repeats),
            mb / best_of(lambda d=docs: profile_texts(d, min_df=3), repeats),
            mb / best_of(lambda n=name: profile_texts(stream(n)), repeats),
            mb / best_of(lambda d=docs: hashing_counts(d), repeats),
        ]
        print(f"{name:>10} {mb:5.2f}" + "".join(f"{r:12.1f}" for r in rates))
    print("MB/s per core. counter tf: the default (min_df=1); +df: min_df=3 also counts document")
    print("frequencies; gz stream: the same from the .gz file; hashing: HashingVectorizer sums.")


def print_matrix(title: str, profiles: dict[str, VocabularyProfile], measure: str) -> None:
    names, m = proximity_matrix(profiles, measure)  # type: ignore[arg-type]
    print(f"\n{title}")
    print(" " * 11 + "".join(f"{n:>11}" for n in names))
    for n, row in zip(names, m, strict=True):
        print(f"{n:>11}" + "".join(f"{v:11.1%}" for v in row))


def proximity() -> None:
    for min_df in (1, 3):
        profiles = {name: profile_texts(stream(name), min_df=min_df) for name in NAMES}
        sizes = ", ".join(
            f"{n}: {p.n_documents} docs, {p.n_words} words, {p.n_vocabulary} vocabulary, "
            f"{len(json.dumps(p.to_dict())) / 1e3:.0f} kB as JSON"
            for n, p in profiles.items()
        )
        print(f"\nmin_df={min_df}: {sizes}")
        print_matrix(f"overlap of the top-10k words, min_df={min_df}", profiles, "overlap")
        print_matrix(f"jaccard of the full vocabularies, min_df={min_df}", profiles, "jaccard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    throughput(args.repeats)
    proximity()


if __name__ == "__main__":
    main()

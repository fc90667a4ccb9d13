"""Throughput of vocabulary profiling on the bundled corpora, old path against new, and the
proximity it yields.

Run: ``.venv/bin/python benchmarks/bench_profiles.py [--repeats 5]``. Times are the process's
CPU seconds (``time.process_time``, all its threads), so MB/s is per core and a machine busy
with other processes slows it less than wall time would. ``old`` is the reference engine
(``engine="regex"``: ``re.findall`` on each lower-cased document into ``Counter``s, the profiles
of before #19); ``new`` is the default (``lineage.corpora.wordcounts``: blocks of documents
split at non-word ASCII bytes and counted by pyarrow). Both give byte-identical profiles
(checked here and in tests/test_profiles.py). Old and new runs alternate and the best of
``--repeats`` counts, so a busy machine slows both alike; the ratio is the figure to compare
across machines. Then both proximity matrices (overlap of the top-10k words; Jaccard at min_df 1
and 3).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lineage.corpora.profiles import (
    VocabularyProfile,
    iter_documents,
    profile_texts,
    proximity_matrix,
)

DOMAINS = Path(__file__).resolve().parent.parent / "domains"
NAMES = ("literature", "cs", "bio")


def stream(name: str) -> Iterator[str]:
    """Documents of a bundled domain, decompressed on the fly."""
    with gzip.open(DOMAINS / name / f"{name}.txt.gz", "rt", encoding="utf-8") as fh:
        yield from iter_documents(fh)


CLOCK = time.process_time  # CPU seconds of this process, all threads: MB/s per core


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fewest CPU seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return min(times)


def paired(
    old: Callable[[], object], new: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Fewest CPU seconds of ``old`` and ``new``, run alternately ``repeats`` times each."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((old, times[0]), (new, times[1])):
            start = CLOCK()
            fn()
            out.append(CLOCK() - start)
    return min(times[0]), min(times[1])


def throughput(repeats: int) -> None:
    cases = {"tf": {}, "min_df=3": {"min_df": 3}}
    header = "".join(f"{f'old {c}':>13}{f'new {c}':>13}{'ratio':>7}" for c in cases)
    print(f"{'domain':>10} {'MB':>5}{header}{'new gz stream':>15}")
    profile_texts(["warm up the imports"])
    for name in NAMES:
        docs = list(stream(name))
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        row = ""
        for params in cases.values():
            old = profile_texts(docs, engine="regex", **params)  # type: ignore[arg-type]
            assert old == profile_texts(docs, **params), "new and old profiles differ"  # type: ignore[arg-type]
            t_old, t_new = paired(
                lambda p=params, d=docs: profile_texts(d, engine="regex", **p),  # type: ignore[misc]
                lambda p=params, d=docs: profile_texts(d, **p),  # type: ignore[misc]
                repeats,
            )
            row += f"{mb / t_old:13.1f}{mb / t_new:13.1f}{t_old / t_new:6.1f}x"
        t_gz = best_of(lambda n=name: profile_texts(stream(n)), repeats)
        print(f"{name:>10} {mb:5.2f}{row}{mb / t_gz:15.1f}")
    print("MB/s per core; tf: the default (min_df=1); min_df=3 also counts document")
    print("frequencies; new gz stream: the new path reading the .gz file as it goes.")


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
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    throughput(args.repeats)
    proximity()


if __name__ == "__main__":
    main()

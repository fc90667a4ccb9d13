"""Vocabulary profiles and domain proximity: the math on small hand-made texts, then the
bundled corpora (cards, digests, and the proximity matrix of literature / cs / bio)."""

from __future__ import annotations

import gzip
import json
import random
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lineage.corpora.profiles import (
    VocabularyProfile,
    iter_documents,
    jaccard,
    overlap,
    profile_texts,
    proximity_matrix,
    shared_terms,
    stopword_list,
    tokenize,
)

DOMAINS = Path(__file__).resolve().parent.parent / "domains"
NAMES = ("literature", "cs", "bio")


def random_docs(alphabet: str, n_docs: int, seed: int) -> list[str]:
    """Documents of random 3-letter words over ``alphabet`` (no English stopwords arise)."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice(alphabet) for _ in range(3))  # noqa: E731
    return [" ".join(word() for _ in range(rng.randint(1, 30))) for _ in range(n_docs)]


# --- tokenisation and counting ----------------------------------------------------------------


def test_tokenize_keeps_whole_alphabetic_words_of_two_letters() -> None:
    text = "Well-known x2 __init__ Austen's CAFÉ 3rd a I an"
    assert tokenize(text) == ["well", "known", "austen", "café", "an"]


def test_hand_computed_profile() -> None:
    docs = ["Apple banana apple.", "banana CHERRY; the apple", "cherry date and the"]
    p = profile_texts(docs, top_k=3)
    # apple 3, banana 2, cherry 2, date 1; "the", "and" are stopwords; ties go alphabetically
    assert p.top_words == ("apple", "banana", "cherry")
    assert p.top_counts == (3, 2, 2)
    assert p.n_vocabulary == 4  # date is in the vocabulary, below the top-k cut
    assert (p.n_words, p.n_documents) == (11, 3)
    by_df = profile_texts(docs, top_k=3, measure="df")
    assert by_df.top_words == ("apple", "banana", "cherry")
    assert by_df.top_counts == (2, 2, 2)  # apple occurs 3 times but in 2 documents
    with pytest.raises(TypeError, match="iterable of documents"):
        profile_texts("a single string is not a corpus")
    with pytest.raises(ValueError, match="read-only"):
        p.vocabulary[0] = 0  # frozen profile, frozen hashes


def test_stopwords_excluded_and_recorded() -> None:
    docs = ["the cat and the hat", "the hat is on the cat"]
    p = profile_texts(docs)
    assert set(p.top_words) == {"cat", "hat"}
    assert p.stopwords == "sklearn-english"
    assert {"the", "and", "is", "on"} <= stopword_list("sklearn-english")
    q = profile_texts(docs, stopwords="none")
    assert q.top_words[0] == "the" and q.top_counts[0] == 4
    with pytest.raises(ValueError, match="unknown stopword list"):
        profile_texts(docs, stopwords="klingon")


def test_min_df_respected() -> None:
    docs = ["zeta zeta zeta zeta", "zeta beta", "beta gamma", "beta gamma"]
    # zeta: 5 occurrences in 2 documents; beta: 3 in 3; gamma: 2 in 2
    assert profile_texts(docs, min_df=1).top_words == ("zeta", "beta", "gamma")
    assert profile_texts(docs, min_df=2).top_words == ("zeta", "beta", "gamma")
    p3 = profile_texts(docs, min_df=3)
    assert p3.top_words == ("beta",) and p3.n_vocabulary == 1


def test_streaming_equals_one_shot_reference() -> None:
    """A generator, fed once, gives what scikit-learn's CountVectorizer gives on the list.

    The only test that imports scikit-learn (seconds: it pulls in scipy and pandas).
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    assert stopword_list("sklearn-english") == ENGLISH_STOP_WORDS  # the copy lineage ships

    docs = [*random_docs("abcdefgh", 300, seed=0), "Mixed CASE words, words, words"]
    for min_df in (1, 2, 5):
        streamed = profile_texts((d for d in docs), top_k=50, min_df=min_df)
        assert streamed == profile_texts(list(docs), top_k=50, min_df=min_df)
        ref = CountVectorizer(
            token_pattern=streamed.token_pattern,
            stop_words=sorted(stopword_list("sklearn-english")),
            min_df=min_df,
        )
        totals = np.asarray(ref.fit_transform(docs).sum(axis=0)).ravel()
        counts = dict(zip(ref.get_feature_names_out(), totals.tolist(), strict=True))
        expected = sorted(counts, key=lambda w: (-counts[w], w))[:50]
        assert list(streamed.top_words) == expected
        assert list(streamed.top_counts) == [counts[w] for w in expected]
        assert streamed.n_vocabulary == len(counts)


def test_dict_round_trip_through_json() -> None:
    p = profile_texts(random_docs("abcdef", 100, seed=1), top_k=20, min_df=2)
    q = VocabularyProfile.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p
    assert np.array_equal(q.vocabulary, p.vocabulary) and q.vocabulary.dtype == np.uint64
    assert p != profile_texts(random_docs("abcdef", 100, seed=2), top_k=20, min_df=2)
    with pytest.raises(ValueError, match="format"):
        VocabularyProfile.from_dict({**p.to_dict(), "format": 99})


# --- proximity --------------------------------------------------------------------------------


def test_identities_self_symmetry_disjoint() -> None:
    a = profile_texts(random_docs("abcdefg", 200, seed=2), top_k=100)
    b = profile_texts(random_docs("defghij", 200, seed=3), top_k=100)
    c = profile_texts(random_docs("klmnopq", 200, seed=4), top_k=100)
    for fn in (overlap, jaccard):
        assert fn(a, a) == 1.0
        assert fn(a, b) == fn(b, a)
        assert 0.0 < fn(a, b) < 1.0  # they share the words over "defg"
        assert fn(a, c) == 0.0  # no letter in common, no word in common


def test_overlap_and_jaccard_hand_computed() -> None:
    a = profile_texts(["alpha alpha alpha beta beta gamma delta"], top_k=3)
    b = profile_texts(["beta beta beta alpha alpha omega delta"], top_k=3)
    # delta and gamma tie at one occurrence: the alphabetical tie-break keeps delta
    assert a.top_words == ("alpha", "beta", "delta")
    assert b.top_words == ("beta", "alpha", "delta")
    assert overlap(a, b) == 1.0
    c = profile_texts(["beta beta beta alpha alpha omega"], top_k=3)
    assert c.top_words == ("beta", "alpha", "omega")
    assert overlap(a, c) == pytest.approx(2 / 3)
    # vocabularies {alpha, beta, gamma, delta} and {alpha, beta, omega}: 2 shared of 5
    assert jaccard(a, c) == pytest.approx(2 / 5)


def test_small_profiles_and_empty() -> None:
    a = profile_texts(["alpha beta"], top_k=10)
    b = profile_texts(["alpha gamma delta"], top_k=10)
    assert overlap(a, a) == 1.0
    assert overlap(a, b) == pytest.approx(1 / 3)  # k = the larger set, not the unused top_k
    empty = profile_texts(["12 34", ""], top_k=10)
    assert empty.top_words == () and empty.n_documents == 2
    assert overlap(empty, empty) == 0.0 and jaccard(empty, a) == 0.0


def test_incomparable_profiles_are_refused() -> None:
    docs = random_docs("abcdef", 50, seed=5)
    with pytest.raises(ValueError, match="top_k"):
        overlap(profile_texts(docs, top_k=10), profile_texts(docs, top_k=20))
    with pytest.raises(ValueError, match="min_df"):
        jaccard(profile_texts(docs, min_df=1), profile_texts(docs, min_df=3))
    # Jaccard ignores the top-k cut, so different top_k is fine there
    assert jaccard(profile_texts(docs, top_k=10), profile_texts(docs, top_k=20)) == 1.0


def test_proximity_matrix_and_shared_terms() -> None:
    profiles = {
        "x": profile_texts(["cell cell cell protein protein gene"], top_k=3),
        "y": profile_texts(["gene gene gene protein protein class"], top_k=3),
        "z": profile_texts(["loop loop type"], top_k=3),
    }
    names, m = proximity_matrix(profiles, "overlap")
    assert names == ["x", "y", "z"]
    np.testing.assert_array_equal(np.diag(m), 1.0)
    np.testing.assert_array_equal(m, m.T)
    assert m[0, 1] == pytest.approx(2 / 3) and m[0, 2] == 0.0
    # shared: protein (rank 2 in x, 2 in y), gene (3 in x, 1 in y): rank sums 4 and 4 → word
    assert shared_terms(profiles["x"], profiles["y"]) == [("gene", 3, 1), ("protein", 2, 2)]
    assert shared_terms(profiles["x"], profiles["y"], n=1)[0].word == "gene"
    with pytest.raises(ValueError, match="measure"):
        proximity_matrix(profiles, "cosine")  # type: ignore[arg-type]


# --- the bundled corpora ----------------------------------------------------------------------


def bundled_documents(name: str) -> Iterator[str]:
    """Stream the documents of a bundled domain without reading the file whole."""
    with gzip.open(DOMAINS / name / f"{name}.txt.gz", "rt", encoding="utf-8") as fh:
        yield from iter_documents(fh)


@pytest.fixture(scope="module")
def bundled() -> dict[str, VocabularyProfile]:
    return {name: profile_texts(bundled_documents(name)) for name in NAMES}


def test_cards_describe_the_files(bundled: dict[str, VocabularyProfile]) -> None:
    for name in NAMES:
        card = tomllib.loads((DOMAINS / name / "card.toml").read_text(encoding="utf-8"))
        assert card["name"] == name
        assert card["description"] and card["licence"] and card["attribution"]
        assert all(s["package"] and s["version"] and s["file"] for s in card["sources"])
        text = gzip.decompress((DOMAINS / name / card["file"]).read_bytes())
        assert len(text) == card["sizes"]["bytes"]
        assert 1_000_000 <= len(text) <= 2_000_000
        assert b"\n\n\n" not in text and text.endswith(b"\n") and not text.endswith(b"\n\n")
        # the profile's streaming digest is the sha256 of the file: documents survived intact
        assert bundled[name].digest == card["sizes"]["sha256"]
        assert bundled[name].n_documents == card["sizes"]["documents"]


def test_bundled_domains_are_far_apart(bundled: dict[str, VocabularyProfile]) -> None:
    for measure in ("overlap", "jaccard"):
        names, m = proximity_matrix(bundled, measure)
        print(
            f"\n{measure}:\n"
            + "\n".join(
                f"{n:>10} " + " ".join(f"{v:6.3f}" for v in row)
                for n, row in zip(names, m, strict=True)
            )
        )
        np.testing.assert_array_equal(np.diag(m), 1.0)
        off = m[~np.eye(len(names), dtype=bool)]
        assert (off > 0.02).all(), "real English domains share common words"
        assert (off < 0.5).all(), "the three domains should be clearly different"
    # each domain's top words say what it is about
    assert {"mr", "mrs", "miss"} <= set(bundled["literature"].top_words[:10])
    assert {"python", "function", "class"} <= set(bundled["cs"].top_words[:10])
    assert {"cell", "protein", "activity"} <= set(bundled["bio"].top_words[:10])


# --- the fast counting engine equals the reference ------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fast_profiles_equal_the_reference_byte_for_byte(name: str) -> None:
    """pyarrow counting (the default) against the regex + Counter path (the profiles of
    before): the same JSON, vocabulary hashes included, at min_df 1 and 3 and by df."""
    docs = list(bundled_documents(name))
    for params in ({}, {"min_df": 3}, {"measure": "df", "top_k": 2000}):
        fast = profile_texts(docs, **params)  # type: ignore[arg-type]
        reference = profile_texts(docs, engine="regex", **params)  # type: ignore[arg-type]
        assert json.dumps(fast.to_dict()) == json.dumps(reference.to_dict()), params


def test_fast_engine_handles_what_ascii_splitting_cannot() -> None:
    """Non-ASCII letters, curly quotes, non-breaking spaces, final sigma, digits, underscores,
    the same word from several tokens, and document frequencies across them."""
    docs = [
        "Café café CAFÉ naïve’s d’Artagnan don’t don",
        "ΟΔΟΣ οδός x2 __init__ snake_case 3rd wörd\u00a0wörd",
        "don't do it; ½ⅻ half",
        "",
        "\u2028line\u2029sep\x0cform",
    ]
    for params in ({}, {"min_df": 2}, {"measure": "df"}):
        fast = profile_texts(docs, stopwords="none", **params)  # type: ignore[arg-type]
        reference = profile_texts(docs, stopwords="none", engine="regex", **params)  # type: ignore[arg-type]
        assert fast == reference, params
        assert fast.n_words == reference.n_words > 0
    assert profile_texts(docs, stopwords="none", measure="df").top_counts[0] == 2  # don: 2 docs


def test_counters_merge_and_take_blocks() -> None:
    from lineage.corpora.profiles import ProfileCounter

    docs = random_docs("abcdefgh", 300, seed=5)
    whole = ProfileCounter(min_df=2)
    halves = [ProfileCounter(min_df=2), ProfileCounter(min_df=2)]
    for half, part in zip(halves, (docs[:150], docs[150:]), strict=True):
        half.add_block("\n\n".join(part), len(part))
        whole.add_block("\n\n".join(part), len(part), count=False)
        whole.merge(half)
    assert whole.profile() == profile_texts(docs, min_df=2)
    with pytest.raises(ValueError, match="different parameters"):
        whole.merge(ProfileCounter(min_df=3))

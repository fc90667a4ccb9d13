"""Corpus handling: sources of every kind, deterministic splits, shards, bad input, caching."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lineage.corpora.domains import (
    add_domain,
    bundled_domains,
    compute_proximity,
    domain_texts,
    is_valid,
    remove_domain,
    shard_documents,
)
from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.workspace import Workspace

DOCS = [f"document {i} about cats and dogs and the garden number {i}" for i in range(300)]


def write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_txt_jsonl_parquet_gz_folders_and_globs(ws: Workspace, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_txt(src / "a.txt", DOCS[:100])
    with gzip.open(src / "sub" / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        for d in DOCS[100:200]:
            fh.write(json.dumps({"body": d}) + "\n")
    pq.write_table(pa.table({"body": DOCS[200:]}), src / "c.parquet")
    domain, report = add_domain(ws, "mixed", [str(src)], text_field="body", valid_every=10)
    assert report.documents == 300 and len(report.files) == 3
    assert report.train_documents + report.valid_documents == 300
    assert 10 <= report.valid_documents <= 55  # about 1 in 10
    assert sorted(domain_texts(ws, "mixed", "train")) + sorted(domain_texts(ws, "mixed", "valid"))
    assert domain.stats["words"] == report.words > 0 and domain.profile is not None
    _, by_glob = add_domain(ws, "globbed", [str(src / "*.txt")], text_field="body")
    assert by_glob.documents == 100


def test_split_is_deterministic_and_content_based(ws: Workspace, tmp_path: Path) -> None:
    write_txt(tmp_path / "a.txt", DOCS)
    write_txt(tmp_path / "b.txt", [*reversed(DOCS), "one more document"])
    add_domain(ws, "a", [tmp_path / "a.txt"], valid_every=7)
    add_domain(ws, "b", [tmp_path / "b.txt"], valid_every=7)
    valid_a = set(domain_texts(ws, "a", "valid"))
    valid_b = set(domain_texts(ws, "b", "valid")) - {"one more document"}
    assert valid_a == valid_b and valid_a  # reordering and adding do not move documents
    assert valid_a == {d for d in DOCS if is_valid(d, valid_every=7, seed=0)}


def test_shards_are_cut_by_size_and_registered(ws: Workspace, tmp_path: Path) -> None:
    write_txt(tmp_path / "a.txt", DOCS)
    _, report = add_domain(ws, "a", [tmp_path / "a.txt"], shard_mb=0.004, valid_every=50)
    shards = ws.registry.shards("a", split="train")
    assert report.shards == len(shards) >= 3
    assert sum(s.n_documents for s in shards) == report.train_documents
    assert all(Path(s.path).is_file() and s.profile for s in shards)
    assert sum(s.n_bytes for s in shards) == sum(Path(s.path).stat().st_size for s in shards)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"caf\xe9 au lait\n", "not UTF-8"),
        (b"", "no documents"),
        (b"\n\n   \n", "no documents"),
    ],
)
def test_bad_corpora_get_clear_errors_and_leave_nothing(
    ws: Workspace, tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(LineageError, match=message):
        add_domain(ws, "bad", [bad])
    assert ws.registry.domains() == []
    assert not (ws.domains_dir / "bad").exists()
    assert not [p for p in ws.domains_dir.iterdir() if p.name.startswith(".bad")]


def test_more_bad_input(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="no such file"):
        add_domain(ws, "x", [tmp_path / "missing.txt"])
    with pytest.raises(LineageError, match="matches no file"):
        add_domain(ws, "x", [str(tmp_path / "*.nothing")])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(LineageError, match="unsupported file type"):
        add_domain(ws, "x", [tmp_path / "data.csv"])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "wrong field"}\n')
    with pytest.raises(LineageError, match=r"bad\.jsonl:2: no string field 'text'"):
        add_domain(ws, "x", [tmp_path / "bad.jsonl"])
    with pytest.raises(LineageError, match=r"domain .* is not a valid name"):
        add_domain(ws, "../escape", [tmp_path / "bad.jsonl"])
    write_txt(tmp_path / "ok.txt", DOCS[:5])
    (tmp_path / "empty.txt").write_text("")
    _, report = add_domain(ws, "x", [tmp_path / "ok.txt", tmp_path / "empty.txt"])
    assert report.skipped_empty_files == [str((tmp_path / "empty.txt").resolve())]
    with pytest.raises(ConflictError, match="already registered"):
        add_domain(ws, "x", [tmp_path / "ok.txt"])


def test_profiles_are_cached_by_content(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lineage.corpora.shardprofiles as shardprofiles

    write_txt(tmp_path / "a.txt", DOCS)
    add_domain(ws, "first", [tmp_path / "a.txt"])
    stored: list[str] = []
    real = shardprofiles._store_profile
    monkeypatch.setattr(shardprofiles, "_store_profile", lambda *a: stored.append(a[1]) or real(*a))
    add_domain(ws, "same-text", [tmp_path / "a.txt"])
    assert stored == []  # every shard profile came from the cache
    write_txt(tmp_path / "b.txt", [*DOCS, "a new document changes the last shard"])
    add_domain(ws, "changed", [tmp_path / "b.txt"])
    assert len(stored) >= 1


def test_bundled_domains_proximity_is_low_off_the_diagonal(ws: Workspace) -> None:
    from lineage.corpora.domains import bundled_domains_dir

    assert bundled_domains() == ["bio", "cs", "literature"]
    for name in bundled_domains():
        add_domain(ws, name, [bundled_domains_dir() / name])
    names, matrix = compute_proximity(ws)
    assert names == ["bio", "cs", "literature"]
    assert all(matrix[i, i] == 1.0 for i in range(3))
    off = [matrix[i, j] for i in range(3) for j in range(3) if i != j]
    assert all(0.05 < v < 0.4 for v in off), matrix
    assert ws.registry.latest_proximity("overlap") is not None


# ---- the valid split is never empty ------------------------------------------------------


def valid_and_train(ws: Workspace, name: str) -> tuple[list[str], list[str]]:
    return list(domain_texts(ws, name, "valid")), list(domain_texts(ws, name, "train"))


def test_small_domains_keep_a_floor_of_valid_documents(ws: Workspace, tmp_path: Path) -> None:
    # 100 documents at 1 in 200: hashing alone holds out about 0.5 of a document
    write_txt(tmp_path / "a.txt", DOCS[:100])
    _, report = add_domain(ws, "a", [tmp_path / "a.txt"])
    valid, train = valid_and_train(ws, "a")
    assert report.valid_documents == len(valid) == 10  # min(50, a tenth of 100)
    assert report.split.floor == 10 and report.split.topped_up == 10 - report.split.by_hash
    assert sorted(valid + train) == sorted(DOCS[:100])
    # the top-up is by content too: reordered and extended input holds out the same documents
    write_txt(tmp_path / "b.txt", [*reversed(DOCS[:100])])
    add_domain(ws, "b", [tmp_path / "b.txt"])
    assert set(valid_and_train(ws, "b")[0]) == set(valid)
    # the floor is configurable, and capped at a tenth of the documents
    _, report = add_domain(ws, "c", [tmp_path / "a.txt"], min_valid=3)
    assert report.valid_documents == 3
    _, report = add_domain(ws, "d", [tmp_path / "a.txt"], min_valid=1000)
    assert report.valid_documents == 10
    stats = ws.registry.domain("a").stats
    assert stats["split"]["floor"] == 10 and stats["min_valid_documents"] == 50


def test_topped_up_shards_are_rewritten_consistently(ws: Workspace, tmp_path: Path) -> None:
    write_txt(tmp_path / "a.txt", DOCS)
    _, report = add_domain(ws, "a", [tmp_path / "a.txt"], shard_mb=0.001, valid_every=1000)
    assert report.split.topped_up == 30 and report.valid_documents == 30
    shards = ws.registry.shards("a")
    names = [s.name for s in shards if s.split == "train"]
    assert names == [f"train-{i:05d}" for i in range(len(names))]  # no gaps
    for shard in shards:
        data = Path(shard.path).read_bytes()
        assert len(data) == shard.n_bytes and hashlib.sha256(data).hexdigest() == shard.digest
        assert len(list(shard_documents(Path(shard.path)))) == shard.n_documents
    assert sum(s.n_documents for s in shards) == 300


def test_duplicates_move_to_valid_together(ws: Workspace, tmp_path: Path) -> None:
    docs = [*DOCS[:40], *DOCS[:40], *DOCS[:40]]  # every document three times
    write_txt(tmp_path / "a.txt", docs)
    add_domain(ws, "a", [tmp_path / "a.txt"], valid_every=1000, min_valid=5)
    valid, train = valid_and_train(ws, "a")
    assert len(valid) >= 5 and not set(valid) & set(train)
    assert all(valid.count(d) == 3 for d in valid)


def test_one_long_document_holds_out_its_tail(ws: Workspace, tmp_path: Path) -> None:
    text = "\n".join(f"line {i} of the only document, about ships and harbours" for i in range(400))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    _, report = add_domain(ws, "one", [tmp_path / "one.txt"], documents="file")
    (valid,), (train,) = valid_and_train(ws, "one")
    assert report.split.tail_chars == len(valid) and "last" in report.split.describe()
    assert train + "\n" + valid == text  # cut at a line break, nothing lost
    assert len(text) // 10 <= len(valid) < len(text) // 10 + 100  # a tenth (< 20,000 chars)


def test_too_small_to_hold_anything_out_is_refused(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "word.txt").write_text("antidisestablishmentarianism\n", encoding="utf-8")
    with pytest.raises(LineageError, match="too small to hold anything out"):
        add_domain(ws, "word", [tmp_path / "word.txt"])
    assert ws.registry.domains() == [] and not (ws.domains_dir / "word").exists()


def test_two_documents_and_all_valid_by_hash(ws: Workspace, tmp_path: Path) -> None:
    write_txt(tmp_path / "two.txt", DOCS[:2])
    _, report = add_domain(ws, "two", [tmp_path / "two.txt"])
    assert (report.train_documents, report.valid_documents) == (1, 1)
    # documents that all hash to valid at 1 in 2: the floor stays, the rest goes back to train
    docs = [d for d in DOCS if is_valid(d, valid_every=2, seed=0)][:20]
    write_txt(tmp_path / "valid.txt", docs)
    _, report = add_domain(ws, "all-valid", [tmp_path / "valid.txt"], valid_every=2)
    assert report.split.by_hash == 20 and report.split.moved_back == 18
    assert (report.train_documents, report.valid_documents) == (18, 2)


# ---- remove and replace --------------------------------------------------------------------


def _register_model(ws: Workspace, make_model_dir: Callable[..., Path], name: str) -> None:
    from lineage.registry.modelinfo import read_model_info

    path = make_model_dir(name)
    ws.registry.add_model(name, str(path), read_model_info(path), domains=["a"])


def _in_use(ws: Workspace, make_model_dir: Callable[..., Path]) -> Path:
    """Domain 'a' with an evaluation, a plan, a logit cache (a folder) and a running job."""
    _register_model(ws, make_model_dir, "m")
    reg = ws.registry
    reg.add_evaluation("m", "a", loss=1.0, ppl=2.7)
    reg.add_plan("m-a", "m", {"domains": ["a"]})
    cache = ws.caches_dir / "m" / "a-train-00000"
    cache.mkdir(parents=True)
    (cache / "manifest.json").write_text("{}")
    reg.add_cache(str(cache), "m", 10, {}, "a")
    reg.start_run("train", config={"domains": ["a"], "replay_domains": []})
    reg.start_run("train", config={"domains": ["other"]})  # not about 'a'
    return cache


def test_remove_a_domain_and_its_files(ws: Workspace, tmp_path: Path) -> None:
    write_txt(tmp_path / "a.txt", DOCS)
    add_domain(ws, "a", [tmp_path / "a.txt"])
    blocks = ws.data_dir / "fingerprint" / "128" / "a"
    blocks.mkdir(parents=True)
    (blocks / "train-00000-x.npy").write_bytes(b"")
    removal = remove_domain(ws, "a")
    assert removal.usage is not None and removal.usage.shards == 2
    assert ws.registry.domains() == [] and ws.registry.shards() == []
    assert not (ws.domains_dir / "a").exists() and not blocks.exists()
    with pytest.raises(NotFoundError, match="no domain named 'a'"):
        remove_domain(ws, "a")
    add_domain(ws, "a", [tmp_path / "a.txt"])  # the name is free again


def test_remove_is_refused_while_in_use_and_forced_removes_the_users(
    ws: Workspace, tmp_path: Path, make_model_dir: Callable[..., Path]
) -> None:
    write_txt(tmp_path / "a.txt", DOCS)
    add_domain(ws, "a", [tmp_path / "a.txt"])
    cache = _in_use(ws, make_model_dir)
    with pytest.raises(ConflictError, match=r"in use by 1 plan\(s\) \(m-a\), 1 logit cache"):
        remove_domain(ws, "a")
    assert ws.registry.domain("a") and len(ws.registry.shards("a")) == 2 and cache.is_dir()
    removal = remove_domain(ws, "a", force=True)
    usage = removal.usage
    assert usage is not None and usage.plans == ["m-a"] and usage.caches == [str(cache)]
    assert usage.evaluations == 1 and usage.models == ["m"] and len(usage.runs) == 1
    assert str(cache) in removal.files and not cache.exists()
    reg = ws.registry
    assert reg.plans() == [] and reg.caches() == [] and reg.evaluations() == []
    runs = {r.config["domains"][0]: r for r in reg.runs()}
    assert runs["a"].status == "failed" and "domain 'a' was removed" in (runs["a"].error or "")
    assert runs["other"].status == "running"
    assert reg.model("m").domains == ["a"]  # the model keeps its history


def test_rerun_cleans_what_a_killed_job_left(ws: Workspace, tmp_path: Path) -> None:
    # a kill -9 after the rename and before the commit, or after a removal's commit
    dead = ws.domains_dir / "a" / "0123456789abcdef"
    dead.mkdir(parents=True)
    (dead / "train-00000.txt").write_text("half a domain\n\n")
    (ws.domains_dir / "a" / ".staging-deadbeef").mkdir()
    removal = remove_domain(ws, "a")
    assert removal.usage is None and len(removal.files) == 2
    assert not (ws.domains_dir / "a").exists()
    dead.mkdir(parents=True)
    write_txt(tmp_path / "a.txt", DOCS)
    add_domain(ws, "a", [tmp_path / "a.txt"])  # an add cleans them too
    assert [p.name for p in (ws.domains_dir / "a").iterdir()] == [
        Path(ws.registry.shards("a")[0].path).parent.name
    ]


def test_a_failed_commit_leaves_nothing(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_txt(tmp_path / "a.txt", DOCS)

    def refuse(*args: object, **kwargs: object) -> None:
        raise LineageError("registry down")

    monkeypatch.setattr(type(ws.registry), "add_domain", refuse)
    with pytest.raises(LineageError, match="registry down"):
        add_domain(ws, "a", [tmp_path / "a.txt"])
    assert not (ws.domains_dir / "a").exists()


def test_replace_swaps_the_text_and_keeps_the_old_on_failure(
    ws: Workspace, tmp_path: Path, make_model_dir: Callable[..., Path]
) -> None:
    write_txt(tmp_path / "old.txt", DOCS[:150])
    write_txt(tmp_path / "new.txt", DOCS[150:])
    add_domain(ws, "a", [tmp_path / "old.txt"])
    old_folder = Path(ws.registry.shards("a")[0].path).parent
    with pytest.raises(ConflictError, match="--replace"):
        add_domain(ws, "a", [tmp_path / "new.txt"])
    with pytest.raises(LineageError, match="--force goes with --replace"):
        add_domain(ws, "a", [tmp_path / "new.txt"], force=True)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(LineageError, match="not UTF-8"):
        add_domain(ws, "a", [tmp_path / "bad.txt"], replace=True)
    assert set(domain_texts(ws, "a", "train")) | set(domain_texts(ws, "a", "valid")) == set(
        DOCS[:150]
    )
    _, report = add_domain(ws, "a", [tmp_path / "new.txt"], replace=True)
    assert report.replaced is not None and report.replaced.shards == 2
    texts = set(domain_texts(ws, "a", "train")) | set(domain_texts(ws, "a", "valid"))
    assert texts == set(DOCS[150:]) and not old_folder.exists()
    assert [d.name for d in ws.registry.domains()] == ["a"]
    # in use: refused without --force, and nothing changes
    cache = _in_use(ws, make_model_dir)
    with pytest.raises(ConflictError, match="pass --force"):
        add_domain(ws, "a", [tmp_path / "old.txt"], replace=True)
    assert ws.registry.plans() and cache.exists()
    _, report = add_domain(ws, "a", [tmp_path / "old.txt"], replace=True, force=True)
    assert report.replaced is not None and report.replaced.plans == ["m-a"]
    assert ws.registry.plans() == [] and not cache.exists()
    # the same text again: the same version folder, kept
    folder = Path(ws.registry.shards("a")[0].path).parent
    add_domain(ws, "a", [tmp_path / "old.txt"], replace=True)
    assert Path(ws.registry.shards("a")[0].path).parent == folder and folder.is_dir()


def test_one_job_per_domain_at_a_time(ws: Workspace, tmp_path: Path) -> None:
    from lineage.corpora.domains import domain_lock

    write_txt(tmp_path / "a.txt", DOCS)
    with domain_lock(ws, "a"), pytest.raises(ConflictError, match="being changed by another"):
        add_domain(ws, "a", [tmp_path / "a.txt"])
    add_domain(ws, "a", [tmp_path / "a.txt"])


def test_copies_of_one_text_are_refused(ws: Workspace, tmp_path: Path) -> None:
    write_txt(tmp_path / "same.txt", [DOCS[0]] * 30)
    with pytest.raises(LineageError, match="copies of one text"):
        add_domain(ws, "same", [tmp_path / "same.txt"])
    assert ws.registry.domains() == [] and not (ws.domains_dir / "same").exists()

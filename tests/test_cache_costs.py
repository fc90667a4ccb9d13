"""Costs said before they are paid: ``cache build --max-blocks/--data-fraction`` builds a partial
cache (recorded as such, never reused by a job that reads the whole shard) after listing every
cache with an estimated time and size; ``train``/``adapt`` list the caches they read first and,
with ``--no-build-caches``, refuse (naming them) rather than build one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.cli import app
from lineage.corpora.blocks import domain_blocks, fraction_blocks
from lineage.inherit.cache import open_cache
from lineage.inherit.cache_costs import estimate_bytes
from lineage.workspace import Workspace

runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.output


def build(ws: Workspace, *extra: str, code: int = 0) -> str:
    args = ["-w", str(ws.root), "cache", "build", "--teacher", "teacher-lit", "-d", "literature"]
    return invoke(*args, "--block-size", "32", *extra, code=code)


def shard_sizes(ws: Workspace) -> list[int]:
    teacher = Path(ws.registry.model("teacher-lit").path)
    return [len(b.blocks) for b in domain_blocks(ws, "literature", "train", teacher, 32)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-blocks", "2", "--data-fraction", "0.5"), "not both"),
        (("--max-blocks", "0"), "at least 1"),
        (("--data-fraction", "1.5"), "data fraction must be in (0, 1]"),
        (("--data-fraction", "0"), "data fraction must be in (0, 1]"),
    ],
)
def test_bad_cache_limits_are_one_line_and_change_nothing(family_ws, extra, message) -> None:
    out = build(family_ws, *extra, code=1)
    assert message in out and len(out.strip().splitlines()) == 1, out
    assert family_ws.registry.caches() == []
    assert family_ws.registry.runs() == [] or all(
        r.kind != "cache" for r in family_ws.registry.runs()
    )


def test_partial_cache_is_estimated_recorded_and_never_serves_the_whole_shard(family_ws) -> None:
    sizes = shard_sizes(family_ws)
    assert max(sizes) > 2, sizes  # a partial cache must be smaller than some shard
    doc = json.loads(build(family_ws, "--max-blocks", "2", "--json"))
    planned, caches = doc["planned"], doc["caches"]
    assert len(planned) == len(sizes) == len(caches)
    assert all(not p["existing"] and p["seconds"] > 0 and p["bytes"] > 0 for p in planned)
    assert doc["estimated_seconds"] == pytest.approx(sum(p["seconds"] for p in planned))
    for p, n in zip(planned, sizes, strict=True):
        assert (p["blocks"], p["shard_blocks"]) == (min(2, n), n)
    for c in caches:
        cache = open_cache(Path(c["path"]), verify=True)
        n = cache.manifest.n_blocks
        assert n <= 2 and c["manifest"]["n_blocks"] == n
        assert cache.manifest.partial == (c["manifest"]["shard_blocks"] is not None)
        actual = sum(f.stat().st_size for f in Path(c["path"]).rglob("*.npy"))
        (p,) = [p for p in planned if p["path"] == c["path"]]
        assert 0.5 < actual / p["bytes"] < 2.0, (actual, p["bytes"])
    assert "of" in invoke("-w", str(family_ws.root), "cache", "list")

    # The same request again reuses them; a larger fraction or the whole shard does not.
    again = json.loads(build(family_ws, "--max-blocks", "2", "--json"))
    assert all(p["existing"] and p["seconds"] is None for p in again["planned"])
    whole = json.loads(build(family_ws, "--json"))
    assert all(not p["existing"] for p in whole["planned"] if p["shard_blocks"] > 2)
    full = [c for c in whole["caches"] if c["manifest"]["shard_blocks"] is None]
    assert len(full) == len(sizes)
    # ... and once the whole shard is cached, a fraction reuses that cache.
    frac = json.loads(build(family_ws, "--data-fraction", "0.5", "--json"))
    assert {p["path"] for p in frac["planned"]} == {c["path"] for c in full}


def test_train_reads_a_fraction_from_a_partial_cache_and_refuses_to_build(family_ws) -> None:
    ws = str(family_ws.root)
    sizes = shard_sizes(family_ws)
    build(family_ws, "--data-fraction", "0.5")
    partial = {c.path for c in family_ws.registry.caches()}
    assert all(fraction_blocks(n, 0.5) < n for n in sizes if n > 1)
    train = ["-w", ws, "train", "-m", "student", "-d", "literature", "--strategy", "ki"]
    train += ["-t", "teacher-lit", "--steps", "2", "--batch-size", "2", "--block-size", "32"]
    train += ["--eval-every", "0", "--eval-blocks", "2", "-q"]
    # The whole shard is not cached: --no-build-caches names what is missing, changes nothing.
    out = invoke(*train, "-o", "whole", "--no-build-caches", code=1)
    assert "--no-build-caches" in out and "teacher-lit on literature/" in out, out
    assert len(out.strip().splitlines()) == 1
    assert not family_ws.registry.has_model("whole")
    assert {c.path for c in family_ws.registry.caches()} == partial
    # Half of each shard is: the run reads those caches and builds none.
    doc = json.loads(
        invoke(*train, "-o", "half", "--data-fraction", "0.5", "--no-build-caches", "--json")
    )
    assert doc["caches"] and all(c["existing"] for c in doc["caches"])
    assert {c["path"] for c in doc["caches"]} == partial
    assert {c.path for c in family_ws.registry.caches()} == partial
    # With caches allowed, the whole-shard run lists them first, then builds them.
    doc = json.loads(invoke(*train, "-o", "whole", "--json"))
    built = {c["path"] for c in doc["caches"]}
    assert all(not c["existing"] and c["seconds"] > 0 for c in doc["caches"])
    assert built.isdisjoint(partial) and {c.path for c in family_ws.registry.caches()} == (
        partial | built
    )


def test_estimated_bytes_follow_the_format() -> None:
    v1 = estimate_bytes(10, 128, 10, "clm", 32000, format_version=1)
    v2 = estimate_bytes(10, 128, 10, "clm", 32000)
    per_block = 128 * 2 + 16 + 127 * 14.5  # inputs, offsets, 1.4 B per kept logit + 0.5
    assert v2 - estimate_bytes(0, 128, 10, "clm", 32000) == pytest.approx(10 * per_block, abs=1)
    assert v1 == 6 * 128 + 10 * (128 * 2 + 16 + 127 * (10 * 4 + 1 + 2))
    big = [estimate_bytes(1000, 128, 10, kind, 32000) for kind in ("clm", "mlm")]
    assert big[0] < estimate_bytes(1000, 128, 10, "clm", 32000, format_version=1) / 2
    assert big[1] < big[0]  # MLM: ~15 % of the positions are targets

"""Profiles of a domain's shard files: each shard's, cached on disk by its content digest (so
unchanged text is never profiled twice), and the train split's as the sum of its shards'.

Shard text is read in blocks of whole documents (``text_blocks``) and counted once: the
train split's counter takes each shard's counts by ``merge`` and only digests the text itself.
The registry gets each shard's profile read back from the cache one at a time
(``with_profiles``), so a domain of thousands of shards never holds their profiles at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lineage.corpora.profiles import BLOCK_CHARS, ProfileCounter, VocabularyProfile
from lineage.files import atomic_write_text
from lineage.workspace import Workspace


def text_blocks(path: Path, size: int = BLOCK_CHARS) -> Iterator[tuple[str, int]]:
    """A shard file as (block, documents in it): whole documents joined by a blank line."""
    rest = ""
    with path.open(encoding="utf-8") as fh:
        while chunk := fh.read(size):
            data = rest + chunk
            cut = data.rfind("\n\n")
            if cut < 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut + 2 :]
            if block:
                yield block, block.count("\n\n") + 1
    if rest.strip("\n"):
        yield rest.strip("\n"), rest.strip("\n").count("\n\n") + 1


def profile_shards(
    ws: Workspace,
    staging: Path,
    final: Path,
    train: list[dict[str, Any]],
    valid: list[dict[str, Any]],
    progress: bool,
) -> tuple[list[dict[str, Any]], VocabularyProfile]:
    """Profile each shard (cached by digest) and the train split; each shard's text is counted
    once, and the train split's counts are the sum of its shards'."""
    from tqdm.auto import tqdm

    params = profile_params(ws)
    whole = ProfileCounter(**params)
    rows = []
    total = sum(s["n_bytes"] for s in train + valid)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="profiling", disable=None if progress else True
    ) as bar:
        for split, done in (("train", train), ("valid", valid)):
            for shard in done:
                path = staging / f"{shard['name']}.txt"
                cached = _cached_profile(ws, shard["digest"], params)
                counter = None if cached is not None else ProfileCounter(**params)
                for block, n in text_blocks(path):
                    if counter is not None:
                        counter.add_block(block, n)
                    if split == "train":
                        whole.add_block(block, n, count=counter is None)
                    bar.update(len(block.encode("utf-8")) + 2 * n)
                if counter is not None and split == "train":
                    whole.merge(counter)
                if cached is None:
                    _store_profile(ws, shard["digest"], params, counter)
                rows.append(shard | {"split": split, "path": str(final / path.name)})
    return rows, whole.profile()


def with_profiles(ws: Workspace, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Shard rows with their profiles, read back from the profile cache one at a time (a
    domain of thousands of shards never holds all their profiles in memory)."""
    params = profile_params(ws)
    for row in rows:
        path = _profile_cache_path(ws, row["digest"], params)
        yield row | {"profile": json.loads(path.read_text(encoding="utf-8"))}


def profile_params(ws: Workspace) -> dict[str, Any]:
    cfg = ws.config.profiles
    # Jaccard (the paper's script) needs min_df applied to the stored vocabulary too.
    return {"top_k": cfg.top_k, "min_df": cfg.min_df}


def _profile_cache_path(ws: Workspace, digest: str, params: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return ws.domains_dir / ".profiles" / f"{digest}-{key}.json"


def _cached_profile(ws: Workspace, digest: str, params: dict[str, Any]) -> VocabularyProfile | None:
    path = _profile_cache_path(ws, digest, params)
    if not path.is_file():
        return None
    try:
        return VocabularyProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
        return None


def _store_profile(
    ws: Workspace, digest: str, params: dict[str, Any], counter: ProfileCounter | None
) -> VocabularyProfile:
    """Profile ``counter`` into the cache under the shard's ``digest``."""
    assert counter is not None
    profile = counter.profile()
    atomic_write_text(_profile_cache_path(ws, digest, params), json.dumps(profile.to_dict()))
    return profile

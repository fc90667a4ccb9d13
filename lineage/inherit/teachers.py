"""Teachers of a training job: their top-K logit caches (built once, registered, reused by every
student of the same tokenizer) or the teacher model itself for online mode."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PreTrainedModel

from lineage.corpora.blocks import ShardBlocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.distributed import on_main
from lineage.errors import LineageError
from lineage.faults import fault_point
from lineage.inherit.cache import CacheManifest, CacheMeta, LogitCache, open_cache
from lineage.inherit.cache_build import DEFAULT_MASK_DRAWS, build_cache
from lineage.models.modeling import load_model
from lineage.registry.entities import Model
from lineage.registry.modelinfo import check_has_lm_head
from lineage.workspace import Workspace

TEACHER_MODES = ("cached", "online")


def check_same_vocabulary(teacher: Model, student: Model) -> None:
    """Refuse a teacher whose tokenizer differs: its token ids would mean other words; and
    encoders (no LM head), which have no predictions to inherit or to learn."""
    check_has_lm_head(teacher.name, teacher.objective, "a KI teacher")
    check_has_lm_head(student.name, student.objective, "a KI student")
    if teacher.tokenizer_fingerprint != student.tokenizer_fingerprint:
        raise LineageError(
            f"teacher {teacher.name!r} and student {student.name!r} do not share a tokenizer "
            f"(fingerprints {str(teacher.tokenizer_fingerprint)[:12]} vs "
            f"{str(student.tokenizer_fingerprint)[:12]}); KI needs the same vocabulary"
        )
    if teacher.objective != student.objective:
        raise LineageError(
            f"teacher {teacher.name!r} is {teacher.objective} but student {student.name!r} is "
            f"{student.objective}: their predictions are not comparable"
        )


DEFAULT_MASK_PROBABILITY = 0.15


def cache_dir(
    ws: Workspace,
    teacher: Model,
    blocks: ShardBlocks,
    top_k: int,
    mask_probability: float = DEFAULT_MASK_PROBABILITY,
    n_blocks: int | None = None,
    mask_draws: int = DEFAULT_MASK_DRAWS,
) -> Path:
    """Where the cache lives; an MLM cache at another mask rate than 15 % gets its own folder,
    and one of several mask draws too (``-D4``: caches built before draws, one each, keep their
    folders and are not mistaken for new ones); a cache of the shard's first ``n_blocks`` only
    (fewer than the shard has) its own name."""
    fp = str(teacher.tokenizer_fingerprint)[:16]
    block_size = blocks.blocks.shape[1]
    mask = ""
    if teacher.objective == "mlm" and mask_probability != DEFAULT_MASK_PROBABILITY:
        mask = f"-M{mask_probability:g}"
    if teacher.objective == "mlm" and mask_draws != 1:
        mask += f"-D{mask_draws}"
    first = ""
    if n_blocks is not None and n_blocks < len(blocks.blocks):
        first = f"-first{n_blocks}"
    return ws.child_path(
        ws.caches_dir,
        teacher.name,
        fp,
        f"T{block_size}-K{top_k}{mask}",
        blocks.shard.domain,
        f"{blocks.shard.name}-{blocks.shard.digest[:12]}{first}",
    )


def expected_meta(teacher: Model, block_size: int, top_k: int | None) -> CacheMeta:
    return CacheMeta(
        teacher_name=teacher.name,
        tokenizer_fingerprint=teacher.tokenizer_fingerprint,
        top_k=top_k,
        objective=teacher.objective,
        block_size=block_size,
    )


def find_cache(
    ws: Workspace,
    teacher: Model,
    blocks: ShardBlocks,
    top_k: int,
    mask_probability: float = DEFAULT_MASK_PROBABILITY,
    need: int | None = None,
    mask_draws: int = DEFAULT_MASK_DRAWS,
) -> Path | None:
    """The teacher's registered cache of this shard (at this mask rate and number of MLM mask
    draws) that serves ``top_k``
    over the shard's first ``need`` blocks (default: all of them): the whole-shard cache built
    for that K, else the smallest registered one that covers it (a wider K: its rows' first
    ``top_k`` entries are the top-K; a cache of the first N blocks serves only jobs reading at
    most those N, never one that reads the whole shard)."""
    total = len(blocks.blocks)
    need = total if need is None else min(need, total)
    whole = cache_dir(ws, teacher, blocks, top_k, mask_probability, None, mask_draws)
    if whole.exists():
        return whole
    fits = []
    for c in ws.registry.caches(teacher.name):
        n = int(c.manifest.get("n_blocks") or 0)
        partial = c.manifest.get("shard_blocks") is not None and n < total
        covered = n if partial else total
        where = cache_dir(
            ws, teacher, blocks, c.top_k, mask_probability, n if partial else None, mask_draws
        )
        if c.top_k >= top_k and covered >= need and Path(c.path) == where and where.exists():
            fits.append((covered, c.top_k, where))
    return min(fits)[2] if fits else None


def ensure_cache(
    ws: Workspace,
    teacher: Model,
    blocks: ShardBlocks,
    *,
    top_k: int,
    lm: PreTrainedModel | None = None,
    batch_size: int = 32,
    progress: bool = True,
    mask_probability: float = DEFAULT_MASK_PROBABILITY,
    format_version: int | None = None,
    max_blocks: int | None = None,
    mask_draws: int = DEFAULT_MASK_DRAWS,
) -> LogitCache:
    """A cache of the teacher for this shard holding at least ``top_k`` entries per row and at
    least the shard's first ``max_blocks`` blocks (default: all): opened and verified
    (``find_cache``), or built now for ``top_k`` over those blocks and registered.
    ``mask_probability``: an MLM cache's mask rate and ``mask_draws`` its masks per block
    (recorded in its manifest, checked on open; causal caches have one draw);
    ``format_version``: of a cache built here (default: ``build_cache``'s)."""
    if not 0.0 < mask_probability < 1.0:
        raise LineageError(f"mask probability must lie in (0, 1), got {mask_probability}")
    if mask_draws < 1:
        raise LineageError(f"mask draws must be at least 1, got {mask_draws}")
    draws = mask_draws if teacher.objective == "mlm" else 1
    block_size = blocks.blocks.shape[1]
    total = len(blocks.blocks)
    need = total if max_blocks is None else max(1, min(max_blocks, total))
    found = find_cache(ws, teacher, blocks, top_k, mask_probability, need, draws)
    if found is not None:
        cache = open_cache(found, expect=expected_meta(teacher, block_size, None))
        if int(cache.meta.top_k or 0) < top_k:  # a cache directory renamed by hand
            raise LineageError(f"cache {found} holds the top {cache.meta.top_k}, not {top_k}")
        cache = _check_mask(cache, teacher, mask_probability, draws)
        if not any(Path(c.path) == found for c in ws.registry.caches(teacher.name)):
            # published by a build killed before it registered it (opened above with every
            # file's digest checked): registered now, so that it is listed and found
            _register_cache(ws, found, teacher, int(cache.meta.top_k or top_k), cache.manifest,
                            blocks)  # fmt: skip
        return cache
    path = cache_dir(ws, teacher, blocks, top_k, mask_probability, need, draws)
    expect = expected_meta(teacher, block_size, top_k)
    if lm is None:
        lm = load_model(Path(teacher.path))
    info = TokenizerInfo.of(load_tokenizer(Path(teacher.path)))
    manifest = build_cache(
        lm,
        blocks.blocks[:need],
        path,
        objective=teacher.objective,  # type: ignore[arg-type]
        meta=expect,
        top_k=top_k,
        batch_size=batch_size,
        special_ids=info.special_ids,
        mask_token_id=info.mask_id,
        vocab_size=info.vocab_size,
        progress=progress,
        mask_probability=mask_probability,
        format_version=format_version,
        shard_blocks=total if need < total else None,
        mask_draws=draws,
    )

    fault_point("cache.published")  # in place, not yet registered: a rerun registers it
    _register_cache(ws, path, teacher, top_k, manifest, blocks)
    return open_cache(path, expect=expect, verify=False)


def _register_cache(
    ws: Workspace,
    path: Path,
    teacher: Model,
    top_k: int,
    manifest: CacheManifest,
    blocks: ShardBlocks,
) -> None:
    """Register a published cache (on the main process alone); a failure deletes it."""

    def register() -> None:
        try:
            ws.registry.add_cache(
                str(path),
                teacher.name,
                top_k,
                {
                    "n_blocks": manifest.n_blocks,
                    "n_targets": manifest.n_targets,
                    "shard": blocks.key,
                    "format": manifest.format_version,
                    "shard_blocks": manifest.shard_blocks,
                    "mask_draws": 1 if manifest.masking is None else manifest.masking.draws,
                },
                blocks.shard.domain,
            )
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # an unregistered cache would never be listed
            raise

    on_main(register, f"registering the cache of {teacher.name!r}")


def _check_mask(
    cache: LogitCache, teacher: Model, mask_probability: float, draws: int
) -> LogitCache:
    masking = cache.manifest.masking
    if teacher.objective == "mlm" and (masking is None or masking.probability != mask_probability):
        got = None if masking is None else masking.probability
        raise LineageError(
            f"cache {cache.path} was built with mask probability {got}, not {mask_probability}"
        )
    if cache.draws != draws:  # a cache directory renamed by hand
        raise LineageError(f"cache {cache.path} holds {cache.draws} mask draw(s), not {draws}")
    return cache

"""Teachers of a training job: their top-K logit caches (built once, registered, reused by every
student of the same tokenizer) or the teacher model itself for online mode."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PreTrainedModel

from lineage.corpora.blocks import ShardBlocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.errors import LineageError
from lineage.inherit.cache import CacheMeta, LogitCache, open_cache
from lineage.inherit.cache_build import build_cache
from lineage.models.modeling import load_model
from lineage.registry.entities import Model
from lineage.workspace import Workspace

TEACHER_MODES = ("cached", "online")


def check_same_vocabulary(teacher: Model, student: Model) -> None:
    """Refuse a teacher whose tokenizer differs: its token ids would mean other words."""
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


def cache_dir(ws: Workspace, teacher: Model, blocks: ShardBlocks, top_k: int) -> Path:
    fp = str(teacher.tokenizer_fingerprint)[:16]
    block_size = blocks.blocks.shape[1]
    return (
        ws.caches_dir
        / teacher.name
        / fp
        / f"T{block_size}-K{top_k}"
        / blocks.shard.domain
        / f"{blocks.shard.name}-{blocks.shard.digest[:12]}"
    )


def expected_meta(teacher: Model, block_size: int, top_k: int) -> CacheMeta:
    return CacheMeta(
        teacher_name=teacher.name,
        tokenizer_fingerprint=teacher.tokenizer_fingerprint,
        top_k=top_k,
        objective=teacher.objective,
        block_size=block_size,
    )


def ensure_cache(
    ws: Workspace,
    teacher: Model,
    blocks: ShardBlocks,
    *,
    top_k: int,
    lm: PreTrainedModel | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> LogitCache:
    """The teacher's cache for this shard: opened and verified, or built now and registered."""
    path = cache_dir(ws, teacher, blocks, top_k)
    expect = expected_meta(teacher, blocks.blocks.shape[1], top_k)
    if path.exists():
        return open_cache(path, expect=expect)
    if lm is None:
        lm = load_model(Path(teacher.path))
    info = TokenizerInfo.of(load_tokenizer(Path(teacher.path)))
    manifest = build_cache(
        lm,
        blocks.blocks,
        path,
        objective=teacher.objective,  # type: ignore[arg-type]
        meta=expect,
        top_k=top_k,
        batch_size=batch_size,
        special_ids=info.special_ids,
        mask_token_id=info.mask_id,
        vocab_size=info.vocab_size,
        progress=progress,
    )
    try:
        ws.registry.add_cache(
            str(path),
            teacher.name,
            top_k,
            {"n_blocks": manifest.n_blocks, "n_targets": manifest.n_targets, "shard": blocks.key},
            blocks.shard.domain,
        )
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # an unregistered cache would never be listed
        raise
    return open_cache(path, expect=expect, verify=False)

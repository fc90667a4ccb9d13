"""Teachers of a training job: their top-K logit caches (built once, registered, reused by every
student of the same tokenizer) or the teacher model itself for online mode."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel

from lineage.cache import CacheMeta, LogitCache, build_cache, open_cache
from lineage.corpora.blocks import ShardBlocks, domain_blocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer
from lineage.errors import LineageError
from lineage.jobs import job_tracker, recorded
from lineage.models.modeling import load_model
from lineage.registry.entities import Cache, Model
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


def build_caches(
    ws: Workspace,
    teacher_name: str,
    domains: Sequence[str],
    *,
    top_k: int = 10,
    block_size: int,
    progress: bool = True,
) -> list[Cache]:
    """``lineage cache build``: the teacher's caches for every train shard of ``domains``, as
    one job (an MLflow run and a registry run, FAILED with the error if anything raises)."""
    import torch
    from accelerate import PartialState

    reg = ws.registry
    teacher = reg.model(teacher_name)
    for domain in domains:
        reg.domain(domain)
    params = {"teacher": teacher_name, "domains": list(domains), "top_k": top_k}
    params["block_size"] = block_size
    main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    tags = {"lineage.teacher": teacher_name, "lineage.strategy": "cache"}
    tracker = job_tracker(ws, f"cache {teacher_name}", tags, main=main)
    with recorded(reg, "cache", tracker, config=params, main=main):
        tracker.log_params(params)
        lm = load_model(Path(teacher.path))
        for domain in domains:
            for blocks in domain_blocks(ws, domain, "train", Path(teacher.path), block_size):
                ensure_cache(ws, teacher, blocks, top_k=top_k, lm=lm, progress=progress)
        caches = [c for c in reg.caches(teacher_name) if c.domain in set(domains)]
        tracker.log_metrics({"caches": len(caches)}, step=0)
    return caches

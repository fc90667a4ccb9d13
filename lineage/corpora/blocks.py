"""Token blocks of a workspace's domain shards, cached per tokenizer and block length.

``data/<tokenizer fingerprint>/<block size>/<domain>/<shard>-<text digest>.npy``: a shard is
tokenised once per tokenizer and re-tokenised only when its text changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lineage.corpora.batches import load_blocks, tokenize_to_blocks
from lineage.corpora.domains import shard_documents
from lineage.corpora.tokenizer import load_tokenizer
from lineage.errors import LineageError
from lineage.registry.entities import Shard
from lineage.registry.modelinfo import tokenizer_fingerprint
from lineage.workspace import Workspace


@dataclass(frozen=True)
class ShardBlocks:
    shard: Shard
    path: Path
    blocks: np.ndarray  # [n_blocks, block_size], memory-mapped

    @property
    def key(self) -> str:
        """A name unique in the workspace: ``domain/shard``."""
        return f"{self.shard.domain}/{self.shard.name}"


def shard_blocks(ws: Workspace, shard: Shard, tokenizer_dir: Path, block_size: int) -> ShardBlocks:
    """The shard's token blocks for this tokenizer, tokenised now if not cached."""
    fingerprint = tokenizer_fingerprint(Path(tokenizer_dir))
    if fingerprint is None:
        raise LineageError(f"{tokenizer_dir} holds no tokenizer")
    folder = ws.data_dir / fingerprint[:16] / str(block_size) / shard.domain
    path = folder / f"{shard.name}-{shard.digest[:16]}.npy"
    if not path.is_file():
        tokenizer = load_tokenizer(Path(tokenizer_dir))
        info = tokenize_to_blocks(shard_documents(Path(shard.path)), tokenizer, block_size, path)
        if info.blocks == 0:
            path.unlink(missing_ok=True)
            raise LineageError(
                f"shard {shard.domain}/{shard.name} is shorter than one block of {block_size} "
                "tokens; use a smaller block size"
            )
    return ShardBlocks(shard, path, load_blocks(path))


def domain_blocks(
    ws: Workspace, domain: str, split: str, tokenizer_dir: Path, block_size: int
) -> list[ShardBlocks]:
    shards = ws.registry.shards(domain, split=split)
    if not shards:
        raise LineageError(f"domain {domain!r} has no {split} shards")
    return [shard_blocks(ws, s, tokenizer_dir, block_size) for s in shards]


def fraction_blocks(n_blocks: int, fraction: float) -> int:
    """How many of a shard's first blocks a data fraction keeps (at least one): the same count
    for training (``--data-fraction``) and for the caches built for it."""
    if not 0 < fraction <= 1:
        raise LineageError(f"data fraction must be in (0, 1], got {fraction}")
    return max(1, int(n_blocks * fraction))


def valid_blocks(
    ws: Workspace, domain: str, tokenizer_dir: Path, block_size: int, max_blocks: int | None = None
) -> np.ndarray:
    """A domain's validation blocks as one array (the valid split is one shard)."""
    parts = [b.blocks for b in domain_blocks(ws, domain, "valid", tokenizer_dir, block_size)]
    blocks = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return blocks[:max_blocks] if max_blocks is not None else blocks

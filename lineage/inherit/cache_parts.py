"""One rank's part of a teacher top-K cache: the teacher's inputs and targets for its blocks,
the teacher run over them batch by batch, and the part's arrays written as they come (the
format: ``lineage.inherit.cache``; the whole build: ``lineage.inherit.cache_build``).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from torch import Tensor
from tqdm.auto import tqdm

from lineage.corpora.batches import IGNORE_INDEX, mlm_mask
from lineage.errors import LineageError
from lineage.files import sha256_file
from lineage.inherit.cache import FORMAT_VERSION, FileInfo, MaskSpec, PartInfo, part_arrays
from lineage.inherit.codec import CodecSpec, encode_rows, fit_codec
from lineage.inherit.codec_tables import IndexTables, index_tables, row_context

if TYPE_CHECKING:  # transformers is slow to import and only named in annotations here
    from transformers import PreTrainedModel

_FP16_MAX = float(np.finfo(np.float16).max)
DEFAULT_MAX_SUCCESSORS = 64  # successor-list length of the codec tables (before calibration)
_TABLE_SAMPLE_TOKENS = 1 << 24  # codec tables count at most this many tokens of the shard


# ---------------------------------------------------------------- pure helpers


def index_dtype(n: int) -> np.dtype:
    """Smallest unsigned dtype holding every value in ``0 .. n - 1`` (uint16 up to 65,536)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def block_generator(seed: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, block index): masks do not depend on batching or rank."""
    mixed = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def block_targets(
    blocks: np.ndarray, start: int, objective: str, masking: MaskSpec | None
) -> tuple[Tensor, Tensor]:
    """The teacher's inputs and the labels for blocks ``start .. start + b - 1`` of a shard.

    blocks: [b, T] unsigned -> (inputs [b, T] long, labels [b, T] long, ``IGNORE_INDEX`` off
    target). Causal: inputs are the blocks, labels the next tokens. MLM: each block is masked
    by ``mlm_mask`` with ``block_generator(masking.seed, start + i)``.
    """
    tokens = torch.from_numpy(np.asarray(blocks, dtype=np.int64))
    if objective == "clm":
        labels = torch.full_like(tokens, IGNORE_INDEX)
        labels[:, :-1] = tokens[:, 1:]
        return tokens, labels
    if masking is None:
        raise LineageError("MLM caches need a mask token id and vocabulary size")
    special = torch.tensor(masking.special_ids, dtype=torch.long)
    inputs, labels = torch.empty_like(tokens), torch.empty_like(tokens)
    for i in range(len(tokens)):
        inputs[i : i + 1], labels[i : i + 1] = mlm_mask(
            tokens[i : i + 1],
            block_generator(masking.seed, start + i),
            mask_token_id=masking.mask_token_id,
            vocab_size=masking.vocab_size,
            special_ids=special,
            probability=masking.probability,
        )
    return inputs, labels


def teacher_topk(
    teacher: torch.nn.Module,
    input_ids: Tensor,
    labels: Tensor,
    k: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k teacher logits at the target positions, left on ``device`` (no host sync).

    input_ids, labels: [B, T] -> (logits [N, k] float32 descending, indices [N, k] long),
    N = (labels != IGNORE_INDEX).sum(), rows in row-major order of the targets. The backbone
    runs under ``autocast_dtype`` (default: bf16 on CUDA, none elsewhere); the output head and
    the top-k selection always run in float32 (``TargetLogits(fp32_head=True)``).
    """
    from lineage.models.modeling import TargetLogits  # transformers: slow import, used here only

    if autocast_dtype is None and device.type == "cuda":
        autocast_dtype = torch.bfloat16
    wrapped = TargetLogits(cast("PreTrainedModel", teacher), fp32_head=True)
    # Target rows are found on the host, so selecting them on the GPU needs no sync.
    rows = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
    ):
        hidden = wrapped.hidden(input_ids.to(device, non_blocking=True), None)  # [B, T, d]
        flat, rows = hidden.reshape(-1, hidden.shape[-1]), rows.to(device)  # [B·T, d], [N]
        if 2 * len(rows) > len(flat):  # causal: nearly every row; copying [N, V] would cost more
            values, indices = wrapped.project(flat).topk(k, dim=-1)
            values, indices = values.index_select(0, rows), indices.index_select(0, rows)
        else:  # MLM: ~15 % of rows; select them first
            values, indices = wrapped.project(flat.index_select(0, rows)).topk(k, dim=-1)
    return values.float(), indices


# ---------------------------------------------------------------- writing


class _NpyWriter:
    """Appends rows to a .npy file; the final shape goes into the header on close (numpy pads
    the header so the first axis can grow in place), so no count pass is needed."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), row_shape, 0
        self.fh = path.open("wb")
        np.lib.format.write_array_header_1_0(self.fh, self._header(0))
        self.data_start = self.fh.tell()

    def _header(self, rows: int) -> dict:
        descr = np.lib.format.dtype_to_descr(self.dtype)
        return {"descr": descr, "fortran_order": False, "shape": (rows, *self.row_shape)}

    def append(self, rows: np.ndarray) -> None:
        assert rows.shape[1:] == self.row_shape, (self.path, rows.shape, self.row_shape)
        self.fh.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.rows += len(rows)

    def __enter__(self) -> _NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.fh.closed:
            self.fh.seek(0)
            np.lib.format.write_array_header_1_0(self.fh, self._header(self.rows))
            assert self.fh.tell() == self.data_start, f"{self.path}: header grew"
            self.fh.close()


@dataclass(frozen=True)
class PartSpec:
    objective: str
    top_k: int
    masking: MaskSpec | None
    index_dtype: np.dtype
    batch_size: int
    device: torch.device
    progress: bool
    format_version: int = FORMAT_VERSION
    codec: CodecSpec | None = None  # format 2, once calibrated
    tables: IndexTables | None = None

    def layout(self, block_size: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Every array of a part: name -> (dtype, shape of one row)."""
        index, k = self.index_dtype, self.top_k
        layout = {
            "inputs": (index, (block_size,)),
            "offsets": (np.dtype(np.int64), ()),
            "positions": (index_dtype(block_size), ()),
            "labels": (index, ()),
            "topk_indices": (index, (k,)),
            "topk_logits": (np.dtype(np.float16), (k,)),
            "topk_bytes": (np.dtype(np.int64), ()),
            "topk_codes": (np.dtype(np.uint8), ()),
        }
        return {name: layout[name] for name in part_arrays(self.format_version, self.objective)}


Launched = tuple[Tensor, Tensor, tuple[Tensor, Tensor]]  # inputs, labels, teacher_topk's result


def _write_batch(
    out: dict[str, _NpyWriter], batch: Launched, totals: list[int], spec: PartSpec
) -> None:
    """Append one batch; ``totals`` (targets, coded bytes so far) is advanced."""
    inputs, labels, topk = batch
    values, indices = (t.cpu() for t in topk)
    target = labels != IGNORE_INDEX  # [b, T]
    counts = target.sum(1).numpy()  # [b]
    out["inputs"].append(inputs.numpy())
    out["offsets"].append(totals[0] + np.cumsum(counts))
    totals[0] += int(counts.sum())
    if "positions" in out:
        out["positions"].append(target.nonzero()[:, 1].numpy())
        out["labels"].append(labels[target].numpy())
    if spec.codec is None:
        out["topk_indices"].append(indices.numpy())
        # fp16 overflows to inf past ±65504; a clamped logit still ranks and softmaxes sensibly.
        out["topk_logits"].append(values.clamp(-_FP16_MAX, _FP16_MAX).half().numpy())
        return
    assert spec.tables is not None
    context = row_context(inputs.numpy(), target.numpy(), spec.objective)
    stream, sizes = encode_rows(
        spec.codec, spec.tables, counts, context, indices.numpy(), values.numpy()
    )
    out["topk_codes"].append(stream)
    out["topk_bytes"].append(totals[1] + np.cumsum(sizes))
    totals[1] += len(stream)


def draw_rows(blocks: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """Rows ``span`` of a cache of several mask draws: row r is block ``r mod n_blocks``."""
    start, end = span
    n = len(blocks)
    if end <= n:
        return np.asarray(blocks[start:end])
    return np.asarray(blocks[np.arange(start, end) % n])


def _launch(
    teacher: torch.nn.Module, blocks: np.ndarray, span: tuple[int, int], spec: PartSpec
) -> Launched:
    rows = draw_rows(blocks, span)  # row r's mask comes from block_generator(seed, r)
    inputs, labels = block_targets(rows, span[0], spec.objective, spec.masking)
    return inputs, labels, teacher_topk(teacher, inputs, labels, spec.top_k, spec.device)


def build_part(
    teacher: torch.nn.Module,
    blocks: np.ndarray,
    part_dir: Path,
    span: tuple[int, int],
    spec: PartSpec,
    first: Launched | None = None,
) -> PartInfo:
    """Run the teacher over blocks ``span`` and write them as one part; returns its PartInfo.
    ``first``: the part's first batch, already run (the calibration batch)."""
    start, end = span
    layout = spec.layout(blocks.shape[1])
    part_dir.mkdir()
    totals = [0, 0]
    with ExitStack() as stack:
        out = {
            name: stack.enter_context(_NpyWriter(part_dir / f"{name}.npy", dtype, shape))
            for name, (dtype, shape) in layout.items()
        }
        for starts in ("offsets", "topk_bytes"):
            if starts in out:
                out[starts].append(np.zeros(1, np.int64))
        pending = None
        batches = range(start, end, spec.batch_size)
        desc = f"teacher top-{spec.top_k} cache"
        for s in tqdm(batches, desc=desc, disable=not spec.progress, unit="batch"):
            batch_span = (s, min(s + spec.batch_size, end))
            reuse = first is not None and s == start and len(first[0]) == batch_span[1] - s
            launched = (
                first if reuse and first is not None else _launch(teacher, blocks, batch_span, spec)
            )
            # Write the previous batch while the accelerator runs this one.
            if pending is not None:
                _write_batch(out, pending, totals, spec)
            pending = launched
        if pending is not None:
            _write_batch(out, pending, totals, spec)
    files = {name: file_info(part_dir / f"{name}.npy") for name in layout}
    return PartInfo(part_dir.name, start, end, totals[0], files)


def calibrate_codec(
    teacher: torch.nn.Module,
    blocks: np.ndarray,
    spec: PartSpec,
    state: PartialState,
    vocab: int,
    step: float,
) -> tuple[PartSpec, Launched | None]:
    """Format 2: the main process runs the teacher on the shard's first batch, builds the
    codec tables from the shard's text and those predictions, fits the codes, and broadcasts
    both; it returns that batch too, to write it rather than run it again."""
    first: Launched | None = None
    chosen: list[tuple[dict, dict[str, np.ndarray]] | None] = [None]
    if state.is_main_process:
        draws = 1 if spec.masking is None else spec.masking.draws
        first = _launch(teacher, blocks, (0, min(spec.batch_size, len(blocks) * draws)), spec)
        inputs, labels, (values, indices) = first
        context = row_context(inputs.numpy(), (labels != IGNORE_INDEX).numpy(), spec.objective)
        rows = max(1, -(-blocks.size // _TABLE_SAMPLE_TOKENS))  # every rows-th block
        text = np.asarray(blocks[::rows]).reshape(-1)
        predicted = indices.cpu().numpy()
        tables = index_tables(text, vocab, DEFAULT_MAX_SUCCESSORS, predicted=predicted)
        tables, codec = fit_codec(tables, context, predicted, values.cpu().numpy(), step=step)
        chosen[0] = (codec.to_dict(), tables.to_files())
    broadcast_object_list(chosen)
    assert chosen[0] is not None
    codec_dict, files = chosen[0]
    tables = IndexTables.from_files(files, vocab)
    return replace(spec, codec=CodecSpec.from_dict(codec_dict), tables=tables), first


def file_info(path: Path) -> FileInfo:
    return FileInfo(sha256=sha256_file(path), bytes=path.stat().st_size)

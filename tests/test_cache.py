"""The teacher top-K logit cache, formats 1 (plain arrays) and 2 (coded rows): round trips
against a fresh forward, masks, serving a smaller K, refusals of corrupted or other caches."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

from lineage.corpora.batches import IGNORE_INDEX, causal_targets
from lineage.errors import ConflictError, LineageError, NotFoundError
from lineage.inherit import cache_build as cache_mod
from lineage.inherit import cache_parts
from lineage.inherit.cache import CacheMeta, MaskSpec, open_cache, part_arrays
from lineage.inherit.cache_build import blocks_digest, build_cache, weights_digest
from lineage.inherit.cache_parts import block_targets, index_dtype, teacher_topk
from lineage.inherit.codec import DEFAULT_STEP
from lineage.inherit.codec_tables import canonical_rows
from lineage.inherit.losses import ki_loss

V, T, N_BLOCKS = 300, 16, 10
MASK_ID, SPECIAL = 4, (0, 1, 2, 3)
META = CacheMeta(teacher_name="teacher-a", tokenizer_fingerprint="fp-a")


def roberta() -> RobertaForMaskedLM:
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=V,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=T + 2,
    )
    return RobertaForMaskedLM(config).eval()


def gpt2(vocab: int = V, width: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=2, n_head=2, n_positions=T)
    return GPT2LMHeadModel(config).eval()


def make_blocks(n: int = N_BLOCKS, vocab: int = V, seed: int = 0) -> np.ndarray:
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    return np.random.default_rng(seed).integers(5, vocab, (n, T)).astype(dtype)


def build_mlm(teacher: torch.nn.Module, blocks: np.ndarray, out: Path, **kw) -> object:
    kw = {"mask_token_id": MASK_ID, "special_ids": SPECIAL, "progress": False, **kw}
    return build_cache(teacher, blocks, out, objective="mlm", meta=META, **kw)


def build_clm(teacher: torch.nn.Module, blocks: np.ndarray, out: Path, **kw) -> object:
    return build_cache(teacher, blocks, out, objective="clm", meta=META, progress=False, **kw)


FORMATS = [pytest.param(1, id="v1"), pytest.param(2, id="v2")]


@pytest.fixture(scope="module", params=FORMATS)
def mlm_cache(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RobertaForMaskedLM]:
    teacher, out = roberta(), tmp_path_factory.mktemp("mlm") / "cache"
    build_mlm(teacher, make_blocks(), out, batch_size=4, format_version=request.param)
    return out, teacher


@pytest.fixture(scope="module", params=FORMATS)
def clm_cache(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT2LMHeadModel]:
    teacher, out = gpt2(), tmp_path_factory.mktemp("clm") / "cache"
    build_clm(teacher, make_blocks(), out, batch_size=3, format_version=request.param)
    return out, teacher


def fresh_target_logits(teacher: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor):
    """Full teacher logits at the target positions, row-major: [N, V]."""
    with torch.no_grad():
        return teacher(input_ids=input_ids).logits[labels != IGNORE_INDEX]


def assert_topk_matches(batch, fresh: torch.Tensor, k: int) -> None:
    """The batch's teacher rows are the fresh top-k. Format 1: ids exactly, values within fp16
    rounding. Format 2 (decoded rows start at 0): every entry's value within half a grid step
    of its token's logit minus the top one, and the ids a top-k up to one grid step (codec 2
    keeps entries of equal coded value in index-code order, so a run of ties that the cut at
    k crosses may keep other tokens of that value than the exact top-k does)."""
    indices, logits = batch.teacher_topk()
    assert indices.dtype == torch.int64 and logits.dtype == torch.float32
    assert indices.shape == (batch.n_targets, k) == logits.shape
    ref, ref_indices = fresh.topk(k, dim=-1)
    assert torch.all(logits[:, :-1] >= logits[:, 1:])
    if batch.topk_coded is None:
        assert torch.equal(indices, ref_indices)
        torch.testing.assert_close(logits, ref, atol=1e-2, rtol=1e-3)
        return
    assert torch.all(logits[:, 0] == 0)
    exact = fresh - ref[:, :1]
    own = exact.gather(1, indices)  # each cached token's exact value
    assert (own - logits).abs().max() <= DEFAULT_STEP / 2 + 1e-4
    assert bool((indices.sort(1).values.diff(dim=1) > 0).all())  # distinct ids
    left_out = exact.scatter(1, indices, float("-inf")).max(1).values
    assert bool((left_out <= own.min(1).values + DEFAULT_STEP + 1e-4).all())
    inner = logits > logits[:, -1:]  # entries above the last run: exactly the top-k's
    assert torch.equal(
        canonical_rows(indices, logits)[0][inner], canonical_rows(ref_indices, logits)[0][inner]
    )


@pytest.mark.parametrize("family", ["gpt2", "roberta"])
def test_teacher_topk_in_float32_under_bf16_autocast(family: str) -> None:
    """The teacher's head and top-K run in float32 under autocast: bf16 logits (old path) were
    off by up to ~0.07 here and reordered ~10 % of the top-10; the fp32 head leaves only the
    backbone's rounding, and the KL to a student tracks the exact (fp32) teacher's."""
    teacher = gpt2() if family == "gpt2" else roberta()
    with torch.no_grad():  # logits of a few units (std ~2), like a trained LM's
        teacher.get_output_embeddings().weight.mul_(12)
    ids = torch.from_numpy(make_blocks(4).astype(np.int64))
    labels = ids if family == "gpt2" else torch.where(torch.rand(ids.shape) < 0.5, ids, -100)
    with torch.no_grad():
        exact = teacher(input_ids=ids).logits[labels != IGNORE_INDEX]  # [N, V] fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            old = teacher(input_ids=ids).logits[labels != IGNORE_INDEX].float()
    values, indices = teacher_topk(teacher, ids, labels, 10, torch.device("cpu"), torch.bfloat16)
    assert values.dtype == torch.float32 and indices.shape == (len(exact), 10)
    ev, ei = exact.topk(10)
    ov, oi = old.topk(10)
    new_err, old_err = (values - ev).abs().max(), (ov - ev).abs().max()
    assert new_err < 0.01 and new_err < old_err / 5
    assert (indices == ei).float().mean() > (oi == ei).float().mean()
    student = exact + torch.randn(exact.shape, generator=torch.Generator().manual_seed(0)) * 0.5

    def kl(v: torch.Tensor, i: torch.Tensor) -> float:
        y = ids[labels != IGNORE_INDEX]
        kw = {"teacher_topk_indices": i, "teacher_topk_logits": v}
        return float(ki_loss(student, y, alpha=1.0, **kw).ki_loss)

    assert abs(kl(values, indices) - kl(ev, ei)) < abs(kl(ov, oi) - kl(ev, ei))


def test_index_dtype_is_smallest_that_fits() -> None:
    assert index_dtype(256) == np.uint8
    assert index_dtype(257) == np.uint16
    assert index_dtype(50265) == np.uint16
    assert index_dtype(65536) == np.uint16
    assert index_dtype(65537) == np.uint32


def test_mlm_round_trip_matches_fresh_forward(mlm_cache) -> None:
    out, teacher = mlm_cache
    cache = open_cache(out)
    batch = cache.shard("general", "teacher-a").batch(range(N_BLOCKS), torch.Generator())
    blocks = torch.from_numpy(make_blocks().astype(np.int64))
    target = batch.labels != IGNORE_INDEX
    assert batch.n_targets == cache.manifest.n_targets > 0
    # Labels are the original tokens; untouched positions keep them; most targets are masked.
    assert torch.equal(batch.labels[target], blocks[target])
    assert torch.equal(batch.input_ids[~target], blocks[~target])
    assert (batch.input_ids[target] == MASK_ID).float().mean() > 0.5
    assert batch.teacher == "teacher-a" and batch.shard == "general"
    assert_topk_matches(batch, fresh_target_logits(teacher, batch.input_ids, batch.labels), 10)


def test_clm_round_trip_uses_blocks_and_next_tokens(clm_cache) -> None:
    out, teacher = clm_cache
    cache = open_cache(out)
    batch = cache.shard("code").batch([3, 0, 9], torch.Generator())
    blocks = torch.from_numpy(make_blocks()[[3, 0, 9]].astype(np.int64))
    assert torch.equal(batch.input_ids, blocks)
    assert torch.equal(batch.labels, causal_targets(blocks))
    assert batch.n_targets == 3 * (T - 1) and cache.manifest.n_targets == N_BLOCKS * (T - 1)
    assert_topk_matches(batch, fresh_target_logits(teacher, blocks, batch.labels), 10)


def test_batch_rows_follow_block_order(mlm_cache) -> None:
    shard = open_cache(mlm_cache[0]).shard("general")
    whole = shard.batch(range(N_BLOCKS), torch.Generator())
    counts = (whole.labels != IGNORE_INDEX).sum(1)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    picked = [7, 2, 5]
    sub = shard.batch(picked, torch.Generator())
    for got, full in zip(sub.teacher_topk(), whole.teacher_topk(), strict=True):
        assert torch.equal(got, torch.cat([full[starts[i] : starts[i + 1]] for i in picked]))
    assert torch.equal(sub.labels, whole.labels[picked])
    empty = shard.batch([], torch.Generator())
    assert empty.input_ids.shape == (0, T) and empty.teacher_topk()[1].shape == (0, 10)


def test_mlm_masks_reproducible_and_independent_of_batch_size(tmp_path, mlm_cache) -> None:
    teacher, blocks = mlm_cache[1], make_blocks()
    a = open_cache(mlm_cache[0])
    build_mlm(teacher, blocks, tmp_path / "bs1", batch_size=1, format_version=a.format_version)
    build_mlm(teacher, blocks, tmp_path / "seed1", batch_size=4, mask_seed=1)
    b = open_cache(tmp_path / "bs1")
    for i in range(N_BLOCKS):
        for key in ("inputs", "positions", "labels"):
            assert np.array_equal(a.block(i)[key], b.block(i)[key]), (i, key)
    rows_a = canonical_rows(*a.shard("s").batch(range(N_BLOCKS)).teacher_topk())
    rows_b = canonical_rows(*b.shard("s").batch(range(N_BLOCKS)).teacher_topk())
    assert torch.equal(rows_a[0], rows_b[0])  # ties may be kept in another order: not compared
    # The same masks come from block_targets alone, block by block.
    spec = MaskSpec(MASK_ID, V, SPECIAL)
    inputs, labels = block_targets(blocks[4:5], 4, "mlm", spec)
    assert np.array_equal(a.block(4)["inputs"], inputs[0].numpy())
    assert np.array_equal(a.block(4)["positions"], (labels[0] != IGNORE_INDEX).nonzero()[:, 0])
    other = open_cache(tmp_path / "seed1")
    assert not all(np.array_equal(a.block(i)["inputs"], other.block(i)["inputs"]) for i in range(4))


def test_block_targets_never_mask_special_tokens_and_shift_for_causal() -> None:
    blocks = make_blocks(n=64)
    blocks[:, ::2] = 2  # half the tokens are special
    spec = MaskSpec(MASK_ID, V, SPECIAL, probability=0.5)
    inputs, labels = block_targets(blocks, 0, "mlm", spec)
    tokens = torch.from_numpy(blocks.astype(np.int64))
    assert torch.all(labels[:, ::2] == IGNORE_INDEX) and torch.equal(inputs[:, ::2], tokens[:, ::2])
    assert 0.4 < (labels[:, 1::2] != IGNORE_INDEX).float().mean() < 0.6
    inputs, labels = block_targets(blocks, 0, "clm", None)
    assert torch.equal(inputs, tokens) and torch.equal(labels, causal_targets(tokens))


def test_full_k_equals_full_distribution(tmp_path) -> None:
    teacher, blocks = gpt2(), make_blocks(n=3)
    manifest = build_clm(teacher, blocks, tmp_path / "full", top_k="full")
    assert manifest.meta.top_k == V and manifest.format_version == 1  # too wide to code
    batch = open_cache(tmp_path / "full").shard("s").batch(range(3), torch.Generator())
    dense = torch.empty(batch.n_targets, V).scatter_(1, batch.topk_indices, batch.topk_logits)
    fresh = fresh_target_logits(teacher, batch.input_ids, batch.labels)
    torch.testing.assert_close(dense.softmax(-1), fresh.softmax(-1), atol=1e-4, rtol=1e-2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokenizer_fingerprint", "fp-b"),
        ("teacher_digest", "0" * 64),
        ("teacher_name", "teacher-b"),
        ("top_k", 100),
        ("objective", "clm"),
        ("block_size", 512),
    ],
)
def test_open_refuses_other_setup(mlm_cache, field: str, value: object) -> None:
    with pytest.raises(LineageError, match=field) as err:
        open_cache(mlm_cache[0], expect=CacheMeta(**{field: value}))
    cached = getattr(open_cache(mlm_cache[0], verify=False).meta, field)
    assert repr(value) in str(err.value) and repr(cached) in str(err.value)


def test_open_accepts_matching_setup(mlm_cache) -> None:
    out, teacher = mlm_cache
    expect = CacheMeta("teacher-a", weights_digest(teacher), "fp-a", 10, "mlm", T)
    assert open_cache(out, expect=expect).meta == expect


def copy_cache(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cache_files(root: Path) -> list[str]:
    """Every file of a cache but its manifest, relative to its root."""
    return sorted(str(f.relative_to(root)) for f in root.rglob("*.npy"))


def test_flipped_byte_is_detected(tmp_path, mlm_cache) -> None:
    files = cache_files(mlm_cache[0])
    names = part_arrays(open_cache(mlm_cache[0]).format_version, "mlm")
    assert len(files) == len(names) + (3 if "topk_codes" in names else 0)  # + codec tables
    for rel in files:
        out = copy_cache(mlm_cache[0], tmp_path / rel.replace("/", "-"))
        data = bytearray((out / rel).read_bytes())
        data[-1] ^= 0x01
        (out / rel).write_bytes(bytes(data))
        with pytest.raises(LineageError, match=rel.split("/")[-1]):
            open_cache(out)


def test_truncated_file_is_detected_without_hashing(tmp_path, mlm_cache) -> None:
    out = copy_cache(mlm_cache[0], tmp_path / "c")
    name = "topk_codes" if open_cache(out).format_version == 2 else "topk_logits"
    file = out / "part-00000" / f"{name}.npy"
    file.write_bytes(file.read_bytes()[:-20])
    with pytest.raises(LineageError, match=rf"{name}\.npy.*truncated"):
        open_cache(out, verify=False)


def test_missing_cache_and_manifest(tmp_path) -> None:
    with pytest.raises(NotFoundError):
        open_cache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="manifest"):
        open_cache(tmp_path / "empty")


class Exploding(torch.nn.Module):
    """A teacher that fails on its n-th forward, as a crash mid-build would."""

    def __init__(self, inner: torch.nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner, self.config, self.fail_at, self.calls = inner, inner.config, fail_at, 0

    def forward(self, **kw):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("teacher crashed")
        return self.inner(**kw)


def test_interrupted_build_leaves_no_cache(tmp_path) -> None:
    parent = tmp_path / "caches"
    teacher = Exploding(gpt2(), fail_at=3)  # after the first batch was written
    with pytest.raises(RuntimeError, match="crashed"):
        build_clm(teacher, make_blocks(), parent / "c", batch_size=2)
    assert teacher.calls == 3
    assert list(parent.iterdir()) == []


def test_existing_cache_is_kept_unless_overwrite(clm_cache, tmp_path) -> None:
    out = copy_cache(clm_cache[0], tmp_path / "c")
    with pytest.raises(ConflictError, match="exists"):
        build_clm(clm_cache[1], make_blocks(n=2), out)
    build_clm(clm_cache[1], make_blocks(n=2), out, overwrite=True)
    assert len(open_cache(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_manifest_records_identity_and_files(clm_cache) -> None:
    out, teacher = clm_cache
    blocks = make_blocks()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["blocks_sha256"] == hashlib.sha256(blocks.tobytes()).hexdigest()
    assert manifest["blocks_sha256"] == blocks_digest(blocks)
    assert manifest["meta"]["teacher_digest"] == weights_digest(teacher)
    assert manifest["meta"] == {**manifest["meta"], "objective": "clm", "top_k": 10}
    assert manifest["n_blocks"] == N_BLOCKS and manifest["masking"] is None
    files = {f"part-00000/{name}": info for name, info in manifest["parts"][0]["files"].items()}
    files |= manifest["files"]  # format 2: the codec tables
    assert sorted(f"{name}.npy" for name in files) == cache_files(out)
    for name, info in files.items():
        file = out / f"{name}.npy"
        assert info["bytes"] == file.stat().st_size
        assert info["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert not (out / "part-00000" / "part.json").exists()
    if manifest["format_version"] == 2:
        assert manifest["codec"]["top_k"] == 10 and manifest["codec"]["step"] == DEFAULT_STEP
        assert sorted(manifest["parts"][0]["files"]) == sorted(part_arrays(2, "clm"))


def test_large_vocabulary_stores_uint32(tmp_path) -> None:
    vocab = 65536 + 64
    teacher, blocks = gpt2(vocab=vocab, width=8), make_blocks(n=1, vocab=vocab)
    blocks[0, 5] = vocab - 1  # an input id past uint16 must survive the round trip
    build_clm(teacher, blocks, tmp_path / "c", top_k="full")  # "full": every id is stored
    cache = open_cache(tmp_path / "c")
    assert cache.manifest.index_dtype == "uint32"
    assert cache.block(0)["topk_indices"].dtype == np.uint32
    batch = cache.shard("s").batch([0], torch.Generator())
    assert torch.equal(batch.input_ids, torch.from_numpy(blocks.astype(np.int64)))
    assert batch.topk_indices.max() == vocab - 1
    assert_topk_matches(batch, fresh_target_logits(teacher, batch.input_ids, batch.labels), vocab)


def test_large_vocabulary_codes_every_id(tmp_path) -> None:
    vocab = 65536 + 64
    teacher, blocks = gpt2(vocab=vocab, width=8), make_blocks(n=2, vocab=vocab)
    blocks[0, 5] = vocab - 1
    build_clm(teacher, blocks, tmp_path / "c", top_k=20)
    cache = open_cache(tmp_path / "c")
    assert cache.format_version == 2 and cache.decoder is not None
    assert cache.decoder.tables.succ_tokens.dtype == np.uint32
    batch = cache.shard("s").batch([1, 0], torch.Generator())
    assert torch.equal(batch.input_ids, torch.from_numpy(blocks[[1, 0]].astype(np.int64)))
    assert_topk_matches(batch, fresh_target_logits(teacher, batch.input_ids, batch.labels), 20)


def test_small_vocabulary_stores_uint16(tmp_path) -> None:
    build_mlm(roberta(), make_blocks(n=2), tmp_path / "c", format_version=1)
    cache = open_cache(tmp_path / "c")
    assert cache.manifest.index_dtype == "uint16"
    assert cache.block(0)["topk_indices"].dtype == np.uint16
    assert cache.block(0)["topk_logits"].dtype == np.float16


def test_two_rank_parts_merge_to_the_single_process_cache(tmp_path, clm_cache) -> None:
    """What two ranks would write (one part each), merged by the main process."""
    out, teacher = clm_cache
    single = open_cache(out)
    blocks = make_blocks()
    spec = cache_parts.PartSpec(
        "clm", 10, None, np.dtype(np.uint16), 3, torch.device("cpu"), False, single.format_version
    )
    first = None
    if single.format_version == 2:  # the main process calibrates on the shard's first batch
        state = cache_parts.PartialState(cpu=True)
        spec, first = cache_parts.calibrate_codec(teacher, blocks, spec, state, V, DEFAULT_STEP)
    tmp = tmp_path / ".c.partial"
    tmp.mkdir()
    for rank in range(2):
        span = cache_mod._part_span(N_BLOCKS, 2, rank)
        given = first if rank == 0 else None
        part = cache_parts.build_part(teacher, blocks, tmp / f"part-{rank:05d}", span, spec, given)
        (tmp / part.dir / "part.json").write_text(json.dumps(cache_mod.asdict(part)))
    manifest = cache_mod._merge_manifest(tmp, 2, single.meta, blocks, spec, V)
    cache_mod._publish(tmp, tmp_path / "c", manifest, overwrite=False)
    merged = open_cache(tmp_path / "c")
    assert [p.block_end for p in merged.manifest.parts] == [5, 10]
    a = merged.shard("s").batch([9, 4, 5, 0], torch.Generator())
    b = single.shard("s").batch([9, 4, 5, 0], torch.Generator())
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    (a_i, a_v), (b_i, b_v) = a.teacher_topk(), b.teacher_topk()
    assert torch.equal(a_i, b_i)
    torch.testing.assert_close(a_v, b_v, atol=1e-2, rtol=1e-3)


def test_build_refuses_meta_that_contradicts_arguments(tmp_path) -> None:
    with pytest.raises(LineageError, match="top_k: expected 5, cache has 10"):
        build_cache(
            gpt2(), make_blocks(n=2), tmp_path / "c", objective="clm",
            meta=CacheMeta(teacher_name="t", top_k=5), progress=False,
        )  # fmt: skip
    with pytest.raises(LineageError, match="mask_token_id"):
        build_cache(gpt2(), make_blocks(n=2), tmp_path / "c", objective="mlm", meta=META)
    assert not (tmp_path / "c").exists()


def test_shard_refuses_another_teacher(mlm_cache) -> None:
    with pytest.raises(ConflictError, match="teacher-b"):
        open_cache(mlm_cache[0]).shard("general", "teacher-b")


@pytest.mark.parametrize("version", [1, 2])
def test_huge_logits_stay_finite(tmp_path, version: int) -> None:
    """Format 1 clamps to the fp16 range; format 2 stores differences, clamped past 30 nats."""
    teacher = gpt2()
    teacher.train()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(1e5)  # tied to the embeddings: logits ~1e5·|h|²
    build_clm(teacher, make_blocks(n=2), tmp_path / "c", top_k=5, format_version=version)
    assert teacher.training  # build_cache puts the teacher back in the mode it found it in
    cache = open_cache(tmp_path / "c")
    logits = cache.shard("s").batch([0, 1], torch.Generator()).teacher_topk()[1]
    assert torch.isfinite(logits).all()
    if version == 1:
        assert logits.abs().max() == np.finfo(np.float16).max
    else:  # entries lie ~1e5 apart: every gap clamps at the gap code's largest, ≥ 30 nats
        assert cache.decoder is not None
        spec = cache.decoder.spec
        clamp = (spec.gap_code.capacity - 1) * spec.step
        assert clamp >= 30 and torch.allclose(logits.diff(dim=1), torch.tensor(-clamp))


def test_a_cache_serves_any_smaller_k(tmp_path, clm_cache) -> None:
    """The first k entries of a top-K cache's rows are the teacher's top-k (a K = 3 cache)."""
    out, teacher = clm_cache
    cache = open_cache(out)
    version = cache.format_version
    build_clm(
        teacher, make_blocks(), tmp_path / "k3", batch_size=3, top_k=3, format_version=version
    )
    wide = cache.shard("s", top_k=3).batch([2, 8])
    narrow = open_cache(tmp_path / "k3").shard("s").batch([2, 8])
    (w_i, w_v), (n_i, n_v) = wide.teacher_topk(), narrow.teacher_topk()
    assert w_i.shape == (2 * (T - 1), 3)
    torch.testing.assert_close(w_v, n_v, atol=1e-2, rtol=1e-3)
    if version == 1:
        assert torch.equal(w_i, n_i)
    else:  # the first 3 of the top 10 as decoded: a top-3 up to ties at the cut (see below)
        assert torch.equal(w_i, cache.shard("s").batch([2, 8]).teacher_topk()[0][:, :3])
    for batch in (wide, narrow):
        assert_topk_matches(batch, fresh_target_logits(teacher, batch.input_ids, batch.labels), 3)
    with pytest.raises(ConflictError, match="holds the top 10, it cannot serve K = 11"):
        cache.shard("s", top_k=11)


def test_format_2_refuses_codec_that_disagrees(tmp_path) -> None:
    out = tmp_path / "c"
    build_clm(gpt2(), make_blocks(n=4), out)
    manifest = json.loads((out / "manifest.json").read_text())
    for change, message in (
        ({"codec": {**manifest["codec"], "top_k": 9}}, "K or vocabulary differs"),
        ({"codec": {**manifest["codec"], "name": "zstd"}}, "unknown top-K codec"),
        ({"codec": None}, "format 2 and its codec disagree"),
        ({"format_version": 3}, "newer than this lineage reads"),
        ({"files": {}}, "no entry for codec/ranked"),
    ):
        bad = copy_cache(out, tmp_path / f"bad{len(list(tmp_path.iterdir()))}")
        (bad / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(LineageError, match=message):
            open_cache(bad)


def test_format_2_is_the_default_and_smaller(tmp_path) -> None:
    teacher, blocks = gpt2(), make_blocks(n=40)
    v2 = build_clm(teacher, blocks, tmp_path / "v2", batch_size=8)
    build_clm(teacher, blocks, tmp_path / "v1", batch_size=8, format_version=1)
    assert v2.format_version == 2

    def part_bytes(root: Path) -> int:
        return sum(f.stat().st_size for f in (root / "part-00000").glob("*.npy"))

    assert part_bytes(tmp_path / "v2") < part_bytes(tmp_path / "v1") / 2

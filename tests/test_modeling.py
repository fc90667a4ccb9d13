"""Shapes, configs per family, model directories, and head-at-targets logits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from lineage.corpora.tokenizer import load_tokenizer, train_tokenizer
from lineage.errors import LineageError
from lineage.models.modeling import (
    FAMILIES,
    PRESETS,
    ModelShape,
    TargetLogits,
    build_config,
    create_model,
    load_model,
)
from lineage.registry.modelinfo import read_model_info

VOCABULARY = "alpha beta gamma delta protein cell graph kernel the of and model data"
WORDS = VOCABULARY.split()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(100)]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(texts, out, vocab_size=300)
    return out


class _RobertaVocab:
    """The ids and size of RoBERTa's 50,265-token vocabulary (the paper's tokenizer)."""

    pad_token_id, bos_token_id, eos_token_id = 1, 0, 2

    def __len__(self) -> int:
        return 50265


@pytest.mark.parametrize(
    ("preset", "paper_millions"),
    [("MEDIUM", 73.5), ("BASE", 125), ("BASE_PLUS", 211), ("LARGE", 355)],
)
def test_presets_reproduce_table5_parameter_counts(preset: str, paper_millions: float) -> None:
    config = build_config("roberta", preset, _RobertaVocab(), 512)
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForMaskedLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.005


def test_shape_validation() -> None:
    assert PRESETS["tiny"] == ModelShape(2, 64, 2, 256)
    assert PRESETS["BASE"].head_dim == 64 and PRESETS["BASE_PLUS"].head_dim == 72
    with pytest.raises(LineageError, match="divisible"):
        ModelShape(2, 65, 2, 256)
    with pytest.raises(LineageError, match="kv_heads"):
        ModelShape(2, 64, 4, 256, kv_heads=3)
    with pytest.raises(LineageError, match="layers"):
        ModelShape(0, 64, 2, 256)


def test_unknown_family_lists_families(tok_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LineageError) as info:
        create_model("t5", "tiny", tok_dir, tmp_path / "m", seed=0)
    assert all(f in str(info.value) for f in FAMILIES)
    with pytest.raises(LineageError, match="presets"):
        create_model("gpt2", "huge", tok_dir, tmp_path / "m", seed=0)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_create_and_load(family: str, tok_dir: Path, tmp_path: Path) -> None:
    a = create_model(family, "tiny", tok_dir, tmp_path / "a", seed=3, max_positions=64)
    b = create_model(family, "tiny", tok_dir, tmp_path / "b", seed=3, max_positions=64)
    c = create_model(family, "tiny", tok_dir, tmp_path / "c", seed=4, max_positions=64)
    info = read_model_info(a)
    assert (info.family, info.objective) == (family, FAMILIES[family])
    assert (info.layers, info.d_model, info.heads, info.d_ffn, info.vocab_size) == (
        2,
        64,
        2,
        256,
        300,
    )
    assert (a / "model.safetensors").is_file() and (a / "tokenizer.json").is_file()
    ma, mb, mc = load_model(a), load_model(b), load_model(c)
    assert ma.config._attn_implementation == "sdpa"
    assert ma.config.pad_token_id == 0 and ma.config.eos_token_id == 2
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name  # same seed, same weights
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(ma.parameters(), mc.parameters(), strict=True)
    )
    # The longest block fits the position table.
    ids = torch.randint(5, 300, (1, 64))
    assert ma.eval()(input_ids=ids).logits.shape == (1, 64, 300)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_target_logits_equal_full_logits_at_targets(family: str, tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    config = build_config(family, "tiny", tok, 32)
    auto = AutoModelForMaskedLM if FAMILIES[family] == "mlm" else AutoModelForCausalLM
    model = auto.from_config(config).eval()
    ids = torch.randint(5, 300, (3, 32))
    labels = torch.where(torch.rand(3, 32) < 0.3, ids, torch.full_like(ids, -100))
    wrapped = TargetLogits(model)
    assert wrapped._head is not None  # the head was found: the fast path is tested
    got = wrapped(ids, None, labels)
    want = model(input_ids=ids).logits[labels != -100]
    assert got.shape == (int((labels != -100).sum()), 300)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "roberta"])
def test_fp32_head_under_autocast(family: str, tok_dir: Path) -> None:
    """fp32_head: the backbone runs under bf16 autocast, the head in float32."""
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    config = build_config(family, "tiny", tok, 32)
    auto = AutoModelForMaskedLM if FAMILIES[family] == "mlm" else AutoModelForCausalLM
    model = auto.from_config(config).eval()
    ids = torch.randint(5, 300, (3, 32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = TargetLogits(model)(ids, None, ids)
        full = TargetLogits(model, fp32_head=True)(ids, None, ids)
        hidden = TargetLogits(model).hidden(ids, None).reshape(-1, config.hidden_size)
    with torch.no_grad():
        want = TargetLogits(model).project(hidden.float())  # the same rows, head in fp32
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(full, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dropout_and_init_range_knobs(family: str, tok_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tok_dir)
    default = build_config(family, "tiny", tok, 32)
    config = build_config(family, "tiny", tok, 32, dropout=0.0, init_range=0.1)
    fields = {
        k: v
        for k, v in config.to_dict().items()
        if "drop" in k and "summary" not in k and isinstance(v, float)
    }
    assert fields and all(v == 0.0 for v in fields.values())
    assert any(getattr(default, k) > 0 for k in fields) or family == "llama"
    assert config.initializer_range == 0.1 and default.initializer_range == 0.02
    out = create_model(family, "tiny", tok_dir, tmp_path / "m", seed=0, dropout=0.0, init_range=0.1)
    model = load_model(out)
    assert model.config.initializer_range == 0.1  # saved with the model
    w = model.get_input_embeddings().weight.detach()
    assert 0.07 < float(w.std()) < 0.13  # drawn at the given range, not at 0.02
    with pytest.raises(LineageError, match="dropout"):
        build_config(family, "tiny", tok, 32, dropout=1.0)


def test_vocabulary_mismatch_refused(tok_dir: Path, tmp_path: Path) -> None:
    model_dir = create_model("gpt2", "tiny", tok_dir, tmp_path / "m", seed=0)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    spec["model"]["vocab"]["zzzz-new"] = 300  # one id more than the embedding has rows
    (model_dir / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(LineageError, match="vocabulary mismatch"):
        load_model(model_dir)


def test_existing_directory_refused(tok_dir: Path, tmp_path: Path) -> None:
    create_model("bert", "tiny", tok_dir, tmp_path / "m", seed=0)
    with pytest.raises(LineageError, match="already exists"):
        create_model("bert", "tiny", tok_dir, tmp_path / "m", seed=1)
    create_model("bert", "tiny", tok_dir, tmp_path / "m", seed=1, overwrite=True)

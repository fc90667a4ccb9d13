"""Byte-level BPE training: fixed special ids, Hugging Face format, fingerprint, determinism."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lineage.corpora.tokenizer import SPECIAL_TOKENS, TokenizerInfo, load_tokenizer, train_tokenizer
from lineage.errors import LineageError
from lineage.registry.modelinfo import tokenizer_fingerprint

VOCABULARY = "alpha beta gamma delta protein cell graph kernel the of and model data über"
WORDS = VOCABULARY.split()


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(corpus(), out, vocab_size=300)
    return out


def test_special_tokens_have_fixed_ids(tok_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tok.unk_token_id, tok.mask_token_id) == (3, 4)
    assert len(tok) == 300
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["mask_token"] == "<mask>" and config["pad_token"] == "<pad>"


def test_round_trip_and_bytes(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    for text in ["alpha beta über", "unseen ✓ text 123", corpus(1, seed=7)[0]]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert all(i >= len(SPECIAL_TOKENS) for i in ids)  # text never maps to a special id
        assert tok.decode(ids) == text  # byte-level: lossless, no <unk>
    # Frequent words (after a space, as they occur) became single tokens: BPE merged them.
    assert len(tok(" alpha", add_special_tokens=False)["input_ids"]) == 1


def test_fingerprint_is_the_vocabulary_and_deterministic(tmp_path: Path, tok_dir: Path) -> None:
    again = train_tokenizer(corpus(), tmp_path / "again", vocab_size=300)
    assert again == tokenizer_fingerprint(tok_dir)
    other = train_tokenizer(corpus(seed=1)[:20], tmp_path / "other", vocab_size=290)
    assert other != again


def test_info(tok_dir: Path) -> None:
    info = TokenizerInfo.of(load_tokenizer(tok_dir))
    assert info == TokenizerInfo(300, pad_id=0, eos_id=2, mask_id=4, special_ids=(0, 1, 2, 3, 4))


def test_refusals(tmp_path: Path, tok_dir: Path) -> None:
    with pytest.raises(LineageError, match="vocab_size"):
        train_tokenizer(corpus(), tmp_path / "t", vocab_size=100)
    with pytest.raises(LineageError, match="already exists"):
        train_tokenizer(corpus(), tok_dir, vocab_size=300)
    with pytest.raises(LineageError, match="no text"):
        train_tokenizer(["", "  "], tmp_path / "empty", vocab_size=300)
    with pytest.raises(LineageError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize(
    ("family", "task", "positions"), [("gpt2", "text-generation", 24), ("roberta", "fill-mask", 20)]
)
def test_models_carry_their_positions_and_pipelines_take_long_inputs(
    tok_dir: Path, tmp_path: Path, family: str, task: str, positions: int
) -> None:
    """A saved model's tokenizer says how long an input may be (not 1e30) and nothing about
    this machine, so transformers' pipelines cut a prompt longer than the model's positions
    instead of failing with 'index out of range'."""
    from transformers import pipeline

    from lineage.models.modeling import ModelShape, create_model, load_model, position_limit

    out = tmp_path / family
    create_model(family, ModelShape(2, 32, 2, 64), tok_dir, out, seed=0, max_positions=positions)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == positions
    assert position_limit(load_model(out).config) == positions
    assert not {"local_files_only", "is_local", "name_or_path"} & set(config)
    assert str(tmp_path) not in (out / "tokenizer_config.json").read_text()
    long_text = " ".join(WORDS * 8)  # far more tokens than the model has positions
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert len(tok(long_text)["input_ids"]) > 3 * positions
    pipe = pipeline(task, model=str(out), device="cpu")
    if task == "text-generation":
        (result,) = pipe(
            long_text, max_new_tokens=4, do_sample=False, handle_long_generation="hole"
        )
        assert isinstance(result["generated_text"], str)
    else:
        results = pipe(f"alpha <mask> {long_text}", tokenizer_kwargs={"truncation": True}, top_k=3)
        assert len(results) == 3 and all(r["token_str"] is not None for r in results)

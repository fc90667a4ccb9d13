"""Real-format pieces built here (no downloads): SentencePiece/Llama-style and WordPiece (BERT)
tokenizers trained with `tokenizers`, tiny Llama (GQA, tied), BERT without an MLM head,
RoBERTa MLM and GPT-2 models; registered, shared with students, tokenised into blocks, and
the CLI journey from a real model's tokenizer to a KI student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from typer.testing import CliRunner

from lineage.cli import app
from lineage.corpora.batches import tokenize_to_blocks
from lineage.corpora.tokenizer import TokenizerInfo, load_tokenizer, separator_id
from lineage.errors import LineageError
from lineage.registry.modelinfo import ENCODER, read_model_info, tokenizer_fingerprint
from lineage.workspace import Workspace

runner = CliRunner()
TEXT = [
    "The committee reviewed the contract and the statute before the hearing.",
    "def parse(tokens): return [t.lower() for t in tokens if t]",
    "The protein binds the receptor in the membrane of the cell.",
] * 8


def save(model: PreTrainedModel, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out))
    return out


def llama_teacher(tokenizer_dir: Path, out: Path) -> Path:
    """A tiny Llama as real checkpoints are: GQA (4 heads, 2 kv heads), tied embeddings."""
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    return save(LlamaForCausalLM(config), tokenizer_dir, out)


def bert_config(tokenizer_dir: Path) -> BertConfig:
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )


# ---- tokenizers -------------------------------------------------------------------------


def test_separator_per_tokenizer(
    llama_tokenizer_dir: Path, wordpiece_tokenizer_dir: Path, tiny_tokenizer_dir: Path
) -> None:
    llama, wordpiece = load_tokenizer(llama_tokenizer_dir), load_tokenizer(wordpiece_tokenizer_dir)
    assert separator_id(llama) == llama.eos_token_id == 2  # </s>
    assert wordpiece.eos_token_id is None and separator_id(wordpiece) == 3  # [SEP]
    info = TokenizerInfo.of(wordpiece)
    assert (info.eos_id, info.pad_id, info.mask_id) == (3, 0, 4)
    info = TokenizerInfo.of(llama)  # no pad token: pads with EOS; no mask token
    assert (info.eos_id, info.pad_id, info.mask_id) == (2, 2, None)
    assert separator_id(load_tokenizer(tiny_tokenizer_dir)) == 2  # lineage's own BPE: </s>


def test_wordpiece_blocks_end_documents_with_sep(
    wordpiece_tokenizer_dir: Path, tmp_path: Path
) -> None:
    tok = load_tokenizer(wordpiece_tokenizer_dir)
    info = tokenize_to_blocks(TEXT, tok, 16, tmp_path / "blocks.npy")
    blocks = np.load(tmp_path / "blocks.npy")
    assert info.blocks == len(blocks) > 0
    flat = blocks.reshape(-1).tolist()
    assert 3 in flat and 2 not in flat  # [SEP] between documents; no [CLS] inside blocks
    first = flat[: flat.index(3)]
    assert tok.decode(first) == TEXT[0].lower()  # lower-cased WordPiece, cleaned up by decode


def test_register_copies_the_tokenizer_with_its_kind_and_specials(
    ws: Workspace, llama_tokenizer_dir: Path, wordpiece_tokenizer_dir: Path
) -> None:
    from lineage.lifecycle import register_workspace_tokenizer

    llama = register_workspace_tokenizer(ws, str(llama_tokenizer_dir), "llama")
    assert llama.fingerprint == tokenizer_fingerprint(llama_tokenizer_dir)
    assert llama.params["kind"] == "sentencepiece-bpe" and llama.params["separator"] == "</s>"
    assert llama.params["specials"] == {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    assert Path(llama.path).parent == ws.models_dir / "tokenizers"
    wp = register_workspace_tokenizer(ws, str(wordpiece_tokenizer_dir), "wp")
    assert wp.params["kind"] == "wordpiece" and wp.params["separator"] == "[SEP]"
    assert wp.vocab_size == len(load_tokenizer(wordpiece_tokenizer_dir))
    with pytest.raises(LineageError, match="already registered"):
        register_workspace_tokenizer(ws, str(wordpiece_tokenizer_dir), "wp")
    with pytest.raises(LineageError, match="neither a registered model nor a folder"):
        register_workspace_tokenizer(ws, "no-such-model")
    assert [t.name for t in ws.registry.tokenizers()] == ["llama", "wp"]


def test_unigram_fingerprint_is_by_id(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    uni.train_from_iterator(TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=uni, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(tmp_path / "t5ish"))
    fingerprint = tokenizer_fingerprint(tmp_path / "t5ish")
    vocab = json.loads((tmp_path / "t5ish" / "tokenizer.json").read_text())["model"]["vocab"]
    assert isinstance(vocab, list)  # Unigram: [token, score] pairs, the index is the id
    by_id = sorted(load_tokenizer(tmp_path / "t5ish").get_vocab().items(), key=lambda kv: kv[1])
    expected = json.dumps(by_id, ensure_ascii=False)
    import hashlib

    assert fingerprint == hashlib.sha256(expected.encode()).hexdigest()


# ---- encoders: objective from the weights -------------------------------------------------


def test_bert_without_mlm_head_is_an_encoder(
    ws: Workspace, wordpiece_tokenizer_dir: Path, tmp_path: Path
) -> None:
    from lineage.inherit.plans import create_plan
    from lineage.lifecycle import evaluate_model

    config = bert_config(wordpiece_tokenizer_dir)
    torch.manual_seed(0)
    enc = save(BertModel(config), wordpiece_tokenizer_dir, tmp_path / "minilm")
    mlm = save(BertForMaskedLM(config), wordpiece_tokenizer_dir, tmp_path / "bert-mlm")
    assert read_model_info(enc).objective == ENCODER
    assert read_model_info(mlm).objective == "mlm"
    cfg = json.loads((enc / "config.json").read_text())
    del cfg["architectures"]  # an old checkpoint: only the weights tell there is no head
    (enc / "config.json").write_text(json.dumps(cfg))
    assert read_model_info(enc).objective == ENCODER
    ws.register_model(enc, name="minilm")
    ws.register_model(mlm, name="bert-mlm")
    from lineage.corpora.domains import add_domain

    (tmp_path / "x.txt").write_text("\n\n".join(TEXT), encoding="utf-8")
    add_domain(ws, "x", [tmp_path / "x.txt"], valid_every=5)
    with pytest.raises(LineageError, match="'minilm' is an encoder: it has no masked- or causal"):
        evaluate_model(ws, "minilm", [])
    with pytest.raises(LineageError, match=r"encoder.*refused as a KI teacher"):
        create_plan(ws, student="bert-mlm", domains=["x"], teachers=["minilm"])
    with pytest.raises(LineageError, match=r"encoder.*refused as a KI student"):
        create_plan(ws, student="minilm", domains=["x"], teachers="auto")
    from lineage.inherit.plans import compatible_teachers
    from lineage.lifecycle import grow_workspace_model

    with pytest.raises(LineageError, match="refused as a growth source"):
        grow_workspace_model(ws, "minilm", "big", layers=2, hidden=64)

    student = ws.registry.model("bert-mlm")
    assert compatible_teachers(ws.registry, student) == []  # minilm is no teacher


def test_masked_families_need_a_mask_token(ws: Workspace, llama_tokenizer_dir: Path) -> None:
    from lineage.lifecycle import create_workspace_model, register_workspace_tokenizer
    from lineage.models.modeling import ModelShape

    register_workspace_tokenizer(ws, str(llama_tokenizer_dir), "llama")
    shape = ModelShape(layers=1, hidden=16, heads=2, ffn=32)
    with pytest.raises(LineageError, match="roberta is a masked LM and needs a mask token"):
        create_workspace_model(ws, "r", family="roberta", shape=shape, tokenizer="llama")
    assert not ws.registry.has_model("r") and not (ws.models_dir / "r").exists()
    with pytest.raises(LineageError, match="exactly one"):
        create_workspace_model(ws, "r", family="gpt2", shape=shape)


# ---- the journey, from the CLI ------------------------------------------------------------


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.stdout


def test_cli_journey_with_real_format_tokenizers(
    tmp_path: Path, llama_tokenizer_dir: Path, wordpiece_tokenizer_dir: Path
) -> None:
    """A real Llama-format teacher's tokenizer shared with a smaller GPT-2 student that learns
    from it by KI; a BERT encoder refused as a teacher, its WordPiece vocabulary reused by a
    RoBERTa student (documents separated by [SEP]) — every step a CLI command."""
    from conftest import _bundled_slice

    ws = str(tmp_path / "ws")
    w = ["-w", ws]
    cli("init", ws)
    for name in ("literature", "cs"):
        text = tmp_path / f"{name}.txt"
        text.write_text("\n\n".join(_bundled_slice(name, 40)) + "\n", encoding="utf-8")
        cli(*w, "domain", "add", name, str(text), "--valid-every", "5")
    teacher = llama_teacher(llama_tokenizer_dir, tmp_path / "hf" / "smol")
    out = json.loads(cli(*w, "model", "register", str(teacher), "-d", "literature", "--json"))
    assert (out["family"], out["objective"]) == ("llama", "clm")
    assert (out["heads"], out["kv_heads"]) == (4, 2)  # GQA, read from the config
    assert "4 heads (2 kv heads: GQA)" in " ".join(cli(*w, "model", "show", "smol").split())
    tok = json.loads(cli(*w, "tokenizer", "register", "smol", "--json"))
    assert tok["name"] == "smol" and tok["params"]["kind"] == "sentencepiece-bpe"
    student_args = ["--layers", "1", "--hidden", "16", "--heads", "2", "--max-positions", "64"]
    student = json.loads(
        cli(*w, "model", "create", "pupil", "--family", "gpt2", "--tokenizer-from", "smol",
            *student_args, "--json")
    )  # fmt: skip
    assert student["tokenizer_fingerprint"] == out["tokenizer_fingerprint"] == tok["fingerprint"]
    assert "the tokenizer of smol" in student["description"]
    same = json.loads(
        cli(*w, "model", "create", "pupil2", "--family", "llama", "--tokenizer", "smol",
            *student_args, "--kv-heads", "1", "--json")
    )  # fmt: skip
    assert same["tokenizer_fingerprint"] == tok["fingerprint"] and same["kv_heads"] == 1
    evals = json.loads(
        cli(*w, "model", "eval", "smol", "-d", "cs", "--block-size", "32", "--max-blocks", "2",
            "--json")
    )  # fmt: skip
    assert evals[0]["n_tokens"] == 2 * 31 and evals[0]["ppl"] > 1
    assert (evals[0]["n_blocks"], evals[0]["block_size"]) == (2, 32)  # the protocol, recorded
    assert len(evals[0]["sample_digest"]) == 64
    cli(*w, "train", "-m", "pupil", "-o", "pupil-ki", "--strategy", "ki", "-t", "smol",
        "-d", "cs", "--steps", "2", "--batch-size", "2", "--block-size", "32",
        "--eval-every", "0", "--eval-blocks", "2", "--checkpoint-every", "0")  # fmt: skip
    shown = json.loads(cli(*w, "model", "show", "pupil-ki", "--json"))
    assert {(e["parent"], e["kind"]) for e in shown["parents"]} >= {("smol", "ki")}
    assert shown["description"] == "KI from pupil, taught by smol, on cs"  # names the teacher
    assert shown["evaluations"][0]["protocol"].startswith("2x32 ")

    encoder = save(
        BertModel(bert_config(wordpiece_tokenizer_dir)), wordpiece_tokenizer_dir,
        tmp_path / "hf" / "minilm",
    )  # fmt: skip
    out = json.loads(cli(*w, "model", "register", str(encoder), "--json"))
    assert out["objective"] == "encoder"
    bad = runner.invoke(app, [*w, "model", "eval", "minilm", "-d", "cs"])
    assert bad.exit_code == 1 and "'minilm' is an encoder" in bad.output
    registered = cli(*w, "tokenizer", "register", "minilm", "--name", "wp")
    assert "wordpiece" in registered and "documents end with [SEP]" in registered
    cli(*w, "model", "create", "masked", "--family", "roberta", "--tokenizer", "wp",
        *student_args)  # fmt: skip
    evals = json.loads(
        cli(*w, "model", "eval", "masked", "-d", "cs", "--block-size", "32", "--max-blocks", "2",
            "--json")
    )  # fmt: skip
    assert evals[0]["n_tokens"] > 0 and evals[0]["ppl"] > 1
    bad = runner.invoke(app, [*w, "train", "-m", "masked", "-o", "x", "--strategy", "ki",
                              "-t", "minilm", "-d", "cs", "--steps", "1"])  # fmt: skip
    assert bad.exit_code == 1 and "refused as a KI teacher" in bad.output
    listed = cli(*w, "tokenizer", "list")
    assert "sentencepiece-bpe" in listed and "wordpiece" in listed

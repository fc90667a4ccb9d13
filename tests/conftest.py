"""Shared fixtures: tiny tokenizers and models built here (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lineage.workspace import Workspace

TINY_TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "def main(): return sorted(items, key=len)",
    "the gene encodes a protein that binds dna in the nucleus",
] * 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Two cores shared by the test workers: one thread each keeps runs steady.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer in Hugging Face format (special tokens 0..4)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tokenizer")
    bpe = ByteLevelBPETokenizer()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(TINY_TEXT, vocab_size=300, min_frequency=1, special_tokens=specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tok.save_pretrained(out)
    return out


@pytest.fixture
def make_model_dir(tmp_path: Path, tiny_tokenizer_dir: Path) -> Callable[..., Path]:
    """Build and save a tiny randomly initialised model: roberta (MLM) or gpt2 (causal)."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    def make(name: str, family: str = "roberta", layers: int = 2, hidden: int = 64) -> Path:
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
        vocab = len(tok)
        if family == "roberta":
            model = RobertaForMaskedLM(
                RobertaConfig(
                    vocab_size=vocab,
                    hidden_size=hidden,
                    num_hidden_layers=layers,
                    num_attention_heads=2,
                    intermediate_size=4 * hidden,
                    max_position_embeddings=66,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=2,
                )
            )
        elif family == "gpt2":
            model = GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=vocab,
                    n_embd=hidden,
                    n_layer=layers,
                    n_head=2,
                    n_positions=64,
                    bos_token_id=1,
                    eos_token_id=2,
                )
            )
        else:
            raise ValueError(family)
        out = tmp_path / "hf" / name
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return out

    return make


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace.init(tmp_path / "ws")
    yield workspace
    workspace.close()

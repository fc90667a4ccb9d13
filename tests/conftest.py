"""Shared fixtures: tiny tokenizers and models built here (nothing is downloaded)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from pgcluster import Cluster, ClusterError

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
    """lineage's own byte-level BPE, in Hugging Face format (special tokens 0..4)."""
    from lineage.corpora.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    train_tokenizer(TINY_TEXT, out, vocab_size=300, min_frequency=1)
    return out


def _bundled_texts(n_docs: int = 60) -> list[str]:
    return [d for name in ("literature", "cs", "bio") for d in _bundled_slice(name, n_docs)]


@pytest.fixture(scope="session")
def llama_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece/Llama-style tokenizer in HF format, trained here: BPE over ``▁``-marked
    words (Metaspace), ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, BOS prepended, no pad, no mask."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    bpe.train_from_iterator(_bundled_texts(), trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    out = tmp_path_factory.mktemp("llama-tok") / "tok"
    fast.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT WordPiece tokenizer in HF format, trained here: lower-cased, ``[PAD]`` 0,
    ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4, no BOS/EOS (documents end with SEP)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=specials, show_progress=False
    )
    wp.train_from_iterator(_bundled_texts(), trainer=trainer)
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=wp,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    out = tmp_path_factory.mktemp("wordpiece-tok") / "tok"
    fast.save_pretrained(str(out))
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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL server for this test process (each xdist worker has its own).

    It must start: a machine without PostgreSQL fails these tests (with the reason) rather
    than skipping them; `make test-deps` installs it."""
    try:
        cluster = Cluster()
    except ClusterError as exc:
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pg_registry_db(pg_cluster: Cluster) -> str:
    """This test process's registry database, upgraded to the head schema once."""
    from lineage.registry import Registry

    name = "lineage_registry"
    Registry(pg_cluster.create_database(name)).close()
    return name


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """An empty database of its own for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield pg_cluster.create_database(name)
    pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry database on each backend: a new SQLite file (the registry creates its
    schema), or this process's PostgreSQL registry database with every table emptied (tests
    run one at a time per process; a new database per test would cost a cluster checkpoint)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    name = request.getfixturevalue("pg_registry_db")
    cluster.empty_tables(name)
    return cluster.url(name)


def _bundled_slice(name: str, n_docs: int) -> list[str]:
    import gzip

    from lineage.corpora.domains import bundled_domains_dir
    from lineage.corpora.profiles import iter_documents

    with gzip.open(bundled_domains_dir() / name / f"{name}.txt.gz", "rt", encoding="utf-8") as fh:
        docs = iter_documents(fh)
        return [next(docs) for _ in range(n_docs)]


@pytest.fixture(scope="session")
def family_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real family, built once per test process: three slices of the bundled corpora
    (literature, cs, bio), a shared 400-token BPE, a tiny roberta teacher trained on
    literature, and a random 'small'-shape student. Tests copy it (``family_ws``)."""
    from lineage.corpora.domains import add_domain
    from lineage.lifecycle import create_workspace_model, train_workspace_tokenizer
    from lineage.models.modeling import ModelShape
    from lineage.train.trainer import TrainConfig
    from lineage.train.training import TrainJob, run_training

    root = tmp_path_factory.mktemp("family") / "ws"
    ws = Workspace.init(root)
    src = root.parent / "src"
    src.mkdir()
    for name in ("literature", "cs", "bio"):
        (src / f"{name}.txt").write_text(
            "\n\n".join(_bundled_slice(name, 160)) + "\n", encoding="utf-8"
        )
        add_domain(ws, name, [src / f"{name}.txt"], valid_every=5, shard_mb=0.02)
    train_workspace_tokenizer(ws, "shared", ["literature", "cs", "bio"], vocab_size=400)
    shape = ModelShape(layers=2, hidden=32, heads=2, ffn=64)
    create_workspace_model(
        ws, "t0", family="roberta", shape=shape, tokenizer="shared", max_positions=40
    )
    config = TrainConfig(
        steps=12,
        batch_size=8,
        lr=3e-3,
        eval_every=0,
        eval_blocks=4,
        checkpoint_every=0,
        log_every=4,
    )
    run_training(
        ws,
        TrainJob("t0", "teacher-lit", ("literature",), block_size=32, config=config),
        progress=False,
    )
    create_workspace_model(
        ws,
        "student",
        family="roberta",
        shape=ModelShape(2, 48, 2, 96),
        tokenizer="shared",
        max_positions=40,
        seed=1,
    )
    ws.close()
    return root


@pytest.fixture
def family_ws(family_template: Path, tmp_path: Path) -> Workspace:
    """A private copy of the family workspace (registry and files: its registered paths are
    relative to the storage root, so they resolve inside the copy)."""
    import shutil

    root = tmp_path / "family"
    shutil.copytree(family_template, root)
    text = (root / "lineage.toml").read_text()
    workspace = Workspace.open(root)
    assert text  # the copy keeps the same configuration
    yield workspace
    workspace.close()

"""Tokenizers shared by teachers and students: trained here or taken from a real model.

``train_tokenizer`` makes one byte-level BPE shared by masked and causal models of a family;
its special tokens have fixed ids so every model agrees on them: ``<pad>`` 0, ``<s>`` 1,
``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4. ``import_tokenizer`` copies any Hugging Face fast
tokenizer (byte-level BPE as GPT-2/RoBERTa, SentencePiece-style BPE or Unigram as Llama/T5,
WordPiece as BERT) so students can share a real model's vocabulary. Either is saved in Hugging
Face format (``tokenizer.json`` + ``tokenizer_config.json``) so ``AutoTokenizer.from_pretrained``
loads it offline; its identity is :func:`lineage.registry.modelinfo.tokenizer_fingerprint`.

Documents are separated in token blocks by the end-of-sequence token, or, for tokenizers without
one (BERT's WordPiece), by the separator token ``[SEP]`` (`separator_id`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lineage.errors import LineageError
from lineage.files import atomic_dir
from lineage.registry.modelinfo import tokenizer_fingerprint

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")  # ids 0..4, in this order
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Also copied when a real model's tokenizer is imported (slow-tokenizer sources, extra tokens).
EXTRA_TOKENIZER_FILES = (
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
_SPECIAL_ROLES = ("bos", "eos", "sep", "cls", "pad", "unk", "mask")
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the specials


@dataclass(frozen=True)
class TokenizerInfo:
    """The ids the data pipeline needs, without carrying the tokenizer object around."""

    vocab_size: int  # len(tokenizer): ids are in [0, vocab_size)
    pad_id: int
    eos_id: int
    mask_id: int | None  # None for a tokenizer without a mask token (causal only)
    special_ids: tuple[int, ...]  # never masked, never a prediction target for MLM

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> TokenizerInfo:
        """``eos_id`` is the document separator (`separator_id`); ``pad_id`` falls back to it."""
        eos = separator_id(tokenizer)
        pad = tokenizer.pad_token_id
        return cls(
            vocab_size=len(tokenizer),
            pad_id=int(pad if pad is not None else eos),
            eos_id=eos,
            mask_id=None if tokenizer.mask_token_id is None else int(tokenizer.mask_token_id),
            special_ids=tuple(sorted(int(i) for i in tokenizer.all_special_ids)),
        )


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends each document in a block: EOS, else SEP (WordPiece BERT has no EOS)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise LineageError(
        "the tokenizer has neither an end-of-sequence nor a separator token, so documents "
        "cannot be separated in token blocks; set eos_token in its tokenizer_config.json"
    )


def describe_tokenizer(tokenizer: PreTrainedTokenizerBase, path: Path) -> dict[str, object]:
    """What a registered tokenizer records: its algorithm, special tokens and separator."""
    spec = json.loads((Path(path) / "tokenizer.json").read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    pre_types = [str(p.get("type")) for p in steps if p]
    model = str(spec["model"].get("type", "unknown"))
    if "ByteLevel" in pre_types:
        kind = f"byte-level-{model.lower()}"
    elif "Metaspace" in pre_types or spec["model"].get("byte_fallback"):
        kind = f"sentencepiece-{model.lower()}"  # ▁ for spaces (Llama, T5, Mistral)
    else:
        kind = model.lower()  # e.g. wordpiece (BERT)
    specials = {
        role: getattr(tokenizer, f"{role}_token")
        for role in _SPECIAL_ROLES
        if getattr(tokenizer, f"{role}_token_id") is not None
    }
    sep = separator_id(tokenizer)
    return {
        "kind": kind,
        "specials": specials,
        "separator": tokenizer.convert_ids_to_tokens(sep),
    }


def _documents(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    """Non-blank documents; counts them in ``seen[0]`` (the trainer consumes the stream)."""
    for text in texts:
        if text and not text.isspace():
            seen[0] += 1
            yield text


def train_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    *,
    vocab_size: int = 8000,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> str:
    """Train a byte-level BPE on ``texts`` and save it to ``out_dir``; return its fingerprint.

    ``texts`` is streamed (any iterable of documents). The directory appears atomically.
    """
    if vocab_size < _MIN_VOCAB:
        raise LineageError(f"vocab_size must be at least {_MIN_VOCAB} (bytes + specials)")
    if min_frequency < 1:
        raise LineageError("min_frequency must be >= 1")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # No prefix space: documents are packed back to back, so a word-initial token at the start
    # of a document is as common as anywhere else.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = [0]
    bpe.train_from_iterator(_documents(texts, seen), trainer=trainer)
    if seen[0] == 0:
        raise LineageError("no text to train the tokenizer on")
    for i, token in enumerate(SPECIAL_TOKENS):
        assert bpe.token_to_id(token) == i, f"{token} must have id {i}"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        fast.save_pretrained(str(tmp))
    fingerprint = tokenizer_fingerprint(out_dir)
    assert fingerprint is not None
    return fingerprint


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a local directory (a tokenizer or a model directory); offline."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise LineageError(f"{path} holds no tokenizer (tokenizer.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tokenizer.is_fast:
        raise LineageError(f"{path}: a fast (Rust) tokenizer is required")
    return tokenizer


def import_tokenizer(src: Path, out_dir: Path) -> str:
    """Copy a Hugging Face fast tokenizer (a tokenizer or model folder) to ``out_dir``, atomically;
    return its fingerprint, which equals the source's (checked)."""
    src = Path(src)
    tokenizer = load_tokenizer(src)  # refuses folders without a fast tokenizer
    separator_id(tokenizer)  # and tokenizers that cannot separate documents
    fingerprint = tokenizer_fingerprint(src)
    if fingerprint is None:
        raise LineageError(f"{src}: cannot read the tokenizer's vocabulary")
    with atomic_dir(Path(out_dir)) as tmp:
        copy_tokenizer_files(src, tmp, extra=True)
    assert tokenizer_fingerprint(Path(out_dir)) == fingerprint
    return fingerprint


def copy_tokenizer_files(src: Path, dst: Path, *, extra: bool = False) -> None:
    """Copy the tokenizer files of ``src`` (those that exist) into ``dst``; ``extra`` adds the
    slow-tokenizer sources (SentencePiece model, WordPiece/BPE vocabularies)."""
    for name in TOKENIZER_FILES + (EXTRA_TOKENIZER_FILES if extra else ()):
        file = Path(src) / name
        if file.is_file():
            (Path(dst) / name).write_bytes(file.read_bytes())


# What transformers records about how a tokenizer was loaded on this machine (a local folder,
# offline): saved into tokenizer_config.json it would follow the files to the Hub.
MACHINE_LOCAL_KEYS = ("local_files_only", "is_local", "cache_dir", "name_or_path", "_name_or_path")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path, max_length: int) -> None:
    """Save ``tokenizer`` beside a model: ``model_max_length`` is the model's positions (so
    ``truncation=True`` and pipelines cut inputs to what the model accepts) and
    tokenizer_config.json keeps none of the machine-local keys of the load."""
    if max_length < 1:
        raise LineageError(f"model_max_length must be >= 1, got {max_length}")
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(out_dir))
    config_file = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if k not in MACHINE_LOCAL_KEYS}
    config["model_max_length"] = max_length
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")

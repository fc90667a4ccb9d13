"""Model shapes, configs for the supported families, and building/loading model directories.

Families: ``roberta`` and ``bert`` (masked LM), ``gpt2`` and ``llama`` (causal LM). Shapes are
the paper's Table 5 (papers/001 App. B) plus tiny sizes that train on a CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
)

from lineage.corpora.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_tokenizer
from lineage.errors import LineageError
from lineage.files import atomic_dir

# Shapes and families are plain data (lineage.models.shapes); re-exported for this module's callers.
from lineage.models.shapes import FAMILIES as FAMILIES
from lineage.models.shapes import PRESETS as PRESETS
from lineage.models.shapes import ModelShape as ModelShape
from lineage.models.shapes import objective_of_family, resolve_shape
from lineage.registry.modelinfo import ENCODER, read_model_info


def build_config(
    family: str,
    shape: ModelShape | str,
    tokenizer: PreTrainedTokenizerBase | int,
    max_positions: int,
    *,
    dropout: float | None = None,
    init_range: float | None = None,
) -> PretrainedConfig:
    """A Hugging Face config for ``family`` at ``shape``; vocabulary and specials from the
    tokenizer, or from a vocabulary size alone with the special ids `train_tokenizer` fixes
    (for models whose tokenizer does not matter: tests, benchmarks); SDPA attention. ``dropout`` (hidden and attention; default the HF 0.1 where the
    family has it, the paper's setting) and ``init_range`` (std of the initial weights, default
    0.02) are the knobs a tiny MLM needs (README, "KI on masked LMs": dropout 0 trains faster at this size)."""
    config = _family_config(family, resolve_shape(shape), tokenizer, max_positions)
    return _with_regularisation(config, dropout, init_range)


_DROPOUT_FIELDS = {
    "roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "llama": ("attention_dropout",),
}


def _with_regularisation(
    config: PretrainedConfig, dropout: float | None, init_range: float | None
) -> PretrainedConfig:
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise LineageError(f"dropout must lie in [0, 1), got {dropout}")
        for name in _DROPOUT_FIELDS[config.model_type]:
            setattr(config, name, float(dropout))
    if init_range is not None:
        if not init_range > 0:
            raise LineageError(f"init_range must be > 0, got {init_range}")
        config.initializer_range = float(init_range)
    return config


def _vocabulary_ids(tokenizer: PreTrainedTokenizerBase | int) -> dict[str, Any]:
    if isinstance(tokenizer, int):
        pad, bos, eos = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<s>", "</s>"))
        return {
            "vocab_size": tokenizer,
            "pad_token_id": pad,
            "bos_token_id": bos,
            "eos_token_id": eos,
        }
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _family_config(
    family: str, s: ModelShape, tokenizer: PreTrainedTokenizerBase | int, max_positions: int
) -> PretrainedConfig:
    objective_of_family(family)
    if max_positions < 2:
        raise LineageError("max_positions must be >= 2")
    if s.kv_heads is not None and s.kv_heads != s.heads and family != "llama":
        raise LineageError("grouped-query attention (kv_heads) is only supported for llama")
    ids: dict[str, Any] = {"attn_implementation": "sdpa", **_vocabulary_ids(tokenizer)}
    if family in ("roberta", "bert"):
        cls = RobertaConfig if family == "roberta" else BertConfig
        # RoBERTa numbers positions from pad_token_id + 1: it needs that many extra slots.
        extra = (ids["pad_token_id"] or 0) + 1 if family == "roberta" else 0
        return cls(
            hidden_size=s.hidden,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=s.ffn,
            max_position_embeddings=max_positions + extra,
            type_vocab_size=1 if family == "roberta" else 2,
            architectures=[f"{cls.__name__.removesuffix('Config')}ForMaskedLM"],
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            n_embd=s.hidden,
            n_layer=s.layers,
            n_head=s.heads,
            n_inner=s.ffn,
            n_positions=max_positions,
            architectures=["GPT2LMHeadModel"],
            **ids,
        )
    return LlamaConfig(
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads or s.heads,
        intermediate_size=s.ffn,
        max_position_embeddings=max_positions,
        architectures=["LlamaForCausalLM"],
        **ids,
    )


def position_limit(config: PretrainedConfig) -> int:
    """The longest input the model accepts, in tokens (RoBERTa's first pad_token_id + 1 position
    slots are not usable: it numbers positions after the padding index)."""
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            if config.model_type in ("roberta", "xlm-roberta", "camembert"):
                value -= (config.pad_token_id or 0) + 1
            return value
    raise LineageError(f"{config.model_type}: no position limit in its config")


def _auto_class(objective: str) -> Any:
    if objective == ENCODER:
        return AutoModel  # the backbone alone (no LM head): a growth source
    return AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM


def create_model(
    family: str,
    shape: ModelShape | str,
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    max_positions: int = 512,
    overwrite: bool = False,
    dropout: float | None = None,
    init_range: float | None = None,
) -> Path:
    """Randomly initialise a model and save it (safetensors + tokenizer) to ``out_dir``.

    Same ``seed`` and shape give the same weights. The directory appears atomically.
    ``dropout``/``init_range``: see ``build_config`` (saved in config.json, so training and
    growth keep them).
    """
    objective = objective_of_family(family)
    tokenizer = load_tokenizer(Path(tokenizer_dir))
    if objective == "mlm" and tokenizer.mask_token_id is None:
        raise LineageError(
            f"{family} is a masked LM and needs a mask token, which this tokenizer has not; "
            "use a causal family (gpt2, llama) with it"
        )
    config = build_config(
        family, shape, tokenizer, max_positions, dropout=dropout, init_range=init_range
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _auto_class(objective).from_config(config)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp, position_limit(config))
    return out_dir


def tokenizer_vocab_size(model_dir: Path) -> int | None:
    """Number of token ids the directory's tokenizer can emit (max id + 1), read from JSON."""
    tok_json = Path(model_dir) / "tokenizer.json"
    if not tok_json.is_file():
        return None
    spec = json.loads(tok_json.read_text(encoding="utf-8"))
    vocab = spec["model"].get("vocab", {})  # Unigram: a list of [token, score], by id
    ids = list(vocab.values() if isinstance(vocab, dict) else range(len(vocab)))
    ids += [a["id"] for a in spec["added_tokens"]]
    return max(ids) + 1 if ids else None


def embedding_rows(model: nn.Module, output: bool = False) -> int:
    """Rows of a Hugging Face model's input (or output) embedding: the ids it can take."""
    lm = cast(PreTrainedModel, model)
    layer = lm.get_output_embeddings() if output else lm.get_input_embeddings()
    if layer is None:
        raise LineageError(
            f"{type(model).__name__} has no {'output' if output else 'input'} embedding"
        )
    return int(cast(nn.Linear, layer).weight.shape[0])


def check_vocab(model: nn.Module, n_tokens: int, what: str = "the tokenizer") -> None:
    """LineageError if ids up to ``n_tokens - 1`` do not fit the model's embedding."""
    rows = embedding_rows(model)
    if n_tokens > rows:
        raise LineageError(
            f"vocabulary mismatch: {what} has {n_tokens} token ids but the model's embedding "
            f"has {rows} rows; use the tokenizer the model was built with"
        )


def load_model(
    model_dir: Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a local model directory with the masked- or causal-LM auto class (from its config).

    Remote code runs only when ``trust_remote_code`` is set. Checks the tokenizer in the
    directory fits the embedding.
    """
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    model = _auto_class(info.objective).from_pretrained(
        str(model_dir),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    n_tokens = tokenizer_vocab_size(model_dir)
    if n_tokens is not None:
        check_vocab(model, n_tokens, f"the tokenizer in {model_dir}")
    if device is not None:
        model = model.to(device)
    return model


def shardable_blocks(lm: nn.Module) -> list[str]:
    """The model's block classes (Hugging Face's ``_no_split_modules``) that can each be an FSDP
    unit: not those holding a tied weight (RoBERTa's embeddings share their matrix with the MLM
    head, which lives outside them; one parameter cannot be in two units)."""
    names = sorted(getattr(lm, "_no_split_modules", None) or [])
    owners: dict[int, list[str]] = {}
    for name, param in lm.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    tied = [n for found in owners.values() if len(found) > 1 for n in found]
    holding = {
        type(module).__name__
        for prefix, module in lm.named_modules()
        if prefix and any(t.startswith(prefix + ".") for t in tied)
    }
    return [n for n in names if n not in holding]


class TargetLogits(nn.Module):
    """Wraps a Hugging Face LM so only the target positions go through the output head.

    The backbone runs on every position; the head (vocabulary projection) only on the rows
    where ``labels != -100`` — for MLM that is ~15 % of them, which saves most of the head's
    compute and all of the [B, T, V] logits memory. Models whose head cannot be found fall
    back to full logits then selection. Wrap this module (not the LM) for DDP so gradients sync.

    ``fp32_head``: run the head in float32 even under a bf16/fp16 autocast (the backbone stays
    in half precision). Teachers use it: bf16 logits carry ~3 significant digits, so a logit
    of 10 is off by up to 0.03, which reorders near-ties of the top-K and bends the KL target.
    """

    def __init__(self, lm: PreTrainedModel, fp32_head: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.fp32_head = fp32_head
        # FSDP's auto-wrap policy reads the blocks to shard from the module it is given.
        self._no_split_modules = shardable_blocks(lm)
        prefix = getattr(lm, "base_model_prefix", None)  # None: not a Hugging Face LM
        heads = [name for name, _ in lm.named_children() if name != prefix]
        found = prefix is not None and len(heads) == 1 and lm.base_model is not lm
        self._head = heads[0] if found else None

    def hidden(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """[B, T] -> the head's input [B, T, d] (or, without a known head, the logits [B, T, V],
        computed in float32 throughout when ``fp32_head``)."""
        if self._head is not None:
            return self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        with torch.autocast(input_ids.device.type, enabled=not self.fp32_head):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits

    def project(self, hidden: Tensor) -> Tensor:
        """hidden's rows [..., d] -> logits [..., V] (identity without a known head)."""
        if self._head is None:
            return hidden
        head = getattr(self.lm, self._head)
        if not self.fp32_head:
            return head(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            return head(hidden.to(next(head.parameters()).dtype))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor) -> Tensor:
        """input_ids, labels: [B, T]; attention_mask [B, T] or None -> logits [N, V] for the
        N = (labels != -100).sum() target positions in row-major order."""
        target = labels != -100  # [B, T] bool
        return self.project(self.hidden(input_ids, attention_mask)[target])  # [N, d] -> [N, V]

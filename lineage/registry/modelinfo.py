"""What the registry needs from a local Hugging Face model directory, without loading weights."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineage.errors import LineageError

# config.json keys per concept, first match wins (BERT/RoBERTa/Llama names, then GPT-2 names).
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN = ("hidden_size", "n_embd", "d_model")
_HEADS = ("num_attention_heads", "n_head", "num_heads")
_FFN = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")
MLM_SUFFIXES = ("ForMaskedLM", "ForPreTraining")
CLM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# A masked LM's prediction head in its weights (BERT, RoBERTa, DistilBERT, ELECTRA generator).
MLM_HEAD_PREFIXES = ("cls.predictions.", "lm_head.", "vocab_projector.", "generator_lm_head.")
ENCODER = "encoder"  # the objective of a model without an LM head (registered, not used)
ENCODER_ROLE = (
    "it has no masked- or causal-LM head in its weights, so it has no perplexity and nothing to "
    "inherit or learn by KI"
)


@dataclass(frozen=True)
class ModelInfo:
    family: str
    objective: str  # "mlm" | "clm" | "encoder" (no LM head)
    layers: int
    d_model: int
    heads: int
    d_ffn: int
    vocab_size: int
    n_params: int
    tokenizer_fingerprint: str | None
    kv_heads: int | None = None  # key/value heads when the config says (GQA: fewer than heads)


def check_has_lm_head(name: str, objective: str, role: str) -> None:
    """LineageError naming why an encoder (no LM head) cannot play ``role``."""
    if objective == ENCODER:
        raise LineageError(f"{name!r} is an encoder: {ENCODER_ROLE}; refused as {role}")


def _int(config: dict, key: str, path: Path, minimum: int = 1) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LineageError(
            f"{path / 'config.json'}: {key} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def _first(config: dict, keys: tuple[str, ...], what: str, path: Path) -> int:
    for key in keys:
        if config.get(key) is not None:
            return _int(config, key, path)
    raise LineageError(f"{path}: config.json has no {what} (looked for {', '.join(keys)})")


def objective_of(config: dict, weight_names: list[str] | None = None) -> str:
    """'mlm', 'clm' or 'encoder' (no LM head) from the architectures a config names, or, when
    it names none, the model type and (for masked LMs) whether the weights hold a head."""
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    architectures = [arch for arch in architectures if isinstance(arch, str)]
    for arch in architectures:
        if arch.endswith(MLM_SUFFIXES):
            return "mlm"
        if arch.endswith(CLM_SUFFIXES):
            return "clm"
    if any(arch.endswith("Model") for arch in architectures):
        return ENCODER  # e.g. BertModel, RobertaModel, LlamaModel: the backbone alone
    model_type = str(config.get("model_type", ""))
    if model_type in {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2"}:
        if weight_names is not None and not any(
            n.startswith(MLM_HEAD_PREFIXES) for n in weight_names
        ):
            return ENCODER
        return "mlm"
    if config.get("is_decoder") or model_type in {"gpt2", "llama", "mistral", "qwen2", "gpt_neox"}:
        return "clm"
    raise LineageError(f"cannot tell whether model_type {model_type!r} is masked or causal LM")


def weight_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors headers (``safe_open``: no weights are read)."""
    from safetensors import SafetensorError, safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LineageError(f"{model_dir}: no *.safetensors weights")
    shapes: dict[str, list[int]] = {}
    for file in files:
        try:
            with safe_open(file, framework="numpy") as weights:
                names = weights.keys()  # a safe_open handle is not iterable itself
                shapes |= {name: list(weights.get_slice(name).get_shape()) for name in names}
        except SafetensorError as exc:
            raise LineageError(f"{file}: not a readable safetensors file ({exc})") from exc
    return shapes


def count_parameters(model_dir: Path) -> int:
    """Sum of tensor sizes from the safetensors headers (no weights are read)."""
    return sum(math.prod(shape) for shape in weight_shapes(model_dir).values())


def tokenizer_fingerprint(tokenizer_dir: Path) -> str | None:
    """sha256 of the vocabulary (token -> id): teachers and students must share it."""
    tok_json = tokenizer_dir / "tokenizer.json"
    vocab: dict[str, int] | None = None
    try:
        if tok_json.exists():
            spec = json.loads(tok_json.read_text(encoding="utf-8"))
            raw = spec["model"]["vocab"]
            # BPE/WordPiece: {token: id}; Unigram (SentencePiece, T5): [[token, score], ...] by id
            vocab = dict(raw) if isinstance(raw, dict) else {t: i for i, (t, _) in enumerate(raw)}
            for added in spec.get("added_tokens", []):
                vocab[added["content"]] = added["id"]
        elif (tokenizer_dir / "vocab.json").exists():
            vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
        elif (tokenizer_dir / "vocab.txt").exists():
            lines = (tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
            vocab = {tok: i for i, tok in enumerate(lines)}
        if vocab is None:
            return None
        canonical = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON errors are ValueErrors
        raise LineageError(f"{tokenizer_dir}: unreadable tokenizer files ({exc!r})") from exc
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_config(model_dir: Path) -> dict[str, Any]:
    """A model directory's config.json, checked to be a JSON object that needs no remote code
    (lineage never runs a model's own Python: ``auto_map`` with a type transformers lacks)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LineageError(f"model directory {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise LineageError(f"{model_dir} is not a Hugging Face model directory: no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LineageError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise LineageError(f"{config_path}: must hold a JSON object, not {type(config).__name__}")
    if "auto_map" in config and not _known_model_type(config.get("model_type")):
        raise LineageError(
            f"{config_path}: model_type {config.get('model_type')!r} needs the model's own code "
            "(auto_map); lineage never runs remote code: use a transformers architecture"
        )
    return config


def _known_model_type(model_type: object) -> bool:
    from transformers import CONFIG_MAPPING

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING


def max_positions(model_dir: Path) -> int | None:
    """Longest token sequence the model accepts (RoBERTa numbers positions from pad + 1);
    None when the folder has no config.json (an adapter) or the config sets no limit."""
    if not (Path(model_dir) / "config.json").is_file():
        return None
    config = read_config(model_dir)
    for key in ("max_position_embeddings", "n_positions"):
        if config.get(key) is not None:
            n = _int(config, key, Path(model_dir))
            if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
                n -= int(config.get("pad_token_id") or 0) + 1
            return n
    return None


def check_block_size(model: str, model_dir: Path, block_size: int) -> None:
    """Refuse a block size the model cannot take, before any tokenising or training."""
    if block_size < 2:
        raise LineageError(f"block size must be >= 2, got {block_size}")
    limit = max_positions(model_dir)
    if limit is not None and block_size > limit:
        raise LineageError(
            f"block size {block_size} exceeds the {limit} positions of model {model!r}"
        )


def read_model_info(model_dir: Path) -> ModelInfo:
    """Describe a local Hugging Face model directory (config.json + safetensors + tokenizer)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    d_model = _first(config, _HIDDEN, "hidden size", model_dir)
    d_ffn = next(
        (_int(config, k, model_dir) for k in _FFN if config.get(k) is not None), 4 * d_model
    )
    shapes = weight_shapes(model_dir)
    vocab_size = _int(config, "vocab_size", model_dir, 0) if "vocab_size" in config else 0
    return ModelInfo(
        family=str(config.get("model_type") or "unknown"),
        objective=objective_of(config, list(shapes)),
        layers=_first(config, _LAYERS, "layer count", model_dir),
        d_model=d_model,
        heads=_first(config, _HEADS, "attention head count", model_dir),
        d_ffn=d_ffn,
        vocab_size=vocab_size,
        n_params=sum(math.prod(shape) for shape in shapes.values()),
        tokenizer_fingerprint=tokenizer_fingerprint(model_dir),
        kv_heads=_int(config, "num_key_value_heads", model_dir)
        if config.get("num_key_value_heads") is not None
        else None,
    )

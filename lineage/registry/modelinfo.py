"""What the registry needs from a local Hugging Face model directory, without loading weights."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

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


def check_has_lm_head(name: str, objective: str, role: str) -> None:
    """LineageError naming why an encoder (no LM head) cannot play ``role``."""
    if objective == ENCODER:
        raise LineageError(f"{name!r} is an encoder: {ENCODER_ROLE}; refused as {role}")


def _first(config: dict, keys: tuple[str, ...], what: str, path: Path) -> int:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    raise LineageError(f"{path}: config.json has no {what} (looked for {', '.join(keys)})")


def objective_of(config: dict, weight_names: list[str] | None = None) -> str:
    """'mlm', 'clm' or 'encoder' (no LM head) from the architectures a config names, or, when
    it names none, the model type and (for masked LMs) whether the weights hold a head."""
    architectures = config.get("architectures") or []
    for arch in architectures:
        if arch.endswith(MLM_SUFFIXES):
            return "mlm"
        if arch.endswith(CLM_SUFFIXES):
            return "clm"
    if any(arch.endswith("Model") for arch in architectures):
        return ENCODER  # e.g. BertModel, RobertaModel, LlamaModel: the backbone alone
    model_type = config.get("model_type", "")
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
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LineageError(f"{model_dir}: no *.safetensors weights")
    shapes: dict[str, list[int]] = {}
    for file in files:
        with safe_open(file, framework="numpy") as weights:
            names = weights.keys()  # a safe_open handle is not iterable itself
            shapes |= {name: list(weights.get_slice(name).get_shape()) for name in names}
    return shapes


def count_parameters(model_dir: Path) -> int:
    """Sum of tensor sizes from the safetensors headers (no weights are read)."""
    return sum(math.prod(shape) for shape in weight_shapes(model_dir).values())


def tokenizer_fingerprint(tokenizer_dir: Path) -> str | None:
    """sha256 of the vocabulary (token -> id): teachers and students must share it."""
    tok_json = tokenizer_dir / "tokenizer.json"
    vocab: dict[str, int] | None = None
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
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_model_info(model_dir: Path) -> ModelInfo:
    """Describe a local Hugging Face model directory (config.json + safetensors + tokenizer)."""
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
    d_model = _first(config, _HIDDEN, "hidden size", model_dir)
    d_ffn = next((int(config[k]) for k in _FFN if config.get(k) is not None), 4 * d_model)
    shapes = weight_shapes(model_dir)
    return ModelInfo(
        family=str(config.get("model_type") or "unknown"),
        objective=objective_of(config, list(shapes)),
        layers=_first(config, _LAYERS, "layer count", model_dir),
        d_model=d_model,
        heads=_first(config, _HEADS, "attention head count", model_dir),
        d_ffn=d_ffn,
        vocab_size=int(config.get("vocab_size", 0)),
        n_params=sum(math.prod(shape) for shape in shapes.values()),
        tokenizer_fingerprint=tokenizer_fingerprint(model_dir),
    )

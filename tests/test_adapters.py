"""LoRA adapters (identity at init, exact parameter counts, PEFT round trip), text perplexity
against references, and routing a text to its domain's adapter or expert."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)
from typer.testing import CliRunner

from lineage.cli import app
from lineage.continual.adaptation import AdaptJob, adapt
from lineage.continual.adapters import match_for_domain, route_to_adapter, score, text_perplexity
from lineage.corpora.domains import domain_texts
from lineage.errors import LineageError
from lineage.routing.router import Router
from lineage.train.lora import LoraSpec, add_lora
from lineage.train.trainer import TrainConfig
from lineage.workspace import Workspace

H, FFN, L, V = 32, 64, 2, 120


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "roberta":
        config = RobertaConfig(
            vocab_size=V,
            hidden_size=H,
            num_hidden_layers=L,
            num_attention_heads=2,
            intermediate_size=FFN,
            max_position_embeddings=40,
        )
        return RobertaForMaskedLM(config).eval()
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=V, n_embd=H, n_layer=L, n_head=2, n_inner=FFN, n_positions=40
        )
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=FFN,
        num_hidden_layers=L,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


# LoRA parameters per layer = r · Σ (in + out) over the targeted matrices.
PER_LAYER = {
    "roberta": 4 * (H + H) + (H + FFN) + (FFN + H),  # q, k, v, attn out; intermediate; output
    "gpt2": (H + 3 * H) + (H + H) + (H + FFN) + (FFN + H),  # c_attn, attn c_proj, c_fc, c_proj
    "llama": 4 * (H + H) + 2 * (H + FFN) + (FFN + H),  # q, k, v, o; gate, up; down
}


@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
def test_fresh_lora_is_the_identity_with_the_exact_parameter_count(family: str) -> None:
    model = tiny(family)
    ids = torch.randint(5, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    peft_model = add_lora(model, LoraSpec(rank=4), seed=0)
    assert peft_model.get_base_model() is model  # the LoRA layers are injected in place
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == L * 4 * PER_LAYER[family]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)  # the base, embeddings and head are frozen
    with torch.no_grad():
        after = model.eval()(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # B = 0: ΔW = 0 exactly


def test_lora_init_is_seeded_and_bad_targets_are_refused() -> None:
    a, b = tiny("gpt2"), tiny("gpt2")
    add_lora(a, LoraSpec(rank=2), seed=3)
    add_lora(b, LoraSpec(rank=2), seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError):  # PEFT: the pattern matches nothing
        add_lora(tiny("gpt2"), LoraSpec(targets=r"no\.such\.layer"))
    with pytest.raises(LineageError):
        LoraSpec(rank=0)


def _trained_adapter(family: str, tmp_path: Path) -> tuple[torch.nn.Module, Path, Path]:
    """(the adapted model, base folder, adapter folder) with a nonzero, saved LoRA update."""
    model = tiny(family)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model.save_pretrained(base_dir)
    peft_model = add_lora(model, LoraSpec(rank=2), base_path=base_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: nonzero update
    peft_model.save_pretrained(adapter_dir)
    return peft_model.eval(), base_dir, adapter_dir


@pytest.mark.parametrize("family", ["gpt2", "roberta"])
def test_saved_adapter_reloads_with_plain_peft(family: str, tmp_path: Path) -> None:
    from peft import PeftModel

    model, base_dir, adapter_dir = _trained_adapter(family, tmp_path)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files  # the base weights are not copied
    cls = GPT2LMHeadModel if family == "gpt2" else RobertaForMaskedLM
    loaded = PeftModel.from_pretrained(cls.from_pretrained(base_dir), adapter_dir).eval()
    ids = torch.randint(5, V, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["gpt2", "llama", "roberta"])
def test_saved_adapter_loads_with_peft_auto_classes(family: str, tmp_path: Path) -> None:
    """The adapter config names its task (causal) or base class (masked, which PEFT has no task
    type for) and its base folder, so PEFT's auto classes load base + adapter from it alone."""
    from peft import AutoPeftModel, AutoPeftModelForCausalLM

    model, _, adapter_dir = _trained_adapter(family, tmp_path)
    auto = AutoPeftModel if family == "roberta" else AutoPeftModelForCausalLM
    loaded = auto.from_pretrained(adapter_dir).eval()
    assert type(loaded.get_base_model()) is type(model.get_base_model())
    ids = torch.randint(5, V, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


class _Tok:
    """The few tokenizer members text_perplexity uses, over a fixed id sequence."""

    eos_token_id, mask_token_id, all_special_ids = 2, 4, [0, 1, 2, 3, 4]

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(self.ids)}


def test_text_perplexity_matches_references() -> None:
    ids = [7, 19, 33, 8, 90, 41, 12]
    gpt = tiny("gpt2")
    full = torch.tensor([[*ids, 2]])
    with torch.no_grad():
        hf_loss = gpt(input_ids=full, labels=full).loss  # HF shifts the labels itself
    ppl = text_perplexity(gpt, _Tok(ids), "x", objective="clm")
    assert ppl == pytest.approx(math.exp(float(hf_loss)), rel=1e-5)
    bert = tiny("roberta")
    nll = []
    with torch.no_grad():  # pseudo-log-likelihood, one masked position at a time
        for t in range(len(ids)):  # the appended </s> is special: not scored
            masked = full.clone()
            masked[0, t] = 4
            logits = bert(input_ids=masked).logits[0, t]
            nll.append(float(F.cross_entropy(logits[None], full[0, t : t + 1])))
    expect = math.exp(sum(nll) / len(nll))
    got = text_perplexity(bert, _Tok(ids), "x", objective="mlm", batch_size=3)
    assert got == pytest.approx(expect, rel=1e-5)


@pytest.mark.integration
def test_a_literature_text_routes_to_the_literature_adapter(family_ws: Workspace) -> None:
    config = TrainConfig(steps=2, batch_size=4, eval_every=0, eval_blocks=2, checkpoint_every=0)
    job = AdaptJob(
        model="teacher-lit",
        domains=("literature",),
        strategy="sl",
        lora=LoraSpec(rank=2),
        output="lit-adapter",
        block_size=32,
        config=config,
    )
    adapt(family_ws, job, progress=False)
    # The adapter scores through its base: `model eval` gives the run's own final evaluation.
    (trained,) = family_ws.registry.evaluations(model="lit-adapter", domain="literature")
    args = ["-w", str(family_ws.root), "model", "eval", "lit-adapter", "-d", "literature"]
    out = CliRunner().invoke(app, [*args, "--block-size", "32", "--max-blocks", "2", "--json"])
    assert out.exit_code == 0, out.output
    (scored_now,) = json.loads(out.stdout)
    assert scored_now["ppl"] == pytest.approx(trained.ppl, rel=1e-4)
    assert scored_now["n_tokens"] == trained.n_tokens
    text = next(iter(domain_texts(family_ws, "literature", "valid")))
    domain, match = route_to_adapter(family_ws, text, "teacher-lit")
    assert domain == "literature" and match is not None and match.name == "lit-adapter"
    cs_text = next(iter(domain_texts(family_ws, "cs", "valid")))
    assert route_to_adapter(family_ws, cs_text, "teacher-lit") == ("cs", None)
    assert Router.from_workspace(family_ws).nearest_domain(text)[0] == "literature"
    # Without an adapter, the base's expert on the domain answers (full models only).
    expert = match_for_domain(family_ws.registry, "student", "literature")
    assert expert is not None and expert.name == "teacher-lit"
    scored = score(family_ws, text[:400], "teacher-lit")
    assert dataclasses.astuple(scored)[:2] == ("literature", "lit-adapter")
    assert scored.ppl is not None and 1 < scored.ppl < 10 * 400  # finite, below a blind guess x10
    with pytest.raises(LineageError, match="LoRA adapter"):
        adapt(family_ws, dataclasses.replace(job, model="lit-adapter", output="x"), progress=False)

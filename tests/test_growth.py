"""bert2BERT growth: maps, function preservation, AKI / DirectCopy, depth stacking, Alg. 2."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
)

from lineage.corpora.batches import causal_targets, mlm_mask
from lineage.errors import LineageError
from lineage.growth.expand import (
    GrowthRecord,
    grow_model,
    grow_state_dict,
    grown_config,
    growth_warnings,
)
from lineage.growth.maps import (
    ModelShape,
    build_axis_maps,
    depth_map,
    expansion_map,
    family_of,
    shape_of,
)
from lineage.growth.twostage import submodel_layers, trainable_layer_range, truncate_depth

FAMILIES = ("bert", "roberta", "gpt2", "llama_gqa", "llama_tied")
VOCAB, MASK_ID = 100, 4


def tiny_config(name: str) -> PretrainedConfig:
    """2 layers, width 64, 4 heads of 16, vocab 100, no dropout."""
    if name in ("bert", "roberta"):
        cls = BertConfig if name == "bert" else RobertaConfig
        return cls(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=40,
            pad_token_id=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if name == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=40,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2 if name == "llama_gqa" else 4,
        intermediate_size=160,
        max_position_embeddings=40,
        tie_word_embeddings=name == "llama_tied",
    )


def is_mlm(name: str) -> bool:
    return name in ("bert", "roberta")


def topic_batch(name: str, seed: int, n: int = 16, length: int = 16) -> tuple[Tensor, Tensor]:
    """Each row draws tokens from one of 19 five-token topics: learnable in a few steps.

    Returns (input_ids [n, length], labels [n, length]; -100 off target).
    """
    g = torch.Generator().manual_seed(seed)
    topic = torch.randint(19, (n, 1), generator=g)
    x = 5 + 5 * topic + torch.randint(5, (n, length), generator=g)
    if is_mlm(name):
        return mlm_mask(x, g, mask_token_id=MASK_ID, vocab_size=VOCAB, probability=0.3)
    return x, causal_targets(x)


def logits_of(model: PreTrainedModel, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def loss_of(logits: Tensor, labels: Tensor) -> float:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()


def fresh_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    return family_of(config).model_class(config).eval()


@functools.cache
def trained_source(name: str) -> PreTrainedModel:
    """A tiny source trained a little (MLM: 100 steps, CLM: 40) so its logits mean something."""
    model = fresh_model(tiny_config(name)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(100 if is_mlm(name) else 40):
        ids, labels = topic_batch(name, seed=1000 + step)
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---- maps --------------------------------------------------------------------------------


def test_expansion_map_identity_then_balanced_for_multiples() -> None:
    g = expansion_map(4, 12, torch.Generator().manual_seed(0))
    assert g[:4].tolist() == [0, 1, 2, 3]
    assert torch.bincount(g).tolist() == [3, 3, 3, 3]
    g = expansion_map(64, 96, torch.Generator().manual_seed(0))
    counts = torch.bincount(g, minlength=64)
    assert torch.equal(g[:64], torch.arange(64))
    assert set(counts.tolist()) == {1, 2} and int((counts == 2).sum()) == 32
    literal = expansion_map(4, 40, torch.Generator().manual_seed(0), balanced=False)
    assert torch.equal(literal[:4], torch.arange(4)) and int(literal.max()) < 4
    assert len(set(torch.bincount(literal).tolist())) > 1  # i.i.d. draws are not balanced


def test_expansion_map_seeded() -> None:
    def draw(seed: int) -> Tensor:
        return expansion_map(16, 40, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    assert torch.equal(expansion_map(8, 8, torch.Generator()), torch.arange(8))
    with pytest.raises(LineageError):
        expansion_map(8, 4, torch.Generator())


@pytest.mark.parametrize(("kv_t", "heads_t"), [(4, 8), (2, 8), (3, 6)])
def test_query_heads_keep_their_kv_group(kv_t: int, heads_t: int) -> None:
    source = ModelShape(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=160, vocab=9)
    target = ModelShape(2, 16 * heads_t, heads_t, kv_t, 16, 320, 9)
    maps, summary = build_axis_maps(source, target, seed=1)
    heads, kv = torch.tensor(summary["heads"]), torch.tensor(summary["kv_heads"])
    group_t = heads_t // kv_t
    # target query head h sits in group h // group_t, whose K/V copy source group kv[...]
    assert torch.equal(heads // source.group, kv[torch.arange(heads_t) // group_t])
    assert torch.bincount(heads, minlength=4).min() > 0  # every source head survives
    units = maps["q"].src.view(heads_t, 16)
    assert torch.equal(units, heads[:, None] * 16 + torch.arange(16))
    assert torch.equal(maps["kv"].src.view(kv_t, 16)[:, 0] // 16, kv)


def test_depth_map_is_algorithm_1() -> None:
    assert depth_map(2, 5) == [0, 1, 0, 1, 1]
    assert depth_map(3, 7) == [0, 1, 2, 0, 1, 2, 2]
    assert depth_map(3, 5) == [0, 1, 2, 1, 2]
    assert depth_map(4, 4) == [0, 1, 2, 3]
    with pytest.raises(LineageError):
        depth_map(4, 3)


# ---- configs -----------------------------------------------------------------------------


def test_grown_config_defaults_keep_head_size_groups_and_ffn_ratio() -> None:
    bert = tiny_config("bert")
    cfg = grown_config(bert, layers=3, hidden=96)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (3, 6, 384)
    assert bert.hidden_size == 64 and bert.num_hidden_layers == 2  # source untouched
    llama = grown_config(tiny_config("llama_gqa"), layers=4, hidden=128)
    shape = shape_of(llama)
    assert (shape.heads, shape.kv_heads, shape.head_dim, shape.ffn) == (8, 4, 16, 320)
    gpt2 = grown_config(tiny_config("gpt2"), layers=2, hidden=128)
    assert gpt2.n_inner is None and shape_of(gpt2).ffn == 512
    assert grown_config(tiny_config("gpt2"), layers=2, hidden=128, ffn=300).n_inner == 300


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("bert", {"layers": 2, "hidden": 72}),  # not a whole number of 16-wide heads
        ("bert", {"layers": 1, "hidden": 64}),  # depth shrinks
        ("bert", {"layers": 2, "hidden": 128, "heads": 4}),  # head size would change
        ("gpt2", {"layers": 2, "hidden": 128, "kv_heads": 4}),  # no GQA in GPT-2
        ("llama_gqa", {"layers": 2, "hidden": 128, "heads": 8, "kv_heads": 8}),  # group shrinks
        ("bert", {"layers": 2, "hidden": 128, "ffn": 128}),  # ffn shrinks
    ],
)
def test_grown_config_refuses_what_growth_cannot_do(name: str, kwargs: dict) -> None:
    with pytest.raises(LineageError):
        grown_config(tiny_config(name), **kwargs)


def test_unknown_family_and_unknown_parameter_are_refused() -> None:
    from transformers import DistilBertConfig

    with pytest.raises(LineageError, match="growth supports"):
        family_of(DistilBertConfig())
    cfg = tiny_config("bert")
    sd = dict(fresh_model(cfg).state_dict())
    sd["bert.pooler.dense.weight"] = torch.zeros(64, 64)
    with pytest.raises(LineageError, match="no template"):
        grow_state_dict(sd, cfg, grown_config(cfg, layers=2, hidden=128), method="fpi")


# ---- function preservation ---------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_fpi_integer_width_multiple_preserves_logits(name: str) -> None:
    source = trained_source(name)
    ids, _ = topic_batch(name, seed=1, n=8)
    ref = logits_of(source, ids)
    grown, record = grow_model(source, layers=2, hidden=128, method="fpi", seed=0)
    assert shape_of(grown.config).heads == 8
    out = logits_of(grown, ids)
    assert ref.std() > 0.5  # the check below is not vacuous
    assert (out - ref).abs().max().item() < 1e-4
    hidden = torch.tensor(record.maps["hidden"])
    assert torch.bincount(hidden).tolist() == [2] * 64  # balanced: LayerNorm stats unchanged


@pytest.mark.parametrize("name", FAMILIES)
def test_non_integer_width_fpi_stays_close_aki_and_copy_move(name: str) -> None:
    source = trained_source(name)
    ids, labels = topic_batch(name, seed=1, n=32)
    ref = logits_of(source, ids)
    target_cfg = grown_config(source.config, layers=2, hidden=96)
    rand = logits_of(fresh_model(target_cfg, seed=1), ids)
    out = {
        m: logits_of(grow_model(source, layers=2, hidden=96, method=m)[0], ids)
        for m in ("fpi", "aki", "copy")
    }
    loss = {k: loss_of(v, labels) for k, v in {"src": ref, "rand": rand, **out}.items()}
    diff = {k: (v - ref).abs().max().item() for k, v in {"rand": rand, **out}.items()}
    print(f"\n{name} 64->96 loss", {k: round(v, 3) for k, v in loss.items()})
    print(f"{name} 64->96 max|dlogits|", {k: round(v, 3) for k, v in diff.items()})
    gap = loss["rand"] - loss["src"]
    assert gap > 1.0  # the source learned something a random model does not know
    assert abs(loss["fpi"] - loss["src"]) < 0.05 * gap
    assert diff["fpi"] < 0.25 * diff["rand"]
    for method in ("aki", "copy"):
        assert diff[method] > 2 * diff["fpi"]  # not function preserving
        assert loss[method] - loss["src"] < 0.5 * gap  # but far better than random init


# ---- AKI, DirectCopy, depth --------------------------------------------------------------


def test_aki_takes_new_units_from_the_layer_above() -> None:
    cfg = tiny_config("bert")
    sd = fresh_model(cfg).state_dict()
    target = grown_config(cfg, layers=2, hidden=128)
    fpi, _ = grow_state_dict(sd, cfg, target, method="fpi", seed=5)
    aki, _ = grow_state_dict(sd, cfg, target, method="aki", seed=5)
    # the top layer has no layer above: AKI falls back to FPI there
    for key in (k for k in fpi if ".layer.1." in k):
        assert torch.equal(aki[key], fpi[key]), key
    q0, q1 = (f"bert.encoder.layer.{i}.attention.self.query.weight" for i in (0, 1))
    assert torch.equal(aki[q0][:64], fpi[q0][:64])  # old heads: layer 0, in-dim expanded
    assert torch.equal(aki[q0][64:], fpi[q1][64:])  # new heads: layer 1, same maps
    o0, o1 = (f"bert.encoder.layer.{i}.attention.output.dense.weight" for i in (0, 1))
    assert torch.equal(aki[o0][64:], fpi[o1][64:])  # new hidden units: layer 1 as well
    for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.transform.dense.bias"):
        assert torch.equal(aki[key], fpi[key])  # outside the blocks AKI is FPI


def test_aki_gpt2_fused_qkv_takes_new_heads_per_section() -> None:
    cfg = tiny_config("gpt2")
    sd = fresh_model(cfg).state_dict()
    target = grown_config(cfg, layers=2, hidden=128)
    fpi, _ = grow_state_dict(sd, cfg, target, method="fpi")
    aki, _ = grow_state_dict(sd, cfg, target, method="aki")
    w0, w1 = (f"transformer.h.{i}.attn.c_attn.weight" for i in (0, 1))
    for part in range(3):  # [q | k | v], 128 columns each in the target
        old, new = slice(128 * part, 128 * part + 64), slice(128 * part + 64, 128 * (part + 1))
        assert torch.equal(aki[w0][:, old], fpi[w0][:, old])
        assert torch.equal(aki[w0][:, new], fpi[w1][:, new])


def test_direct_copy_keeps_the_source_block_and_random_init_elsewhere() -> None:
    cfg = tiny_config("llama_gqa")
    sd = fresh_model(cfg, seed=3).state_dict()
    target = grown_config(cfg, layers=2, hidden=96)
    grown, _ = grow_state_dict(sd, cfg, target, method="copy-hf-init", seed=7)
    init = fresh_model(target, seed=7).state_dict()
    emb = "model.embed_tokens.weight"
    assert torch.equal(grown[emb][:, :64], sd[emb]) and torch.equal(
        grown[emb][:, 64:], init[emb][:, 64:]
    )
    q = "model.layers.0.self_attn.q_proj.weight"  # 6 heads in 3 groups of 2: old heads 0-3
    assert torch.equal(grown[q][:64, :64], sd[q])
    assert torch.equal(grown[q][64:], init[q][64:]) and torch.equal(
        grown[q][:, 64:], init[q][:, 64:]
    )
    again, _ = grow_state_dict(sd, cfg, target, method="copy", seed=7, init_state_dict=init)
    assert all(torch.equal(again[k], grown[k]) for k in grown)


def test_direct_copy_draws_new_units_at_the_source_scale() -> None:
    """DirectCopy's new units follow each source tensor's mean and spread (scaled-up weights:
    the new block is as loud as the copied one), one draw per tensor, reproducible by seed."""
    cfg = tiny_config("gpt2")
    sd = {
        k: v * 10 if v.dim() == 2 else v for k, v in fresh_model(cfg, seed=3).state_dict().items()
    }
    target = grown_config(cfg, layers=2, hidden=128)
    grown, record = grow_state_dict(sd, cfg, target, method="copy", seed=7)
    assert record.method == "copy"
    q = "transformer.h.0.mlp.c_fc.weight"  # [64, 256] -> [128, 512]
    new = grown[q][64:]
    assert torch.equal(grown[q][:64, :256], sd[q])
    assert new.std().item() == pytest.approx(sd[q].std().item(), rel=0.05)
    ln = "transformer.h.0.ln_1.weight"  # all ones in the source: new units are ones too
    assert torch.equal(grown[ln], torch.ones(128))
    assert not torch.equal(grown["transformer.h.0.attn.c_attn.weight"][64:, :64], new[:, :64])
    again, _ = grow_state_dict(sd, cfg, target, method="copy", seed=7)
    other, _ = grow_state_dict(sd, cfg, target, method="copy", seed=8)
    assert torch.equal(again[q], grown[q]) and not torch.equal(other[q], grown[q])


@pytest.mark.parametrize("name", FAMILIES)
def test_depth_stacking_repeats_the_widened_layers(name: str) -> None:
    cfg = tiny_config(name)
    sd = fresh_model(cfg).state_dict()
    family = family_of(cfg)
    wide, _ = grow_state_dict(sd, cfg, grown_config(cfg, layers=2, hidden=128), method="aki")
    deep, record = grow_state_dict(sd, cfg, grown_config(cfg, layers=5, hidden=128), method="aki")
    assert record.maps["layers"] == [0, 1, 0, 1, 1]
    prefix = family.layers_path
    rels = [rel for rel in family.layer_params if f"{prefix}.0.{rel}" in sd]
    for i, s in enumerate(record.maps["layers"]):
        for rel in rels:
            assert torch.equal(deep[f"{prefix}.{i}.{rel}"], wide[f"{prefix}.{s}.{rel}"])
    assert deep[f"{prefix}.2.{rels[0]}"].data_ptr() != deep[f"{prefix}.0.{rels[0]}"].data_ptr()
    same, _ = grow_state_dict(sd, cfg, grown_config(cfg, layers=4, hidden=64), method="fpi")
    for key, value in sd.items():  # same width: identity maps, stacked copies of the source
        assert torch.equal(same[key], value)
    for i, rel in ((i, rel) for i in range(4) for rel in rels):
        assert torch.equal(same[f"{prefix}.{i}.{rel}"], sd[f"{prefix}.{i % 2}.{rel}"])


@pytest.mark.parametrize("name", ["bert", "llama_gqa"])
def test_depth_stacking_is_not_function_preserving(name: str) -> None:
    source = trained_source(name)
    ids, _ = topic_batch(name, seed=1, n=8)
    deeper, _ = grow_model(source, layers=4, hidden=128)
    assert (logits_of(deeper, ids) - logits_of(source, ids)).abs().max() > 1e-2


# ---- records, purity, round trip ---------------------------------------------------------


def test_growth_warnings_flag_starting_losses_a_user_should_hear_about() -> None:
    cfg = tiny_config("llama_gqa")
    sd = fresh_model(cfg).state_dict()

    def record(method: str, layers: int = 2) -> GrowthRecord:
        target = grown_config(cfg, layers=layers, hidden=128)
        return grow_state_dict(sd, cfg, target, method=method)[1]  # type: ignore[arg-type]

    fpi, aki = record("fpi"), record("aki")
    assert growth_warnings(fpi, 3.0, 3.05) == []  # FPI within its tolerance
    (broken,) = growth_warnings(fpi, 3.0, 3.5)
    assert "FPI should keep" in broken and "+0.500 nats" in broken
    assert growth_warnings(record("fpi", layers=4), 3.0, 3.5) == []  # stacking may move it
    assert growth_warnings(aki, 3.0, 3.8) == []  # AKI is not function-preserving: some gap
    (far,) = growth_warnings(aki, 3.0, 4.5)
    assert "AKI" in far and "not function-preserving" in far and "+1.500 nats" in far
    uniform = math.log(VOCAB)
    gap, worse = growth_warnings(aki, 3.0, uniform + 0.5)  # the SmolLM2-135M report's case
    assert "AKI" in gap and "uniform" in worse and f"{uniform:.3f}" in worse
    (worse,) = growth_warnings(record("copy"), uniform - 0.5, uniform + 0.1)
    assert "uniform" in worse


def test_record_is_json_and_seeded() -> None:
    cfg = tiny_config("llama_gqa")
    sd = fresh_model(cfg).state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    target = grown_config(cfg, layers=3, hidden=96)
    a, rec_a = grow_state_dict(sd, cfg, target, method="fpi", seed=11)
    b, rec_b = grow_state_dict(sd, cfg, target, method="fpi", seed=11)
    _, rec_c = grow_state_dict(sd, cfg, target, method="fpi", seed=12)
    assert all(torch.equal(a[k], b[k]) for k in a) and rec_a == rec_b
    assert rec_a.maps["hidden"] != rec_c.maps["hidden"]
    assert all(torch.equal(sd[k], before[k]) for k in sd)  # the source is not modified
    assert rec_a.maps["hidden"][:64] == list(range(64)) and len(rec_a.maps["hidden"]) == 96
    assert rec_a.maps["ffn"][:160] == list(range(160)) and rec_a.maps["layers"] == [0, 1, 1]
    assert rec_a.source_shape["hidden"] == 64 and rec_a.target_shape["kv_heads"] == 3
    assert GrowthRecord.from_json(rec_a.to_json()) == rec_a
    assert json.loads(rec_a.to_json())["method"] == "fpi"


@pytest.mark.parametrize("name", FAMILIES)
def test_grown_model_round_trips_through_safetensors(name: str, tmp_path: Path) -> None:
    source = fresh_model(tiny_config(name))
    grown, _ = grow_model(source, layers=3, hidden=128, method="aki", seed=2)
    grown.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = type(grown).from_pretrained(tmp_path).eval()
    same = loaded.get_input_embeddings().weight is loaded.get_output_embeddings().weight
    assert same == (name != "llama_gqa")  # tied stays tied; untied Llama stays untied
    ids, _ = topic_batch(name, seed=4, n=4)
    assert torch.equal(logits_of(loaded, ids), logits_of(grown, ids))


# ---- Alg. 2 --------------------------------------------------------------------------------


def test_submodels_and_trainable_layers() -> None:
    assert submodel_layers(12, 3) == [3, 6, 9, 12]
    assert submodel_layers(10, 4) == [4, 8, 10]
    assert submodel_layers(5, 5) == [5]
    assert trainable_layer_range(6, 3) == range(3, 6)
    assert trainable_layer_range(2, 3) == range(0, 2)
    for bad in ((4, 0), (4, 5)):
        with pytest.raises(LineageError):
            submodel_layers(*bad)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama_gqa"])
def test_truncate_depth_runs_the_bottom_layers_with_the_shared_head(name: str) -> None:
    model, _ = grow_model(fresh_model(tiny_config(name)), layers=4, hidden=64)
    ids, _ = topic_batch(name, seed=2, n=4)
    full = logits_of(model, ids)
    shallow_cfg = grown_config(tiny_config(name), layers=2, hidden=64)
    shallow = fresh_model(shallow_cfg)
    shallow.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k in shallow.state_dict()}
    )
    layers = model.get_submodule(family_of(model.config).layers_path)
    n_params = sum(p.numel() for p in model.parameters())
    with truncate_depth(model, 2) as sub:
        inner = sub.get_submodule(family_of(model.config).layers_path)
        assert len(inner) == 2 and inner[1] is layers[1]  # the same modules, no copy
        assert sum(p.numel() for p in sub.parameters()) < n_params
        assert torch.allclose(logits_of(sub, ids), logits_of(shallow, ids), atol=1e-5)
    assert model.get_submodule(family_of(model.config).layers_path) is layers
    assert model.config.num_hidden_layers == 4
    assert torch.equal(logits_of(model, ids), full)
    with pytest.raises(LineageError), truncate_depth(model, 5):
        pass


# ---- a real checkpoint on disk -------------------------------------------------------------


def _saved_llama_checkpoint(out: Path) -> Path:
    """A SmolLM2-style Llama checkpoint written to disk as Hugging Face saves real ones
    (safetensors, tied embeddings, RMSNorm, SwiGLU, RoPE, GQA with groups of 3), briefly
    trained so its weights are not at init; nothing is downloaded."""
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=256,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # learn a repeating pattern: weights move away from init
        ids = torch.arange(32).repeat(4, 1) % 17 + torch.randint(5, (4, 1), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_fpi_on_a_saved_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = _saved_llama_checkpoint(tmp_path / "smol-like")
    assert list(path.glob("*.safetensors"))
    source = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=torch.float32
    ).eval()
    assert source.config.tie_word_embeddings and source.config.num_key_value_heads == 2
    shape = shape_of(source.config)
    grown, _ = grow_model(source, layers=shape.layers, hidden=2 * shape.hidden)
    assert grown.config.num_key_value_heads == 4  # group size 3 kept
    ids = torch.randint(shape.vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    assert (logits_of(grown, ids) - logits_of(source, ids)).abs().max() < 1e-3

"""EarthGPT-X's LLM: the shipped LLaMA-2-13B architecture on the meta device, attention-only training
chosen by module type (against a brute-force walk, and a name-substring trap), and LoRA r=64 on q,k,v,o."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from rsvlm.data.spie.corpus import SpieDemoTokenizer
from rsvlm.llm.causal_lm import CausalLM
from rsvlm.llm.configs import load_config_dict
from rsvlm.llm.lora import LoraSettings
from rsvlm.llm.trainable_parts import select_modules, train_parts

# LLaMA-2-13B: width, layers, MLP width, vocabulary (Touvron et al. 2023, Table 1 and the hf config).
D, LAYERS, MLP, VOCAB = 5120, 40, 13824, 32000
SPECIALS = ["<image>", "<region>", "[SEG]"]
TINY_LLAMA = {
    "base": "llama-2-13b",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


def count(module: nn.Module, trainable: bool = False) -> int:
    """Parameters of ``module`` (only the trainable ones if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def attention_parameter_names(model: nn.Module) -> set[str]:
    """Brute force: names of the parameters inside every ``LlamaAttention`` module of ``model``."""
    return {
        f"{name}.{pname}" if name else pname
        for name, module in model.named_modules()
        if isinstance(module, LlamaAttention)
        for pname, _ in module.named_parameters()
    }


def tiny_llama(**kwargs) -> CausalLM:
    """A randomly initialised 3-layer Llama with the offline demo tokenizer and EarthGPT-X's placeholders."""
    torch.manual_seed(0)
    return CausalLM(config=dict(TINY_LLAMA), tokenizer=SpieDemoTokenizer(), special_tokens=SPECIALS, **kwargs)


def test_shipped_config_is_llama_2_13b() -> None:
    c = load_config_dict("llama-2-13b")
    assert (c["model_type"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]) == ("llama", D, 40, 40)
    assert (c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]) == (40, MLP, VOCAB)
    assert (c["rms_norm_eps"], c["max_position_embeddings"], c["rope_theta"]) == (1e-5, 4096, 10000.0)
    assert c["tie_word_embeddings"] is False


def test_meta_llama_2_13b_attention_only() -> None:
    """The gated hub id builds on the meta device from the shipped config (its "-hf" suffix dropped):
    the published 13,015,864,320 parameters, of which exactly the 4.19 B of q,k,v,o train."""
    with torch.device("meta"):
        lm = CausalLM(model="meta-llama/Llama-2-13b-hf", train_modules=["attention"])
    per_layer = 4 * D * D + 3 * D * MLP + 2 * D  # q,k,v,o + gate,up,down + two RMSNorms (no biases)
    assert 2 * VOCAB * D + LAYERS * per_layer + D == 13_015_864_320  # untied embeddings/head + final norm
    assert count(lm) == 2 * VOCAB * D + LAYERS * per_layer + D
    assert count(lm, trainable=True) == LAYERS * 4 * D * D == 4_194_304_000
    trainable = {n.removeprefix("model.") for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable == attention_parameter_names(lm.model)
    assert lm.trainable_mode == "attention" and lm.hidden_size == D


def test_meta_llama_2_13b_lora_r64_on_qkvo() -> None:
    """The single-GPU alternative: LoRA r=64 on q,k,v,o, r·(in+out) per matrix, the base untouched."""
    with torch.device("meta"):
        lm = CausalLM(config="llama-2-13b", lora=LoraSettings(r=64, alpha=128))
    assert LoraSettings().target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert count(lm, trainable=True) == LAYERS * 4 * 64 * (D + D) == 104_857_600
    assert count(lm) - count(lm, trainable=True) == 13_015_864_320
    assert lm.trainable_mode == "LoRA r=64"


def test_selection_by_type_matches_a_brute_force_walk() -> None:
    model = CausalLM(config=dict(TINY_LLAMA)).base_model
    for kind, cls, expected in (("attention", LlamaAttention, 3), ("mlp", LlamaMLP, 3), ("norm", LlamaRMSNorm, 7)):
        walk = [m for _, m in model.named_modules() if isinstance(m, cls)]
        assert len(walk) == expected
        assert [id(m) for m in select_modules(model, [kind])] == [id(m) for m in walk]
    assert select_modules(model, ["embeddings"]) == [model.model.embed_tokens]
    assert select_modules(model, ["lm_head"]) == [model.lm_head]
    both = select_modules(model, ["attention", "lm_head"])
    assert len(both) == 4 and both[-1] is model.lm_head


def test_a_module_named_like_attention_is_not_picked() -> None:
    """Trap: a Linear called ``attn_proj_mlp`` (a substring rule would take it) stays frozen; an
    attention module under an unrelated name (``extra``) is picked, because its type is attention."""
    model = CausalLM(config=dict(TINY_LLAMA)).base_model
    trap = nn.Linear(32, 32)
    model.model.layers[0].mlp.attn_proj_mlp = trap
    extra = LlamaAttention(model.config, layer_idx=0)
    model.model.extra = extra
    model.requires_grad_(False)
    substring = [m for name, m in model.named_modules() if "attn" in name]
    assert any(m is trap for m in substring)  # the trap is real for a name rule
    chosen = train_parts(model, ["attention"])
    assert not any(m is trap for m in chosen) and any(m is extra for m in chosen)
    assert not trap.weight.requires_grad and all(p.requires_grad for p in extra.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == attention_parameter_names(model)


@pytest.mark.parametrize("new_tokens", [False, True])
def test_one_step_changes_only_the_attention(new_tokens: bool) -> None:
    """A step of AdamW over *all* parameters, after a pass with <image>, <region> and [SEG] spliced:
    only the attention weights (and with ``new_tokens`` the new rows' delta) move."""
    lm = tiny_llama(train_modules=["attention"], train_new_token_embeddings=new_tokens).train()
    conversation = [
        {"from": "human", "value": "<image>\nSegment the <region>."},
        {"from": "gpt", "value": "It is water [SEG]."},
    ]
    batch = lm.formatter.conversations([conversation])
    g = torch.Generator().manual_seed(1)
    placeholders = {"<image>": torch.randn(1, 4, 32, generator=g), "<region>": [torch.randn(1, 32, generator=g)]}
    out = lm(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], placeholders=placeholders)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    optimiser = torch.optim.AdamW(lm.parameters(), lr=1e-2, weight_decay=0.1)
    out.loss.backward()
    optimiser.step()
    changed = {n for n, p in lm.named_parameters() if not torch.equal(p, before[n])}
    prefix = next(n for n, m in lm.named_modules() if m is lm.base_model)
    expected = {f"{prefix}.{n}" for n in attention_parameter_names(lm.base_model)}
    # peft's delta of the new token rows (the embedding matrix itself stays frozen).
    delta_ids = {
        id(p)
        for m in lm.modules()
        if isinstance(m, TrainableTokensLayer)
        for p in m.trainable_tokens_delta.parameters()
    }
    deltas = {n for n, p in lm.named_parameters() if id(p) in delta_ids}
    assert bool(deltas) == new_tokens
    assert changed == expected | deltas


def test_jsonargparse_builds_attention_only() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CausalLM, "llm")
    config = parser.parse_object({"llm": {"config": dict(TINY_LLAMA), "train_modules": ["attention"]}})
    lm = parser.instantiate_classes(config).llm
    assert count(lm, trainable=True) == 3 * 4 * 32 * 32


def test_bad_train_modules_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="train_modules: unknown kind"):
        CausalLM(config=dict(TINY_LLAMA), train_modules=["attn"])
    with pytest.raises(ValueError, match="train_modules.*no lora"):
        CausalLM(config=dict(TINY_LLAMA), train_modules=["attention"], lora=LoraSettings())
    with pytest.raises(ValueError, match="train_modules.*freeze=True"):
        CausalLM(config=dict(TINY_LLAMA), train_modules=["attention"], freeze=False)
    with pytest.raises(ValueError, match="no decoder layer with `self_attn`"):
        select_modules(nn.Sequential(nn.Linear(2, 2)), ["attention"])
    with pytest.raises(ValueError, match="has no lm_head module"):
        select_modules(nn.Sequential(nn.Linear(2, 2)), ["lm_head"])

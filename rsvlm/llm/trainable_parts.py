"""Parts of a transformers decoder that train, chosen by module type (never by parameter-name substrings).

EarthGPT-X trains only LLaMA-2-13B's self-attention (q, k, v, o: 40 × 4 × 5120² = 4.19 B
parameters, whose AdamW state needs DeepSpeed ZeRO-2 / FSDP sharding). ``CausalLM(freeze=True,
train_modules=["attention"])`` does that; on a single GPU, ``lora={r: 64}`` (LoRA on q, k, v, o,
105 M parameters for LLaMA-2-13B) is the documented alternative.

The rule for each kind:

* ``attention``: every module whose type is the type of some decoder layer's ``self_attn``
  (``LlamaAttention`` for Llama, ``Qwen2Attention`` for Qwen2, ...). Decoder layers are the
  modules that hold a ``self_attn`` submodule, transformers' layout for the Llama family.
* ``mlp``: every module of the type of a decoder layer's ``mlp``.
* ``norm``: every module of the type of a decoder layer's ``input_layernorm`` /
  ``post_attention_layernorm`` (so the final norm too), or a ``torch.nn`` LayerNorm / RMSNorm.
* ``embeddings``: ``get_input_embeddings()``; ``lm_head``: ``get_output_embeddings()``.

Selecting by type means a module merely *named* like attention (``attn_proj_mlp``) is not picked,
and a module of the attention type is picked wherever it sits and whatever it is called.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

PartKind = Literal["attention", "mlp", "norm", "embeddings", "lm_head"]
PART_KINDS: tuple[str, ...] = get_args(PartKind)
# Attributes of a transformers decoder layer that hold each role (Llama, Qwen2, Mistral, Gemma...).
_LAYER_ROLES: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn",),
    "mlp": ("mlp",),
    "norm": ("input_layernorm", "post_attention_layernorm"),
}
# torch's own norm layers count as norms in any architecture (nn.RMSNorm exists from torch 2.4).
_TORCH_NORMS: tuple[type[nn.Module], ...] = tuple(t for t in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model``: modules holding a ``self_attn`` submodule, in model order."""
    return [m for m in model.modules() if isinstance(getattr(m, "self_attn", None), nn.Module)]


def role_types(model: nn.Module, kind: str) -> tuple[type[nn.Module], ...]:
    """The module classes that play role ``kind`` (``attention``, ``mlp``, ``norm``) in ``model``'s decoder layers."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"train_modules: {type(model).__name__} has no decoder layer with `self_attn` (transformers' Llama layout)"
        )
    found = {
        type(part)
        for layer in layers
        for attr in _LAYER_ROLES[kind]
        if isinstance(part := getattr(layer, attr, None), nn.Module)
    }
    if kind == "norm":
        found |= set(_TORCH_NORMS)
    if not found:
        raise ValueError(
            f"train_modules: {type(model).__name__}'s decoder layers have no {'/'.join(_LAYER_ROLES[kind])}"
        )
    return tuple(sorted(found, key=lambda t: t.__qualname__))


def select_modules(model: nn.Module, kinds: list[str]) -> list[nn.Module]:
    """The modules of ``model`` of the given kinds, by type (see the module docstring), each once, in model order.

    Args:
        model: a transformers causal LM (unwrapped from any peft wrapper).
        kinds: any of ``attention``, ``mlp``, ``norm``, ``embeddings``, ``lm_head``.
    """
    unknown = [k for k in kinds if k not in PART_KINDS]
    if unknown:
        raise ValueError(f"train_modules: unknown kind(s) {unknown}; known: {list(PART_KINDS)}")
    types = tuple(t for k in kinds if k in _LAYER_ROLES for t in role_types(model, k))
    chosen = {id(m) for m in model.modules() if isinstance(m, types)}
    for kind, method in (("embeddings", "get_input_embeddings"), ("lm_head", "get_output_embeddings")):
        if kind in kinds:
            module = getattr(model, method, lambda: None)()
            if module is None:
                raise ValueError(f"train_modules: {type(model).__name__} has no {kind} module")
            chosen.add(id(module))
    return [m for m in model.modules() if id(m) in chosen]


def train_parts(model: nn.Module, kinds: list[str]) -> list[nn.Module]:
    """Let the parameters of the selected modules train (others keep their ``requires_grad``); returns them."""
    modules = select_modules(model, kinds)
    for module in modules:
        module.requires_grad_(True)
    return modules

"""Export the LLM's LoRA adapters (peft format) or the merged model (transformers format).

Both outputs load without rsvlm: ``peft.PeftModel.from_pretrained(base, folder)`` on the same
base model, or ``transformers.AutoModelForCausalLM.from_pretrained(folder)``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from rsvlm.contracts import OutputExistsError
from rsvlm.io.atomic import atomic_folder


def _find_causal_lm(module: nn.Module) -> nn.Module:
    llm = getattr(module, "llm", module)
    if not hasattr(llm, "model"):
        raise TypeError(f"export_lora: {type(module).__name__} has no `llm` with a `model` (expected a CausalLM)")
    return llm


def export_lora(module: nn.Module, out_dir: str | os.PathLike, merged: bool = False, overwrite: bool = False) -> Path:
    """Write the LLM's LoRA adapters (peft format) or the merged model (transformers format).

    Args:
        module: a model with an ``llm`` (:class:`rsvlm.llm.causal_lm.CausalLM`), or the CausalLM.
        out_dir: output folder (created); refused when it holds files unless ``overwrite``.
        merged: ``False``: ``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
            ``peft.PeftModel.from_pretrained(base, out_dir)`` on the same base model.
            ``True``: the base with the adapters merged in (``merge_and_unload`` on a copy, so
            the training model is untouched), loadable with
            ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``.
        overwrite: allow writing into a non-empty folder.

    The tokenizer (with rsvlm's added special tokens) is saved beside the weights. Every file is
    written to a temporary folder first and moved into ``out_dir`` when all were written, so a
    crash never leaves half-written weights.

    Returns:
        ``out_dir``.
    """
    from peft import PeftModel

    llm = _find_causal_lm(module)
    model = llm.model
    if not isinstance(model, PeftModel):
        raise ValueError(
            f"export_lora: the LLM ({type(model).__name__}) has no peft adapters; build CausalLM with lora=... "
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"export_lora: {out} is not empty; pass overwrite=True to write into it")
    with atomic_folder(out) as tmp:
        if merged:
            merged_model = copy.deepcopy(model).merge_and_unload()
            merged_model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = getattr(llm, "_tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


__all__: list[str] = ["export_lora"]

"""LoRA and trainable-token adapters through peft.

Both wrap a frozen base model: peft marks only the adapter parameters trainable, so the
trainable set is decided here, once, and never by matching parameter names elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, TrainableTokensConfig, get_peft_model
from torch import nn


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (peft's ``LoraConfig``).

    Attributes:
        r: rank of the low-rank update.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters (Qwen2/Llama attention by default).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def apply_lora(model: nn.Module, settings: LoraSettings, trainable_token_ids: list[int] | None = None) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; the base weights are frozen.

    Args:
        model: a Hugging Face causal LM.
        settings: rank, alpha, dropout and target modules.
        trainable_token_ids: embedding rows (e.g. newly added special tokens) that also train,
            as a separate peft delta, so the other rows stay bit-identical.
    """
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        trainable_token_indices=list(trainable_token_ids) if trainable_token_ids else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def apply_trainable_tokens(model: nn.Module, token_ids: list[int]) -> PeftModel:
    """Make only the embedding rows ``token_ids`` trainable (tied output rows follow); all else is frozen."""
    embedding = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embedding)
    config = TrainableTokensConfig(token_indices=list(token_ids), target_modules=[name.split(".")[-1]])
    return get_peft_model(model, config)

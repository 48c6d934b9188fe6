"""AdamW with per-component-group learning rates and a cosine schedule with warm-up."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup


@dataclass
class OptimSettings:
    """Optimiser settings (defaults: the SPEX paper).

    Attributes:
        vision_lr: learning rate of the vision side (encoder, fusion, projector, bridge, decoder).
        llm_lr: learning rate of the LLM's trainable parameters (LoRA adapters, new embeddings).
        weight_decay: AdamW weight decay, applied to every trained parameter.
        betas: AdamW betas.
        warmup_ratio: share of the optimisation steps spent warming up linearly from 0.
        warmup_steps: absolute warm-up length; overrides ``warmup_ratio`` when set.
    """

    vision_lr: float = 1e-4
    llm_lr: float = 1e-5
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None


def build_optimizer(groups: dict[str, list[nn.Parameter]], settings: OptimSettings, total_steps: int | float):
    """AdamW over ``groups`` (group name → parameters; names ``vision`` and ``llm``).

    Give it every parameter that any training stage may train: parameters frozen by the current
    stage have no gradient and AdamW skips them, so one optimiser serves a whole stage schedule.
    Returns Lightning's optimiser/scheduler dict (the scheduler steps every optimisation step).
    """
    lrs = {"vision": settings.vision_lr, "llm": settings.llm_lr}
    param_groups = [{"params": params, "lr": lrs[name], "name": name} for name, params in groups.items() if params]
    optimizer = torch.optim.AdamW(param_groups, betas=settings.betas, weight_decay=settings.weight_decay)
    total = max(int(total_steps), 1)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else int(settings.warmup_ratio * total)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""AdamW over named parameter groups and a cosine schedule with warm-up (optionally to a floor)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup


@dataclass
class OptimSettings:
    """What the parameter groups share (defaults: the SPEX paper).

    Learning rates belong to the groups (``ComposedModule.optimizer_groups``).

    Attributes:
        weight_decay: AdamW weight decay of groups that do not set their own.
        betas: AdamW betas.
        warmup_ratio: share of the optimisation steps spent warming up linearly from 0.
        warmup_steps: absolute warm-up length; overrides ``warmup_ratio`` when set.
        min_lr_ratio: the cosine ends at this share of each group's learning rate instead of 0
            (``0 <= min_lr_ratio < 1``; 0, the default, is the plain cosine to zero).
        fused: ``False`` (default): torch's default AdamW (a loop of small ops per parameter on the
            CPU), with which the README's numbers were measured unless a recipe asks otherwise.
            ``True``: torch's fused kernel, one pass over all parameters (the SPEX demo's optimiser
            step on 2 CPU cores took a quarter of the time); torch's error where it has no kernel
            for a parameter's device (the CPU before torch 2.4). ``None``: fused where torch has
            the kernel and the run does not clip fp16 loss-scaled gradients (Lightning does not
            clip for an optimiser that unscales its own gradients), else the default. The update is the same
            up to float rounding, which over hundreds of steps moves a small demo's result.
    """

    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    fused: bool | None = False
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_lr_ratio < 1.0:
            raise ValueError(f"optim.min_lr_ratio: must be in [0, 1), got {self.min_lr_ratio!r}")


@dataclass
class ParameterGroup:
    """One AdamW parameter group: a name (shown by the learning-rate monitor), its parameters,
    its learning rate and, optionally, its own weight decay."""

    name: str
    params: list[nn.Parameter] = field(repr=False)
    lr: float
    weight_decay: float | None = None


def build_optimizer(
    groups: Sequence[ParameterGroup],
    settings: OptimSettings,
    total_steps: int | float,
    clips_scaled_gradients: bool = False,
):
    """AdamW over ``groups`` (empty groups are left out) with a cosine schedule and warm-up.

    Give it every parameter that any training stage may train: parameters frozen by the current
    stage have no gradient and AdamW skips them, so one optimiser serves a whole stage schedule.
    ``clips_scaled_gradients``: the trainer clips gradients under fp16 loss scaling, where
    ``settings.fused=None`` keeps torch's default AdamW.
    Returns Lightning's optimiser/scheduler dict (the scheduler steps every optimisation step).
    """
    param_groups = [
        {
            "params": g.params,
            "lr": g.lr,
            "name": g.name,
            "weight_decay": settings.weight_decay if g.weight_decay is None else g.weight_decay,
        }
        for g in groups
        if g.params
    ]
    optimizer = adamw(
        param_groups, settings, fused=settings.fused is True or (settings.fused is None and not clips_scaled_gradients)
    )
    total = max(int(total_steps), 1)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else int(settings.warmup_ratio * total)
    # At a floor of 0 this is, value for value, transformers' plain cosine (tested).
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=settings.min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def adamw(param_groups: list[dict], settings: OptimSettings, fused: bool) -> torch.optim.AdamW:
    """AdamW, fused when asked and torch has the kernel for every parameter (else the loop, unless
    ``settings.fused`` demands the kernel: then torch's own error)."""
    kwargs = {"betas": settings.betas, "weight_decay": settings.weight_decay}
    if fused and (settings.fused or has_fused_kernel(p for g in param_groups for p in g["params"])):
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    return torch.optim.AdamW(param_groups, **kwargs)


def has_fused_kernel(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW can step every (device, dtype) of ``params``.

    Tried with one step on a one-element tensor of each kind: torch before 2.4 builds a fused AdamW
    over CPU parameters without complaint and fails only at its first step.
    """
    for device, dtype in {(p.device, p.dtype) for p in params}:
        probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        try:
            torch.optim.AdamW([probe], fused=True).step()
        except (RuntimeError, NotImplementedError):
            return False
    return True

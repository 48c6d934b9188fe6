"""AdamW built by ``build_optimizer``: the fused kernel and torch's default give torch's reference
update (the per-parameter loop), the choice follows ``OptimSettings.fused`` (default: torch's default)."""

from __future__ import annotations

import pytest
import torch

from rsvlm.training.optim import OptimSettings, ParameterGroup, build_optimizer


def _has_cpu_kernel() -> bool:
    """torch's own fused AdamW steps a CPU tensor (torch < 2.4 builds one and fails at the step)."""
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.ones(1)
    try:
        torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _steps(
    settings: OptimSettings, clips: bool = False, n: int = 3
) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    groups = [ParameterGroup("a", [params[0]], lr=1e-2), ParameterGroup("b", [params[1]], lr=3e-2, weight_decay=0.1)]
    optimizer = build_optimizer(groups, settings, total_steps=10, clips_scaled_gradients=clips)["optimizer"]
    for step in range(n):
        g = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return optimizer, [p.detach().clone() for p in params]


def _reference(n: int = 3) -> list[torch.Tensor]:
    """torch's single-tensor AdamW with the same groups (the learning rates stay at their base: the
    scheduler, stepped by Lightning, is not stepped here)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    groups = [
        {"params": [params[0]], "lr": 1e-2, "weight_decay": 1e-5},
        {"params": [params[1]], "lr": 3e-2, "weight_decay": 0.1},
    ]
    optimizer = torch.optim.AdamW(groups, foreach=False, fused=False)
    for step in range(n):
        g = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("fused", [None, True, False])
def test_each_implementation_gives_the_reference_update(fused):
    if fused is True and not _has_cpu_kernel():
        pytest.skip("this torch has no fused AdamW kernel for the CPU (torch < 2.4)")
    optimizer, params = _steps(OptimSettings(warmup_steps=0, fused=fused))
    for got, want in zip(params, _reference(), strict=True):
        assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    expected = _has_cpu_kernel() if fused is None else fused
    assert bool(optimizer.defaults["fused"]) is expected


def test_the_default_is_torchs_default_and_auto_keeps_it_when_fp16_gradients_are_clipped():
    optimizer, _ = _steps(OptimSettings(warmup_steps=0), n=1)
    assert not optimizer.defaults["fused"]
    optimizer, _ = _steps(OptimSettings(warmup_steps=0, fused=None), clips=True, n=1)
    assert not optimizer.defaults["fused"]


def test_without_a_kernel_the_default_falls_back_and_fused_true_is_torchs_error(monkeypatch):
    """As torch < 2.4 on the CPU: AdamW(fused=True) raises; ``fused=None`` then takes the loop."""
    real = torch.optim.AdamW

    def no_kernel(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_kernel)
    optimizer, params = _steps(OptimSettings(warmup_steps=0, fused=None))
    assert not optimizer.defaults["fused"]
    monkeypatch.setattr(torch.optim, "AdamW", real)
    for got, want in zip(params, _reference(), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    monkeypatch.setattr(torch.optim, "AdamW", no_kernel)
    with pytest.raises(RuntimeError, match="fused=True"):
        _steps(OptimSettings(fused=True), n=1)


@pytest.mark.parametrize("ratio", [0.0, 0.1])
def test_the_schedule_is_the_cosine_with_warmup_down_to_the_floor(ratio):
    """Each step's learning rate against the formula: linear warm-up, then
    ``lr · (ratio + (1 - ratio) · ½(1 + cos(π · progress)))``."""
    import math

    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    groups = [ParameterGroup("a", [params[0]], lr=1e-2), ParameterGroup("b", [params[1]], lr=3e-3)]
    total, warmup = 20, 4
    built = build_optimizer(groups, OptimSettings(warmup_steps=warmup, min_lr_ratio=ratio), total_steps=total)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    for step in range(total + 1):  # the last step ends on the floor
        if step < warmup:
            factor = step / warmup
        else:
            factor = ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        for group, base in zip(optimizer.param_groups, (1e-2, 3e-3), strict=True):
            assert group["lr"] == pytest.approx(base * factor, rel=1e-9, abs=1e-15), (step, group["name"])
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_a_floor_outside_0_1_is_refused_naming_the_field(ratio):
    with pytest.raises(ValueError, match=r"optim.min_lr_ratio: must be in \[0, 1\)"):
        OptimSettings(min_lr_ratio=ratio)


def test_without_a_floor_every_rate_equals_transformers_plain_cosine():
    """``min_lr_ratio=0`` keeps the exact schedule runs had before the option existed."""
    from transformers.optimization import get_cosine_schedule_with_warmup

    for total, warmup in [(306, 15), (2430, 121), (7, 0)]:
        built = build_optimizer(
            [ParameterGroup("a", [torch.nn.Parameter(torch.zeros(1))], lr=1e-3)],
            OptimSettings(warmup_steps=warmup),
            total_steps=total,
        )
        ours = built["lr_scheduler"]["scheduler"].lr_lambdas[0]
        plain = get_cosine_schedule_with_warmup(
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3), warmup, total
        ).lr_lambdas[0]
        assert [ours(step) for step in range(total + 1)] == [plain(step) for step in range(total + 1)]

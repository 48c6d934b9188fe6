"""One training step of the tiny SPEX under mixed precision, through a Lightning Trainer on CPU.

``bf16-mixed`` is the documented fallback when Qwen2's activations overflow fp16 under
``16-mixed`` (docs/scale-and-safety.md). Lightning turns ``precision="16-mixed"`` on a CPU into
``bf16-mixed``, so the fp16 case passes Lightning's AMP plugin itself (``MixedPrecision`` with
``torch.autocast("cpu", float16)`` and a ``GradScaler``), which is what ``16-mixed`` runs on a
GPU; only the CUDA kernels differ.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import quiet_trainer
from test_resume import TinyDataModule, build_model


class Record:
    """Losses of the training steps and the dtype of the LLM's first attention projection output."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.dtypes: set[torch.dtype] = set()
        self.scaler: torch.amp.GradScaler | None = None
        self.optimizer: torch.optim.Optimizer | None = None


def _one_step(
    precision: str, fused: bool | None = False, **trainer_settings
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], Record]:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.plugins import MixedPrecision

    from rsvlm.training.callbacks import NanGuard

    record = Record()

    class Losses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            record.losses.append(outputs["loss"].detach().float())

    model = build_model()
    # No warm-up: its first step has learning rate 0 and would move nothing.
    model.optim = dataclasses.replace(model.optim, warmup_steps=0, fused=fused)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    projection = next(m for n, m in model.llm.named_modules() if n.endswith("q_proj.base_layer"))
    projection.register_forward_hook(lambda module, args, out: record.dtypes.add(out.dtype))
    if precision == "16-mixed":
        # What Lightning builds for "16-mixed" on a GPU, here on the CPU (see the module docstring).
        scaler = torch.amp.GradScaler("cpu")
        record.scaler = scaler
        settings = dict(plugins=[MixedPrecision("16-mixed", device="cpu", scaler=scaler)])
    else:
        settings = dict(precision=precision)
    trainer = quiet_trainer(devices=1, max_steps=1, callbacks=[Losses(), NanGuard()], **settings, **trainer_settings)
    trainer.fit(model, datamodule=TinyDataModule(n_train=2))
    record.optimizer = trainer.optimizers[0]
    return model, before, record


def _nonzero_gradients_in_fp32() -> set[str]:
    """Reference: the parameters a float32 backward pass over the same two samples reaches."""
    from test_resume import TinySpie

    from rsvlm.data.spie.dataset import SpieCollate

    model = build_model()
    data = TinySpie(2)
    batch = SpieCollate(model.llm.formatter)([data[0], data[1]])
    model.losses(model(batch), batch, with_mask=True)["total"].backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


@pytest.mark.parametrize(("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_one_mixed_precision_step_is_finite_and_trains(precision, dtype):
    model, before, record = _one_step(precision)
    assert dtype in record.dtypes, record.dtypes  # the LLM's matmuls ran in the reduced precision
    assert len(record.losses) == 1 and torch.isfinite(record.losses[0])
    params = dict(model.named_parameters())
    # One applied AdamW step moves exactly the parameters with a nonzero gradient (a step skipped
    # by the fp16 scaler would move none). Not all have one: LoRA's A while B holds its initial
    # zeros, SAM's unused multimask outputs.
    moved = {n for n, value in before.items() if not torch.equal(params[n].detach(), value)}
    assert moved == _nonzero_gradients_in_fp32(), sorted(moved ^ _nonzero_gradients_in_fp32())
    assert any("lora_B" in n for n in moved) and any(n.startswith("encoder.") for n in moved)
    assert all(p.dtype == torch.float32 for p in params.values())  # mixed precision keeps fp32 weights
    if record.scaler is not None:
        assert record.scaler.get_scale() == 2.0**16  # its first scale: no overflow, no skipped step


def test_fp16_loss_scaling_with_gradient_clipping_steps_with_the_per_parameter_adamw():
    """``optim.fused: null``: Lightning refuses to clip gradients for an optimiser that unscales them
    itself (fused AdamW under a GradScaler), so such a run gets torch's default AdamW and trains;
    without clipping the fused kernel (where torch has it for the CPU), which trains too."""
    model, before, record = _one_step("16-mixed", fused=None, gradient_clip_val=1.0)
    assert record.optimizer.defaults["fused"] in (None, False)
    assert len(record.losses) == 1 and torch.isfinite(record.losses[0])
    moved = {n for n, value in before.items() if not torch.equal(dict(model.named_parameters())[n].detach(), value)}
    assert moved == _nonzero_gradients_in_fp32()
    model, before, unclipped = _one_step("16-mixed", fused=None)
    try:  # torch >= 2.4 has the CPU kernel
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
        has_kernel = True
    except RuntimeError:
        has_kernel = False
    assert bool(unclipped.optimizer.defaults["fused"]) is has_kernel
    moved = {n for n, value in before.items() if not torch.equal(dict(model.named_parameters())[n].detach(), value)}
    assert moved == _nonzero_gradients_in_fp32()

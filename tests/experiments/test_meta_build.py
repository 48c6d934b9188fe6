"""Building on the meta device without running weight fills (``SkipMetaWeightFills``): what is
skipped, what still raises, and that the built model is the one a plain meta build gives."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from torch.overrides import TorchFunctionMode

from rsvlm.experiments.summarize import SkipMetaWeightFills, build_model_on_meta
from rsvlm.io.yaml_file import read_yaml


class Recorder(TorchFunctionMode):
    """Every torch function that reaches it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_fills_of_meta_tensors_stop_at_the_mode_and_other_ops_go_through():
    recorder = Recorder()
    with torch.device("meta"), recorder, SkipMetaWeightFills():  # the last mode entered sees a call first
        weight = torch.empty(8, 4)
        weight.normal_(0, 0.02)
        weight.uniform_(-1, 1)
        weight.erfinv_()
        weight.clamp_(-2, 2)
        weight.mul_(3.0)
    assert not {"normal_", "uniform_", "erfinv_", "clamp_"} & set(recorder.names), recorder.names
    assert "mul_" in recorder.names and weight.is_meta and weight.shape == (8, 4)


def test_cpu_tensors_are_filled_as_without_the_mode():
    torch.manual_seed(0)
    expected = torch.empty(5, 3).normal_().clamp_(-1, 1)
    torch.manual_seed(0)
    with SkipMetaWeightFills():
        got = torch.empty(5, 3).normal_().clamp_(-1, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_fill_with_a_tensor_argument_still_checks_shapes():
    with torch.device("meta"), SkipMetaWeightFills(), pytest.raises(RuntimeError):
        torch.empty(3, 4).clamp_(min=torch.empty(5))


def test_the_demo_model_is_the_one_a_plain_meta_build_gives(monkeypatch):
    """Parameter and buffer names, shapes, dtypes and trainable flags equal those of the same
    recipe section built with no fill skipped."""
    section = read_yaml(REPO / "recipes" / "spex-demo.yaml")["model"]
    fast = build_model_on_meta(section)
    monkeypatch.setattr(SkipMetaWeightFills, "SKIPPED", frozenset())
    plain = build_model_on_meta(section)

    def layout(model: torch.nn.Module) -> list[tuple]:
        params = [(n, p.shape, p.dtype, p.requires_grad, p.is_meta) for n, p in model.named_parameters()]
        return params + [(n, b.shape, b.dtype, b.is_meta) for n, b in model.named_buffers()]

    assert layout(fast) == layout(plain)
    assert len(layout(fast)) > 100

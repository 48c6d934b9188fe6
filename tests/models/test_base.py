"""ComposedModule: declared components, stages, eval mode of frozen parts, optimiser groups,
neighbour links, component_init — on toy components, independent of any system."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsvlm.contracts import ContractError
from rsvlm.models.base import ComposedModule, Link, OptimizerGroup, StagePhase
from rsvlm.training.optim import OptimSettings


class Block(nn.Module):
    """A linear layer with dropout, declaring its widths like a component."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear(x))


class Toy(ComposedModule):
    links = (Link("first", "out_dim", "second", "in_dim"), Link("second", "out_dim", "third", "in_dim", unless="skip"))

    def __init__(self, widths=(3, 4, 5, 6), third: nn.Module | None = None, **kwargs) -> None:
        super().__init__(
            stages={"a": ["first"], "b": ["second", "third"], "all": ["first", "second", "third"]},
            stage=kwargs.pop("stage", "a"),
            optimizer_groups=kwargs.pop(
                "optimizer_groups",
                {
                    "slow": OptimizerGroup(["first"], lr=0.1),
                    "fast": OptimizerGroup(["second", "third"], lr=1.0, weight_decay=0.5),
                },
            ),
            optim=OptimSettings(weight_decay=0.01, warmup_steps=0),
            **kwargs,
        )
        torch.manual_seed(0)
        self.assemble({"first": Block(widths[0], widths[1]), "second": Block(widths[1], widths[2]), "third": third})


def test_components_in_order_and_empty_slots_left_out():
    model = Toy()
    assert list(model.components()) == ["first", "second"]
    assert model.stages["b"] == ["second"]  # the empty slot 'third' is dropped from the stage


def test_stage_freezes_other_components_and_puts_them_in_eval_mode():
    model = Toy(stage="a").train()
    assert all(p.requires_grad for p in model.first.parameters())
    assert not any(p.requires_grad for p in model.second.parameters())
    assert model.first.training and not model.second.training
    model.set_stage("b")
    assert model.second.training and not model.first.training
    model.eval()
    model.train()  # Lightning calls this at every training epoch: frozen parts stay in eval
    assert not model.first.dropout.training and model.second.dropout.training


def test_schedule_walks_the_phases():
    model = Toy(schedule=[StagePhase("a", 1), {"stage": "b", "epochs": 2}])
    assert [model.stage_at_epoch(e) for e in range(5)] == ["a", "b", "b", "b", "b"]
    assert model.components_of_run() == {"first", "second"}
    with pytest.raises(KeyError, match="unknown stage 'c'"):
        Toy(stage="c")


def test_link_mismatch_names_both_components():
    with pytest.raises(ContractError, match=r"Block gives in_dim=4, but Block expects in_dim=7"):
        Toy(widths=(3, 4, 5, 6), third=None).assemble({"first": Block(3, 4), "second": Block(7, 5)})
    # A link is skipped when its 'unless' component is present.
    link = Link("second", "out_dim", "third", "in_dim", unless="skip")
    link.check({"second": Block(1, 2), "third": Block(9, 9), "skip": nn.Identity()})
    with pytest.raises(ContractError):
        link.check({"second": Block(1, 2), "third": Block(9, 9)})


class _Trainer:
    estimated_stepping_batches = 10
    precision = "32-true"
    gradient_clip_val = None


def _optimizer(model: ComposedModule) -> torch.optim.Optimizer:
    model._trainer = _Trainer()  # what configure_optimizers reads: step count, precision, clipping
    return model.configure_optimizers()["optimizer"]


def test_optimizer_groups_take_their_components_lr_and_weight_decay():
    model = Toy(schedule=[StagePhase("a", 1), StagePhase("b", 1)])
    groups = {g["name"]: g for g in _optimizer(model).param_groups}
    assert set(groups) == {"slow", "fast"}
    assert {id(p) for p in groups["slow"]["params"]} == {id(p) for p in model.first.parameters()}
    assert {id(p) for p in groups["fast"]["params"]} == {id(p) for p in model.second.parameters()}
    assert groups["slow"]["weight_decay"] == 0.01 and groups["fast"]["weight_decay"] == 0.5
    assert groups["slow"]["initial_lr"] == 0.1 and groups["fast"]["initial_lr"] == 1.0


def test_only_components_of_the_run_get_optimizer_state():
    groups = {g["name"] for g in _optimizer(Toy(stage="a")).param_groups}
    assert groups == {"slow"}


def test_a_trained_component_in_no_group_is_an_error():
    model = Toy(stage="all", optimizer_groups={"slow": OptimizerGroup(["first"], lr=0.1)})
    with pytest.raises(KeyError, match=r"\['second'\].*no optimizer group"):
        _optimizer(model)


def test_component_init_copies_one_components_weights(tmp_path):
    donor = Toy()
    with torch.no_grad():
        donor.second.linear.weight.fill_(0.25)
    path = tmp_path / "donor.ckpt"
    torch.save({"state_dict": donor.state_dict()}, path)
    model = Toy(component_init={"second": str(path)})
    assert torch.equal(model.second.linear.weight, donor.second.linear.weight)
    assert not torch.equal(model.first.linear.weight, torch.full_like(model.first.linear.weight, 0.25))
    with pytest.raises(KeyError, match="component_init names 'fourth'"):
        Toy(component_init={"fourth": str(path)})


def test_declared_groups_are_not_shared_between_models():
    shared = {"all": OptimizerGroup(["first", "second", "third"], lr=0.1)}
    Toy(stage="all", optimizer_groups=shared)
    assert shared["all"].components == ["first", "second", "third"]


def test_misspelt_component_in_a_stage_or_group_is_an_error():
    with pytest.raises(KeyError, match=r"optimizer group 'slow' names unknown component\(s\) \['frist'\]"):
        Toy(optimizer_groups={"slow": OptimizerGroup(["frist"], lr=0.1)})

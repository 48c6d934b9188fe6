"""The SPEX LightningModule: shapes, stage-wise trainable sets, assembly checks, inference."""

from __future__ import annotations

import pytest
import torch
from conftest import contract_batch, tiny_spex_components

from rsvlm.contracts import ContractError
from rsvlm.models.spex import DEFAULT_STAGE_COMPONENTS, SpexModel, StagePhase, generated_positions
from rsvlm.training.optim import OptimSettings, build_optimizer


@pytest.fixture(scope="module")
def components():
    return tiny_spex_components()


def test_forward_shapes_and_losses(components):
    model = SpexModel(**components, stage="joint")
    batch = contract_batch(model.llm.formatter)
    out = model(batch, with_mask=True)
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    losses = model.losses(out, batch, with_mask=True)
    assert set(losses) == {"text", "bce", "dice", "total"}
    w = model.loss_weights
    expected = w.text * losses["text"] + w.bce * losses["bce"] + w.dice * losses["dice"]
    assert torch.allclose(losses["total"], expected)
    assert torch.isfinite(losses["total"])


def _params(model: SpexModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("stage", ["text", "mask"])
@pytest.mark.parametrize("lora", [False, True])
def test_one_step_changes_exactly_the_stage_parameters(stage, lora):
    model = SpexModel(**tiny_spex_components(lora=lora), stage=stage)
    model.train()
    batch = contract_batch(model.llm.formatter)
    trained_components = DEFAULT_STAGE_COMPONENTS[stage]
    groups = {"vision": [p for p in model.parameters() if p.requires_grad], "llm": []}
    optimizer = build_optimizer(groups, OptimSettings(vision_lr=1e-2, warmup_steps=0), total_steps=10)["optimizer"]
    before = _params(model)
    loss = model.losses(model(batch, with_mask=stage != "text"), batch, with_mask=stage != "text")["total"]
    loss.backward()
    has_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    nonzero_grad = {n for n in has_grad if dict(model.named_parameters())[n].grad.abs().sum() > 0}
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}

    # Nothing outside the stage's components moves; inside, what got a gradient moves (a zero
    # gradient may still move a parameter through weight decay, unless the parameter is zero).
    owner = {n: n.split(".")[0] for n in before}
    assert {owner[n] for n in has_grad} <= set(trained_components)
    assert nonzero_grad <= changed <= has_grad
    for component in trained_components:
        assert any(owner[n] == component for n in changed), f"{component} did not train in stage {stage}"
    if lora:
        # LoRA keeps every base weight of the LLM frozen; only adapters move.
        llm_changed = {n for n in changed if owner[n] == "llm"}
        assert all("lora_" in n for n in llm_changed)
        if stage == "text":
            assert llm_changed


def test_schedule_switches_stage():
    model = SpexModel(**tiny_spex_components(), schedule=[StagePhase("text", 2), StagePhase("mask", 3)])
    assert [model.stage_at_epoch(e) for e in range(7)] == ["text", "text", "mask", "mask", "mask", "mask", "mask"]
    model.set_stage("mask")
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert any(p.requires_grad for p in model.decoder.parameters())
    model.set_stage("text")
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert not any(p.requires_grad for p in model.bridge.parameters())


def test_assembly_mismatch_names_both_components():
    from rsvlm.bridges.tcp import TokenCompressionProjector

    parts = tiny_spex_components()
    parts["bridge"] = TokenCompressionProjector(in_dim=48, out_dim=32)
    with pytest.raises(ContractError, match="CausalLM.*TokenCompressionProjector"):
        SpexModel(**parts)


def test_wrong_band_count_is_a_clear_error(components):
    model = SpexModel(**components)
    batch = contract_batch(model.llm.formatter, bands=3)
    with pytest.raises(ContractError, match="'image' has 3 bands.*in_bands=4"):
        model(batch)


def test_predict_generates_text_and_masks(components):
    model = SpexModel(**components).eval()
    model.generation.max_new_tokens = 6
    batch = contract_batch(model.llm.formatter)
    out = model.predict_masks(batch)
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    assert len(out["texts"]) == 2 and all(isinstance(t, str) for t in out["texts"])


def test_generated_positions_excludes_the_closing_token_and_keeps_something():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    response = torch.tensor([[True, True, False, False], [False, False, False, False]])
    pos = generated_positions(response, mask)
    assert pos.tolist() == [[True, True, False, False], [True, False, False, False]]

"""The vision-language model (SPEX wiring): shapes, stage-wise trainable sets, assembly checks, inference."""

from __future__ import annotations

import pytest
import torch
from conftest import contract_batch, tiny_spex_components

from rsvlm.bridges.positions import generated_positions
from rsvlm.contracts import ContractError
from rsvlm.models.base import StagePhase
from rsvlm.models.vlm import VisionLanguageModel
from rsvlm.training.optim import OptimSettings, ParameterGroup, build_optimizer


@pytest.fixture(scope="module")
def components():
    return tiny_spex_components()


def test_forward_shapes_and_losses(components):
    model = VisionLanguageModel(**components, stage="joint")
    batch = contract_batch(model.llm.formatter)
    out = model(batch, with_mask=True)
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    losses = model.losses(out, batch, with_mask=True)
    assert set(losses) == {"text", "bce", "dice", "total"}
    w = model.loss_weights
    expected = w["text"] * losses["text"] + w["bce"] * losses["bce"] + w["dice"] * losses["dice"]
    assert torch.allclose(losses["total"], expected)
    assert torch.isfinite(losses["total"])


def _params(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("stage", ["text", "mask"])
@pytest.mark.parametrize("lora", [False, True])
def test_one_step_changes_exactly_the_stage_parameters(stage, lora):
    model = VisionLanguageModel(**tiny_spex_components(lora=lora), stage=stage)
    model.train()
    batch = contract_batch(model.llm.formatter)
    trained_components = model.stages[stage]
    groups = [ParameterGroup("vision", [p for p in model.parameters() if p.requires_grad], lr=1e-2)]
    optimizer = build_optimizer(groups, OptimSettings(warmup_steps=0), total_steps=10)["optimizer"]
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
    model = VisionLanguageModel(**tiny_spex_components(), schedule=[StagePhase("text", 2), StagePhase("mask", 3)])
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
        VisionLanguageModel(**parts)


def test_wrong_band_count_is_a_clear_error(components):
    model = VisionLanguageModel(**components)
    batch = contract_batch(model.llm.formatter, bands=3)
    with pytest.raises(ContractError, match="'image' has 3 bands.*in_bands=4"):
        model(batch)


def test_predict_generates_text_and_masks(components):
    model = VisionLanguageModel(**components).eval()
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


def _seg_model(offset: str = "at") -> VisionLanguageModel:
    from rsvlm.bridges.positions import SpecialToken
    from rsvlm.bridges.seg_token import SegTokenBridge

    parts = tiny_spex_components(special_tokens=("<image>", "[SEG]"))
    parts["bridge"] = SegTokenBridge(in_dim=32, out_dim=32, num_tokens=1)
    return VisionLanguageModel(**parts, positions=SpecialToken("[SEG]", offset=offset), stage="joint")


@pytest.mark.parametrize("offset", ["at", "before"])
def test_seg_bridge_reads_the_hidden_state_at_or_before_the_seg_token(offset):
    from rsvlm.bridges.positions import with_response_suffix

    model = _seg_model(offset).eval()
    formatter = with_response_suffix(model.llm.formatter, model.positions.response_suffix)
    batch = contract_batch(formatter)
    seg_id = model.llm.tokenizer.convert_tokens_to_ids("[SEG]")
    image = batch["image"]
    fused, visual, decoder_map = model.encode_image(image)
    out = model.llm(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        visual_tokens=visual,
        labels=batch["labels"],
        response_mask=batch["response_mask"],
    )
    # Reference: the one [SEG] of each sample, found in the spliced ids by a loop.
    expected = []
    for b, row in enumerate(out.input_ids.tolist()):
        (at,) = [i for i, t in enumerate(row) if t == seg_id]
        expected.append(out.hidden_states[b, at - 1 if offset == "before" else at])
    prompts = model.bridge.proj(torch.stack(expected)[:, None])
    reference = model.decoder(decoder_map, prompts, tuple(image.shape[-2:]))
    assert torch.allclose(model(batch)["mask_logits"], reference, atol=1e-5)


def test_seg_bridge_trains_a_step_and_predicts():
    from rsvlm.bridges.positions import with_response_suffix

    model = _seg_model()
    model.train()
    batch = contract_batch(with_response_suffix(model.llm.formatter, model.positions.response_suffix))
    losses = model.losses(model(batch, with_mask=True), batch, with_mask=True)
    losses["total"].backward()
    assert all(p.grad is not None for p in model.bridge.parameters())
    model.eval()
    model.generation.max_new_tokens = 4
    out = model.predict_masks(batch)  # no [SEG] generated by an untrained LM: falls back to the last token
    assert out["mask_logits"].shape == (2, 1, 64, 64) and torch.isfinite(out["mask_logits"]).all()


class _Flip(torch.nn.Module):
    """A toy cropper that keeps the geometry (a horizontal flip) and records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, image: torch.Tensor, batch) -> torch.Tensor:
        self.calls += 1
        return image.flip(-1)


def test_visual_prompts_and_cropper_slots_reach_the_mask():
    from rsvlm.data.visual_prompts import prompt_batch, prompts_from_arguments
    from rsvlm.prompts.region_pool import RegionPoolPromptEncoder

    parts = tiny_spex_components(special_tokens=("<image>", "<region>"))
    encoder = RegionPoolPromptEncoder(in_channels=parts["fusion"].out_channels, out_dim=32, output_size=2)
    model = VisionLanguageModel(**parts, prompt_encoder=encoder, cropper=_Flip(), stage="joint")
    assert "prompt_encoder" in model.stages["joint"] and "cropper" in model.stages["joint"]
    batch = contract_batch(model.llm.formatter)
    batch.update(model.llm.formatter(["Describe the water in <region>."] * 2, batch["response"]))

    def boxes(shift: float):
        given = [[[4 + shift, 4, 30 + shift, 30]], [[10, 20 + shift, 60, 50 + shift]]]
        return prompt_batch([prompts_from_arguments(boxes=b) for b in given], image_size=(64, 64))

    logits = model({**batch, "visual_prompts": boxes(0.0)})["mask_logits"]
    assert model.cropper.calls == 1
    moved = model({**batch, "visual_prompts": boxes(12.0)})["mask_logits"]
    assert not torch.allclose(logits, moved)  # the region token flows into the mask
    logits.sum().backward()
    assert model.prompt_encoder.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ContractError, match="needs the batch field 'visual_prompts'"):
        model(batch)


def test_dense_prompts_fuse_into_the_visual_tokens_before_the_llm():
    from rsvlm.data.visual_prompts import prompt_batch, prompts_from_arguments
    from rsvlm.fusion.hybrid_prompt import HybridPromptFusion
    from rsvlm.prompts.spatial import SpatialAwarePromptEncoder

    parts = tiny_spex_components()
    width, stride = parts["fusion"].out_channels, parts["fusion"].out_reduction
    # the prompt canvas is the image's frame cut into the fused map's cells: one prompt token per visual token
    encoder = SpatialAwarePromptEncoder(
        out_dim=width, max_prompts=2, canvas_size=64, patch_size=stride, width=16, depth=1, heads=2
    )
    fusion = HybridPromptFusion(dim=width, heads=2, mlp_ratio=2.0, gate_init=0.5)
    torch.nn.init.normal_(fusion.blocks[0].cross_attn.out_proj.weight, std=0.2)  # as if trained
    model = VisionLanguageModel(**parts, prompt_encoder=encoder, prompt_fusion=fusion, stage="joint")
    assert "prompt_fusion" in model.stages["text"] and "prompt_fusion" in model.stages["joint"]
    batch = contract_batch(model.llm.formatter)

    def points(x: float):
        return prompt_batch([prompts_from_arguments(points=[[x, 10.5]]), []], image_size=(64, 64))

    first = model({**batch, "visual_prompts": points(5.5)})
    moved = model({**batch, "visual_prompts": points(50.5)})
    assert not torch.allclose(first["mask_logits"][0], moved["mask_logits"][0])  # the prompt reaches the mask
    assert torch.allclose(first["mask_logits"][1], moved["mask_logits"][1], atol=1e-6)  # the unprompted sample
    first["text_loss"].backward()
    assert encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ContractError, match="HybridPromptFusion expects width=8"):
        VisionLanguageModel(
            **tiny_spex_components(), prompt_encoder=encoder, prompt_fusion=HybridPromptFusion(dim=8, heads=2)
        )


def test_metric_average_reaches_every_metric_and_the_paper_recipe_averages_per_image():
    import yaml
    from conftest import REPO

    model = VisionLanguageModel(**tiny_spex_components(), metric_average="image")
    assert {m.average for split in model.metrics.values() for m in split.values()} == {"image"}
    recipe = yaml.safe_load((REPO / "recipes" / "spex.yaml").read_text())
    assert recipe["model"]["init_args"]["metric_average"] == "image"


def test_seeded_sampling_repeats_and_leaves_the_global_stream_alone(components, monkeypatch):
    from rsvlm.llm.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, top_p=1.0, seed=3)
    model = VisionLanguageModel(**components, generation=settings).eval()
    batch = contract_batch(model.llm.formatter)
    before = torch.random.get_rng_state()
    first = model.predict_masks(batch)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = model.predict_masks(batch)
    assert torch.equal(first["token_ids"], second["token_ids"]) and first["texts"] == second["texts"]
    assert torch.equal(first["mask_logits"], second["mask_logits"])
    # The seed is what makes it repeat: sampling by hand from a stream seeded with it gives the
    # same tokens, and the settings reach generate unchanged (no seed among them).
    seen = {}
    generate = model.llm.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return generate(*args, **kwargs)

    monkeypatch.setattr(model.llm, "generate", spy)
    torch.manual_seed(3)
    _, visual, _ = model.encode_image(batch["image"])
    by_hand = generate(batch["prompt_ids"], batch["prompt_attention_mask"], visual, **settings.generate_kwargs())
    assert torch.equal(by_hand.sequences, first["token_ids"])
    model.predict_masks(batch)
    assert seen["do_sample"] is True and seen["temperature"] == 1.5 and "seed" not in seen


def test_a_static_cache_setting_reaches_generate_and_predicts_the_same_masks(components, monkeypatch):
    from dataclasses import replace

    from rsvlm.llm.generation import GenerationSettings

    model = VisionLanguageModel(**components, generation=GenerationSettings(max_new_tokens=5)).eval()
    batch = contract_batch(model.llm.formatter)
    default = model.predict_masks(batch)
    seen = {}
    generate = model.llm.generate
    monkeypatch.setattr(model.llm, "generate", lambda *a, **kw: seen.update(kw) or generate(*a, **kw))
    model.generation = replace(model.generation, cache_implementation="static")
    static = model.predict_masks(batch)
    assert seen["cache_implementation"] == "static"
    assert torch.equal(static["token_ids"], default["token_ids"])
    torch.testing.assert_close(static["mask_logits"], default["mask_logits"], atol=1e-4, rtol=1e-4)


def test_settings_are_copied_so_a_default_is_never_shared(components):
    first = VisionLanguageModel(**components)
    first.generation.max_new_tokens = 3
    first.optim.weight_decay = 0.5
    second = VisionLanguageModel(**components)
    assert second.generation.max_new_tokens == 128 and second.optim.weight_decay == 1e-5


def test_metrics_are_kept_per_task(components):
    from rsvlm.training.metrics import BinarySegmentationMetrics

    model = VisionLanguageModel(**components, tasks=["land_cover", "water_body"])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    mask = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    model._update_metrics(
        "val", {"mask_logits": logits}, {"mask": mask, "task": ["water_body", "land_cover", "water_body"]}
    )
    for task, rows in (("land_cover", [1]), ("water_body", [0, 2])):
        reference = BinarySegmentationMetrics()
        reference.update(logits[rows], mask[rows])
        got = model.metrics["val"][task].compute()
        assert all(torch.equal(got[k], v) for k, v in reference.compute().items()), task
    with pytest.raises(KeyError, match="'roads'"):
        model._update_metrics("val", {"mask_logits": logits}, {"mask": mask, "task": ["roads"] * 3})


@pytest.mark.parametrize("with_generation", [True, False])
def test_validation_scores_generated_masks_and_keeps_teacher_forced_apart(components, with_generation):
    """``val/*`` is scored on masks decoded from generated text (the reference response is
    written from the true mask); the teacher-forced masks go to ``val_teacher_forced/*``."""
    from rsvlm.training.metrics import BinarySegmentationMetrics

    model = VisionLanguageModel(
        **components, stage="joint", log_images=0, validate_with_generation=with_generation
    ).eval()
    model.generation.max_new_tokens = 6
    logged: dict[str, torch.Tensor] = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)  # no trainer in a unit test
    batch = contract_batch(model.llm.formatter)
    with torch.no_grad():
        model.validation_step(batch, 0)
        generated = model.predict_masks(batch)["mask_logits"]
        teacher_forced = model(batch, with_mask=True)["mask_logits"]
    assert set(logged) == {"val_teacher_forced/loss"}
    # different binary masks, else the test could not tell the two protocols apart
    assert ((generated > 0) != (teacher_forced > 0)).any()
    expected = {"val": generated if with_generation else teacher_forced, "val_teacher_forced": teacher_forced}
    for split, logits in expected.items():
        if split == "val_teacher_forced" and not with_generation:
            assert not model.metrics[split]["land_cover"].update_called
            continue
        reference = BinarySegmentationMetrics()
        reference.update(logits, batch["mask"], batch.get("valid"))
        got = model.metrics[split]["land_cover"].compute()
        assert all(torch.equal(got[k], v) for k, v in reference.compute().items()), split

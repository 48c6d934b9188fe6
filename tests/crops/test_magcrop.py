"""MagCrop against compositions written out in the test: the image level is ``F.interpolate`` down
and back up; region and pixel levels are degraded images with crops pasted by slicing; online
boxes are ``adaptive_box`` of a ``GradAttentionMap`` computed here on the tiny VLM's own tokens."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import contract_batch, tiny_spex_components

from rsvlm.contracts import ContractError
from rsvlm.crops.attention import GradAttentionMap
from rsvlm.crops.box_search import adaptive_box, crop_side
from rsvlm.crops.magcrop import MagCrop
from rsvlm.crops.tmra import compose_pixel, compose_region
from rsvlm.llm.generation import GenerationSettings
from rsvlm.models.vlm import VisionLanguageModel

BANDS, SIZE = 3, 64


def _down_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``C×H×W`` → antialiased bilinear down to ``size`` → bilinear back to ``H×W``."""
    small = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]


def _degrade(x: torch.Tensor, factor: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    return _down_up(x, (height // factor, width // factor))


def _region(x: torch.Tensor, b1, factor: int = 4) -> torch.Tensor:
    x1, y1, x2, y2 = b1
    out = _degrade(x, factor).clone()
    out[:, y1:y2, x1:x2] = x[:, y1:y2, x1:x2]
    return out


def _pixel(x: torch.Tensor, b1, b2, factor: int = 4) -> torch.Tensor:
    x1, y1, x2, y2 = b1
    u1, v1, u2, v2 = b2
    out = _degrade(_degrade(x, factor), factor).clone()
    out[:, y1:y2, x1:x2] = _degrade(x[:, y1:y2, x1:x2], factor)
    out[:, y1 + v1 : y1 + v2, x1 + u1 : x1 + u2] = x[:, y1 + v1 : y1 + v2, x1 + u1 : x1 + u2]
    return out


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, BANDS, 80, 60)


def test_image_level_is_the_small_image_brought_back_to_the_input_size(image):
    out = MagCrop(image_level_size=16, boxes="given")(image, {"granularity": ["image", 0, "image"]})
    assert out.shape == image.shape
    want = torch.stack([_down_up(x, (16, 16)) for x in image])
    torch.testing.assert_close(out, want)
    default = MagCrop(boxes="given")(image[:1], {"granularity": "image"})  # 100×100: up from 80×60, then down
    torch.testing.assert_close(default[0], _down_up(image[0], (100, 100)))


@pytest.mark.parametrize("factor", [4, 2])
def test_region_and_pixel_levels_with_given_boxes_equal_the_pastes_by_hand(image, factor):
    b1, b2 = (8, 10, 48, 66), (4, 20, 24, 44)
    given = [[b1], [torch.tensor(b1), b2], torch.tensor([b1, b2])]  # lists of boxes or a K×4 tensor
    batch = {"granularity": ["region", "pixel", "pixel"], "magcrop_boxes": given}
    out = MagCrop(boxes="given", degrade_factor=factor)(image, batch)
    torch.testing.assert_close(out[0], _region(image[0], b1, factor))
    torch.testing.assert_close(out[1], _pixel(image[1], b1, b2, factor))
    torch.testing.assert_close(out[2], _pixel(image[2], b1, b2, factor))
    if factor == 4:  # and the TMRA functions of the spec
        torch.testing.assert_close(out[0], compose_region(image[0], b1))
        torch.testing.assert_close(out[1], compose_pixel(image[1], b1, b2))


def test_skipped_tasks_and_disabled_crops_return_the_input(image):
    crop = MagCrop(boxes="given")
    assert crop(image, {"task": ["gcg"] * 3}) is image  # no granularity needed when nothing is cropped
    assert MagCrop(enabled=False)(image, None) is image
    batch = {
        "task": ["gcg", "refseg", "gcg"],
        "granularity": ["region"] * 3,
        "magcrop_boxes": [None, [(0, 0, 30, 30)], None],
    }
    out = crop(image, batch)
    torch.testing.assert_close(out[[0, 2]], image[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(out[1], _region(image[1], (0, 0, 30, 30)))
    other = MagCrop(boxes="given", skip_tasks=["caption"])(image, {"task": "caption"})
    assert other is image


def test_a_mixed_batch_equals_its_samples_one_at_a_time(image):
    crop = MagCrop(boxes="given", image_level_size=20)
    boxes = [None, [(5, 5, 45, 45)], [(10, 12, 50, 72), (0, 30, 18, 60)]]
    out = crop(image, {"granularity": torch.tensor([0, 1, 2]), "magcrop_boxes": boxes})
    for i, level in enumerate(["image", "region", "pixel"]):
        one = crop(image[i : i + 1], {"granularity": [level], "magcrop_boxes": [boxes[i]]})
        torch.testing.assert_close(out[i : i + 1], one, rtol=0, atol=0)
    assert not torch.equal(out[0], image[0]) and not torch.equal(out[2], image[2])


def test_errors_name_the_batch_field(image):
    crop = MagCrop(boxes="given")
    with pytest.raises(ContractError, match="batch field 'granularity'"):
        crop(image, {"task": ["refseg"] * 3})
    with pytest.raises(ContractError, match="batch field 'level'"):
        MagCrop(granularity_field="level")(image, None)
    with pytest.raises(ContractError, match=r"'granularity'\[1\] is 'scene'"):
        crop(image, {"granularity": ["image", "scene", "image"]})
    with pytest.raises(ContractError, match="'granularity' has 2 entries for 3 images"):
        crop(image, {"granularity": ["image", "image"]})
    with pytest.raises(ContractError, match="batch field 'magcrop_boxes'"):
        crop(image, {"granularity": "region"})
    with pytest.raises(ContractError, match=r"'magcrop_boxes'\[0\] has 1 box\(es\); pixel level needs 2"):
        crop(image, {"granularity": "pixel", "magcrop_boxes": [[(0, 0, 9, 9)]] * 3})
    with pytest.raises(ContractError, match=r"'magcrop_boxes'\[0\] holds a box without 4 numbers"):
        crop(image, {"granularity": "region", "magcrop_boxes": [[(0, 0, 9)]] * 3})
    with pytest.raises(RuntimeError, match="bound to no model"):
        MagCrop()(
            image, {"granularity": "region", "prompt_ids": torch.ones(3, 2), "prompt_attention_mask": torch.ones(3, 2)}
        )
    with pytest.raises(ContractError, match="batch field 'prompt_attention_mask'"):
        MagCrop()(image, {"granularity": "region", "prompt_ids": torch.ones(3, 2)})
    for bad in ({"bbox_mode": "pixels"}, {"boxes": "cache"}, {"ratios": []}):
        with pytest.raises(ValueError, match="MagCrop"):
            MagCrop(**bad)


# ---------------------------------------------------------------- online: the VLM's own attention
@pytest.fixture(scope="module")
def vlm() -> VisionLanguageModel:
    parts = tiny_spex_components(bands=BANDS)
    model = VisionLanguageModel(**parts, cropper=MagCrop(), generation=GenerationSettings(max_new_tokens=3))
    return model.eval()


def _heat(model: VisionLanguageModel, images: torch.Tensor, batch: dict, rows: list[int]) -> torch.Tensor:
    """The PSC map computed here: encoder → fusion → projector, then Eq. 4 on the LLM."""
    with torch.no_grad():
        fused = model.fusion(model.encoder(images))
        visual = model.projector(fused.tokens)
    grid = tuple(fused.map.shape[-2:])  # MSAM pools no tokens: one per map cell
    ids, mask = batch["prompt_ids"][rows], batch["prompt_attention_mask"][rows]
    return GradAttentionMap()(model.llm, ids, mask, visual, grid)


def test_online_boxes_are_the_box_search_of_the_attention_map(vlm):
    batch = contract_batch(vlm.llm.formatter, bands=BANDS, size=SIZE, batch=2)
    batch["granularity"] = ["region", "pixel"]
    image = batch["image"]
    heat = _heat(vlm, image, batch, [0, 1])
    b1 = [adaptive_box(h.numpy(), (SIZE, SIZE), crop_side(SIZE, SIZE)) for h in heat]
    x1, y1, x2, y2 = b1[1]
    first = image[1, :, y1:y2, x1:x2]
    view = F.interpolate(first[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    heat2 = _heat(vlm, view, batch, [1])[0]
    b2 = adaptive_box(heat2.numpy(), (x2 - x1, y2 - y1), crop_side(x2 - x1, y2 - y1))

    found = vlm.cropper.find_boxes(image, batch)
    assert found == [[b1[0]], [b1[1], b2]]
    with torch.inference_mode():  # Lightning's default at test / predict: the pass leaves it itself
        assert vlm.cropper.find_boxes(image.clone(), batch) == found
    assert b1[1] != (0, 0, SIZE, SIZE) and (b2[2] - b2[0]) < (x2 - x1)  # real crops, each inside its parent
    out = vlm.cropper(image, batch)
    torch.testing.assert_close(out[0], _region(image[0], b1[0]))
    torch.testing.assert_close(out[1], _pixel(image[1], b1[1], b2))
    assert all(p.grad is None for p in vlm.parameters())  # only the attention was differentiated


def test_magcrop_adds_no_parameters_or_state_to_the_vlm():
    parts = tiny_spex_components(bands=BANDS)
    crop = MagCrop()
    assert list(crop.parameters()) == [] and crop.state_dict() == {}
    plain = VisionLanguageModel(**parts)
    keys, count = set(plain.state_dict()), sum(p.numel() for p in plain.parameters())
    with_crop = VisionLanguageModel(**parts, cropper=crop)
    assert set(with_crop.state_dict()) == keys
    assert sum(p.numel() for p in with_crop.parameters()) == count
    assert crop.bound_model() is with_crop
    with pytest.raises(RuntimeError, match="bound to no model"):
        copy.deepcopy(crop).bound_model()  # a copy drops the weak reference; its owner binds again
    assert pickle.loads(pickle.dumps(crop)).boxes == "online"


def test_the_vlm_runs_forward_and_predict_masks_through_magcrop(vlm):
    batch = contract_batch(vlm.llm.formatter, bands=BANDS, size=SIZE, batch=2)
    batch["granularity"] = torch.tensor([2, 1])
    seen: list[torch.Tensor] = []
    hook = vlm.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        with torch.inference_mode(False):
            out = vlm(batch, with_mask=True)
            predicted = vlm.predict_masks(batch)
    finally:
        hook.remove()
    assert torch.isfinite(out["text_loss"]) and out["mask_logits"].shape == (2, 1, SIZE, SIZE)
    assert predicted["mask_logits"].shape == (2, 1, SIZE, SIZE) and len(predicted["texts"]) == 2
    # per call: PSC on the images, PSC on the pixel sample's crop, then the encoder's own input
    assert len(seen) == 6
    torch.testing.assert_close(seen[2], vlm.cropper(batch["image"], batch))
    assert not torch.equal(seen[2], batch["image"])
    assert not vlm.training and all(not m.training for m in vlm.modules())  # modes restored


def test_the_attention_pass_runs_in_eval_mode_and_restores_every_mode(vlm):
    batch = contract_batch(vlm.llm.formatter, bands=BANDS, size=SIZE, batch=2)
    batch["granularity"] = ["pixel", "image"]
    vlm.train()
    try:
        before = [m.training for m in vlm.modules()]
        assert vlm.encoder.training  # the encoder trains in the default stage
        modes: list[bool] = []
        hook = vlm.encoder.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        try:
            vlm.cropper(batch["image"], batch)
        finally:
            hook.remove()
        assert modes == [False, False]  # two PSC passes, no dropout in either
        assert [m.training for m in vlm.modules()] == before
    finally:
        vlm.eval()


def test_without_gold_granularity_the_classifier_routes_each_sample(image):
    from catalogue import tiny_granularity_classifier

    torch.manual_seed(3)
    classifier = tiny_granularity_classifier().eval()  # predictions without the head's dropout
    crop = MagCrop(boxes="given", image_level_size=16, classifier=classifier)
    queries = ["What is this scene?", "Segment the small boat by the pier.", "Is there a ship?"]
    boxes = [[(2, 2, 30, 30), (4, 4, 12, 12)]] * 3
    routed = crop(image, {"instruction": queries, "magcrop_boxes": boxes})
    gold = crop(image, {"granularity": classifier.predict(queries), "magcrop_boxes": boxes})
    assert torch.equal(routed, gold)
    assert not any(p.requires_grad for p in crop.classifier.parameters())  # trained alone, frozen here
    assert crop.parameter_free is False and MagCrop().parameter_free is True


def test_classifier_routing_overrides_gold_outside_training_only(image):
    """route='classifier': validation and test route by the classifier's prediction even where the
    batch has a gold label (its errors then count); training routes by the gold label."""
    from catalogue import tiny_granularity_classifier

    torch.manual_seed(3)
    classifier = tiny_granularity_classifier().eval()  # predictions without the head's dropout
    crop = MagCrop(boxes="given", image_level_size=16, classifier=classifier, route="classifier").eval()
    queries = ["What is this scene?", "Segment the small boat by the pier.", "Is there a ship?"]
    predicted = classifier.predict(queries)
    wrong = [{"image": "pixel", "region": "image", "pixel": "region"}[p] for p in predicted]
    boxes = [[(2, 2, 30, 30), (4, 4, 12, 12)]] * 3
    batch = {"instruction": queries, "granularity": wrong, "magcrop_boxes": boxes}
    expected_eval = crop(image, {"granularity": predicted, "magcrop_boxes": boxes})
    expected_train = crop(image, {"granularity": wrong, "magcrop_boxes": boxes})
    assert torch.equal(crop(image, batch), expected_eval)
    crop.training = True  # the flag alone (train() would also switch the classifier's dropout on)
    assert torch.equal(crop(image, batch), expected_train)
    crop.training = False
    assert crop.routing(batch) == predicted


def test_classifier_loss_is_cross_entropy_on_the_gold_granularity():
    from catalogue import tiny_granularity_classifier

    torch.manual_seed(4)
    crop = MagCrop(boxes="given", classifier=tiny_granularity_classifier(), train_classifier=True).eval()  # no dropout
    queries = ["What is this scene?", "Segment the small boat by the pier.", "Is there a ship?"]
    gold = ["image", "pixel", 1]  # labels or their indices, as the batch field allows
    loss = crop.classifier_loss({"instruction": queries, "granularity": gold})
    logits = crop.classifier(queries).detach()
    reference = -torch.log_softmax(logits, dim=-1)[torch.arange(3), torch.tensor([0, 2, 1])].mean()
    torch.testing.assert_close(loss.detach(), reference)
    loss.backward()
    head = [p for p in crop.classifier.head.parameters()]
    assert all(p.requires_grad and p.grad is not None for p in head)
    assert not any(p.requires_grad for p in crop.classifier.encoder.parameters())  # BERT stays frozen
    assert MagCrop(boxes="given", classifier=tiny_granularity_classifier()).classifier_loss({}) is None
    with pytest.raises(ValueError, match="need classifier="):
        MagCrop(route="classifier")

"""Non-finite logits outside training are an error naming the samples, not silent background."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import contract_batch, tiny_spex_components

from rsvlm.models.output_checks import NonFiniteOutputError, check_finite_logits, check_finite_masks
from rsvlm.models.vlm import VisionLanguageModel


def _batch(n: int) -> dict:
    meta = [{"image": f"/data/scene_{i}.tif", "window": [0, 64 * i, 64, 64], "flip": "none"} for i in range(n)]
    meta[2]["flip"] = "horizontal"
    return {"meta": meta}


def test_finite_logits_pass_through_unchanged():
    logits = torch.randn(3, 1, 8, 8)
    decoded = {"mask_logits": logits}
    assert check_finite_masks(decoded, _batch(3)) is decoded
    assert check_finite_logits(torch.zeros(0, 1, 8, 8), {}).numel() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_row_names_its_file_window_and_flip_and_counts_the_values(bad):
    logits = torch.randn(4, 1, 8, 8)
    logits[2, 0, :3, :5] = bad
    logits[3, 0, 7, 7] = bad
    expected = int((~torch.isfinite(logits)).sum())  # 16, counted here the plain way
    with pytest.raises(NonFiniteOutputError) as caught:
        check_finite_masks({"mask_logits": logits}, _batch(4))
    message = str(caught.value)
    assert f"at {expected} of {logits.numel()} values" in message
    assert (
        "/data/scene_2.tif window [0, 128, 64, 64] flip horizontal; /data/scene_3.tif window [0, 192, 64, 64]"
        in message
    )
    assert "scene_0" not in message and "scene_1" not in message
    assert "\n" not in message


def test_target_rows_name_the_sample_they_belong_to():
    logits = torch.zeros(3, 1, 4, 4)
    logits[2, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"\(/data/scene_3\.tif window \[0, 192, 64, 64\]\)"):
        check_finite_masks({"mask_logits": logits, "scored_index": torch.tensor([0, 0, 3])}, _batch(4))


def test_a_batch_without_files_names_the_sample_index():
    logits = torch.zeros(2, 1, 4, 4)
    logits[1] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"\(sample 1 of the batch\)"):
        check_finite_logits(logits, {"meta": [{}, {}]}, what="class logits")


@pytest.fixture(scope="module")
def components():
    return tiny_spex_components()


@contextmanager
def _poisoned_decoder(model: VisionLanguageModel, sample: int) -> Iterator[None]:
    """Sample ``sample``'s mask logits are NaN in every pass through the decoder (the components
    are shared between tests, so the hook goes when the block ends)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[sample] = float("nan")
        return output

    handle = model.decoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_predict_masks_refuses_nan_logits_and_names_the_sample(components):
    model = VisionLanguageModel(**components).eval()
    model.generation.max_new_tokens = 4
    batch = contract_batch(model.llm.formatter)
    batch["meta"] = [{"image": "first.tif"}, {"image": "second.tif"}]
    assert torch.isfinite(model.predict_masks(batch)["mask_logits"]).all()
    with (
        _poisoned_decoder(model, sample=1),
        pytest.raises(
            NonFiniteOutputError, match=r"mask logits are NaN or infinite at 4096 of 8192 values \(second\.tif\)"
        ),
    ):
        model.predict_masks(batch)


@pytest.mark.parametrize("with_generation", [True, False])
def test_validation_refuses_nan_logits_before_scoring_them(components, with_generation):
    model = VisionLanguageModel(**components, stage="joint", log_images=0, validate_with_generation=with_generation)
    model = model.eval()
    model.generation.max_new_tokens = 4
    model.log = lambda *args, **kw: None  # no trainer in a unit test
    batch = contract_batch(model.llm.formatter)
    with (
        _poisoned_decoder(model, sample=0),
        torch.no_grad(),
        pytest.raises(NonFiniteOutputError, match=r"\(sample 0 of the batch\)"),
    ):
        model.validation_step(batch, 0)
    assert not model.metrics["val"]["land_cover"].update_called

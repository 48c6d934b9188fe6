"""OverlayPrompts: ViP-LLaVA's marks drawn onto the image, against PIL's ``ImageDraw`` (ellipse,
rectangle, line, mask paste) on an RGBA layer and ``Image.alpha_composite``, drawn here independently."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rsvlm.data.overlaid import OverlaidSamples
from rsvlm.data.visual_prompts import VisualPrompt, prompt_batch
from rsvlm.prompts.geometry import PALETTE
from rsvlm.prompts.overlay import OverlayPrompts

H, W = 40, 56
RED, LIME, BLUE = PALETTE[:3]
RADIUS, WIDTH, ALPHA, MASK_ALPHA = 3, 2, 170, 90


def picture(bands: int = 3, seed: int = 0) -> np.ndarray:
    """``bands×H×W`` uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, size=(bands, H, W), dtype=np.uint8)


def blob() -> np.ndarray:
    """``H×W`` bool: an irregular free-form region."""
    rows, cols = np.mgrid[0:H, 0:W]
    return ((rows - 28) ** 2 / 60 + (cols - 40) ** 2 / 120 <= 1) | ((rows > 30) & (cols > 46))


POINT = VisualPrompt("point", vertices=[12.3, 20.7])  # the pixel (row 20, column 12)
BOX = VisualPrompt("box", box=(5.0, 6.0, 30.0, 25.0))  # columns 5..29, rows 6..24
MASK = VisualPrompt("mask", mask=blob())
STROKE = VisualPrompt("scribble", vertices=[[2.5, 35.5], [20.5, 30.5], [50.5, 3.5]])


def pil_reference(rgb: np.ndarray, prompts: list[VisualPrompt], width: int = WIDTH) -> np.ndarray:
    """``H×W×3`` uint8: ``prompts`` drawn as ViP-LLaVA draws them, slot k in ``PALETTE[k]``."""
    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)  # an RGBA layer: ImageDraw replaces its pixels, later slots on top
    for k, p in enumerate(prompts):
        colour = PALETTE[k % len(PALETTE)]
        if p.kind == "point":
            j, i = (int(np.floor(v)) for v in p.vertices[0])
            draw.ellipse([j - RADIUS, i - RADIUS, j + RADIUS, i + RADIUS], fill=(*colour, ALPHA))
        elif p.kind == "box":  # integer edges: the pixels x0..x1-1, y0..y1-1
            x0, y0, x1, y1 = (int(v) for v in p.box)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(*colour, ALPHA), width=width)
        elif p.kind == "scribble":  # a 1-px stroke through the pixels holding the vertices
            draw.line([(int(np.floor(x)), int(np.floor(y))) for x, y in p.vertices], fill=(*colour, ALPHA), width=1)
        else:
            layer.paste((*colour, MASK_ALPHA), mask=Image.fromarray(p.mask.astype(np.uint8) * 255))
    base = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGBA")
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))


def overlay(**kwargs) -> OverlayPrompts:
    settings = dict(alpha=ALPHA, mask_alpha=MASK_ALPHA, point_radius=RADIUS, line_width=WIDTH)
    return OverlayPrompts(**{**settings, **kwargs})


def drawn(image: np.ndarray, samples: list[list[VisualPrompt]], **kwargs) -> np.ndarray:
    """``B×C×H×W`` of :meth:`OverlayPrompts.draw` on ``image`` (``B×C×H×W``)."""
    batch = prompt_batch(samples, image_size=(H, W))
    return overlay(**kwargs).draw(torch.from_numpy(image), batch).numpy()


@pytest.mark.parametrize(
    "prompts",
    [[POINT], [BOX], [MASK], [POINT, BOX, MASK], [MASK, BOX, POINT, STROKE]],
    ids=["point", "box", "mask", "three slots", "overlapping slots"],
)
def test_marks_equal_pil_drawing_and_alpha_composite(prompts):
    image = picture()
    width = 1 if any(p.kind == "scribble" for p in prompts) else WIDTH  # a 1-px stroke is PIL's line
    out = drawn(image[None], [prompts], line_width=width)[0]
    expected = pil_reference(image.transpose(1, 2, 0), prompts, width)
    assert out.transpose(1, 2, 0).tobytes() == expected.tobytes()
    assert (out != image).any()


def test_a_point_is_pils_disc_around_its_pixel():
    image = np.zeros((1, 3, H, W), np.uint8)
    out = drawn(image, [[VisualPrompt("point", vertices=[30.9, 10.0])]], alpha=255, point_radius=2)[0]
    marked = np.argwhere(out[0] > 0)
    assert (marked.min(axis=0).tolist(), marked.max(axis=0).tolist()) == (
        [8, 28],
        [12, 32],
    )  # 2r+1 pixels around (10, 30)
    assert (out[:, 10, 30] == RED).all()


def test_slots_beyond_a_samples_count_draw_nothing():
    images = np.stack([picture(seed=s) for s in range(3)])
    out = drawn(images, [[POINT, BOX, MASK], [BOX], []])
    for b, prompts in enumerate([[POINT, BOX, MASK], [BOX]]):
        expected = pil_reference(images[b].transpose(1, 2, 0), prompts)
        assert out[b].transpose(1, 2, 0).tobytes() == expected.tobytes()
    np.testing.assert_array_equal(out[2], images[2])  # no prompts: unchanged
    alone = drawn(images[1:2], [[BOX]])[0]
    np.testing.assert_array_equal(out[1], alone)  # empty slots 1, 2 of sample 1 add nothing


def test_only_the_rgb_bands_of_a_multiband_image_are_drawn():
    image = picture(bands=6)
    rgb_bands = (3, 1, 0)  # e.g. red, green, blue of a blue, green, ?, red, nir, swir stack
    out = drawn(image[None], [[POINT, BOX, MASK]], rgb_bands=rgb_bands)[0]
    expected = pil_reference(image[list(rgb_bands)].transpose(1, 2, 0), [POINT, BOX, MASK])
    assert out[list(rgb_bands)].transpose(1, 2, 0).tobytes() == expected.tobytes()
    for band in (2, 4, 5):
        np.testing.assert_array_equal(out[band], image[band])
    with pytest.raises(ValueError, match="rgb_bands.*has 6 bands"):
        drawn(image[None], [[POINT]], rgb_bands=(0, 1, 6))


def test_float_images_raw_and_normalised_draw_the_same_marks():
    image = picture(bands=4)
    prompts = [[POINT, BOX, MASK]]
    exact = drawn(image[None], prompts, rgb_bands=(2, 1, 0))[0].astype(np.float64)
    raw = drawn(image[None].astype(np.float32), prompts, rgb_bands=(2, 1, 0), white=255.0)[0]
    assert raw.dtype == np.float32
    assert np.abs(raw - exact).max() <= 0.5 + 1e-3  # PIL rounds the same blend to integers
    np.testing.assert_array_equal(raw[3], image[3])
    # pixels / 255, normalised per band: drawing with the colours in normalised units = normalising the drawing
    mean, std = np.array([0.3, 0.4, 0.5, 0.2]), np.array([0.2, 0.25, 0.3, 0.1])
    scaled = image.astype(np.float32) / 255
    normalised = ((scaled - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    out = drawn(normalised[None], prompts, rgb_bands=(2, 1, 0), mean=mean.tolist(), std=std.tolist())[0]
    reference = (drawn(scaled[None], prompts, rgb_bands=(2, 1, 0))[0] - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="uint8 image holds raw pixels"):
        drawn(image[None], prompts, mean=mean.tolist(), std=std.tolist())


def test_data_side_transform_draws_each_samples_prompts():
    image = picture()
    samples = [
        {"image": torch.from_numpy(image), "visual_prompts": [BOX, POINT], "task": "roc"},
        {"image": torch.from_numpy(image), "visual_prompts": [], "task": "captioning"},
    ]
    dataset = OverlaidSamples(samples, overlay())
    assert len(dataset) == 2
    first, second = dataset[0], dataset[1]
    expected = pil_reference(image.transpose(1, 2, 0), [BOX, POINT])
    assert first["image"].numpy().transpose(1, 2, 0).tobytes() == expected.tobytes()
    assert first["visual_prompts"] == [BOX, POINT] and first["task"] == "roc"
    np.testing.assert_array_equal(samples[0]["image"].numpy(), image)  # the base sample is not changed
    assert torch.equal(second["image"], samples[1]["image"])
    copied = pickle.loads(pickle.dumps(dataset))  # DataLoader workers
    assert torch.equal(copied[0]["image"], first["image"]) and copied.overlay.alpha == ALPHA


def test_instruct_samples_drawn_after_normalisation_equal_drawn_raw_then_normalised(tmp_path):
    import rasterio

    from rsvlm.data.multitask.predict import WholeImagePredictDataset

    path = tmp_path / "wide.tif"
    grid = dict(crs="EPSG:32633", transform=rasterio.transform.from_origin(400000.0, 4500000.0, 1.0, 1.0))
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8", **grid) as dst:
        dst.write(picture())
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]

    def dataset(**stats) -> WholeImagePredictDataset:  # 40×56 → the centre-padded 64² square, prompts moved with it
        prompts = [BOX, POINT, MASK]
        return WholeImagePredictDataset(
            [path], "What is marked?", "region", ["red", "green", "blue"], 255.0, 64, **stats, prompts=prompts
        )

    raw, normalised = dataset(), dataset(mean=mean, std=std)
    assert [p.kind for p in normalised[0]["visual_prompts"]] == ["box", "point", "mask"]
    drawn_raw = OverlaidSamples(raw, overlay(white=1.0))[0]["image"]
    drawn = OverlaidSamples(normalised, overlay(white=1.0, mean=mean, std=std))[0]
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    valid = drawn["valid"].expand(3, -1, -1)  # the pad is 0 in either unit (not drawn on here)
    assert not torch.equal(drawn["image"], normalised[0]["image"])
    torch.testing.assert_close(drawn["image"][valid], ((drawn_raw - m) / s)[valid], rtol=0, atol=1e-5)
    assert (
        drawn["meta"]["image"] == str(path) and normalised.outputs() == OverlaidSamples(normalised, overlay()).outputs()
    )


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="rgb_bands: needs 3 distinct"):
        OverlayPrompts(rgb_bands=(0, 0, 1))
    with pytest.raises(ValueError, match="alpha: must be in 0..255"):
        OverlayPrompts(alpha=300)
    with pytest.raises(ValueError, match="mean, std: give both"):
        OverlayPrompts(mean=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="colours: needs RGB triples"):
        OverlayPrompts(colours=[(255, 0)])

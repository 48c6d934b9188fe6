"""Visual prompts on the data side: parsing, JSON, batching, and geometry checked against the image
path (rasterise → transform the raster with the image's own ops vs transform → rasterise)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from rsvlm.data.prompt_synthesis import jitter_box, synthesize_point, synthesize_scribble
from rsvlm.data.transforms import random_dihedral, resize_pad
from rsvlm.data.visual_prompts import (
    VisualPrompt,
    dihedral_prompts,
    prompt_batch,
    prompts_from_arguments,
    prompts_from_json,
    prompts_to_json,
    resize_pad_prompts,
    window_prompts,
)
from rsvlm.prompts.geometry import rasterize


def ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w] + 0.5
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def marks(prompts: list[VisualPrompt], size: tuple[int, int], radius: int, width: int) -> torch.Tensor:
    """Identity channels ``M×H×W`` of one sample's prompts."""
    return rasterize(prompt_batch([prompts], size), point_radius=radius, line_width=width)[0, : len(prompts)]


def scene(h: int, w: int) -> list[VisualPrompt]:
    """A point, a box, a scribble and a mask spread over an ``h×w`` image (sizes ∝ the image)."""
    return [
        VisualPrompt("point", vertices=[0.3 * w + 0.17, 0.25 * h + 0.31]),
        VisualPrompt("box", box=(0.1 * w, 0.5 * h, 0.45 * w, 0.9 * h)),
        VisualPrompt("scribble", vertices=[[0.1 * w, 0.1 * h], [0.8 * w, 0.2 * h], [0.9 * w, 0.8 * h]]),
        VisualPrompt("mask", mask=ellipse(h, w, 0.65 * w, 0.55 * h, 0.2 * w, 0.25 * h)),
    ]


# --- parsing -------------------------------------------------------------------------------------


def test_arguments_in_order_points_boxes_scribbles_masks():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 3:6] = 1
    prompts = prompts_from_arguments(
        points=[[1, 2], [3, 4, 0]], boxes=[[0, 0, 5, 6]], scribbles=[[[0, 0], [2, 2], [4, 0]]], masks=[mask]
    )
    assert [p.kind for p in prompts] == ["point", "point", "box", "scribble", "mask"]
    assert [p.label for p in prompts] == [1, 0, 1, 1, 1]
    np.testing.assert_array_equal(prompts[1].vertices, [[3, 4]])
    assert prompts[2].box == (0.0, 0.0, 5.0, 6.0) and prompts[3].vertices.shape == (3, 2)
    assert prompts[4].mask.dtype == bool and prompts[4].bounds == (3.0, 2.0, 6.0, 4.0)
    assert prompts_from_arguments() == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"boxes": [[0, 0, 5, 5], [3, 4]]}, "predict: boxes[1] must be [x0, y0, x1, y1], got [3, 4]"),
        ({"boxes": [[5, 0, 1, 5]]}, "predict: boxes[0]: box: needs x0 <= x1 and y0 <= y1, got [5.0, 0.0, 1.0, 5.0]"),
        ({"points": [[1, 2, 3, 4]]}, "predict: points[0] must be [x, y] or [x, y, label], got [1, 2, 3, 4]"),
        ({"points": [[1, 2, 7]]}, "predict: points[0]: label: must be 0 (background) or 1 (foreground), got 7"),
        ({"points": [[1, 2, 0.5]]}, "predict: points[0]: label: must be 0 (background) or 1 (foreground), got 0.5"),
        ({"points": [[float("nan"), 2]]}, "predict: points[0]: vertices: coordinates must be finite, got [[nan, 2.0]]"),
        (
            {"scribbles": [[[1, 2]]]},
            "predict: scribbles[0] must be [[x, y], ...] with at least 2 vertices, got [[1, 2]]",
        ),
        ({"scribbles": [[[1, 2], [3]]]}, "predict: scribbles[0][1] must be [x, y], got [3]"),
        ({"masks": [np.ones((2, 2, 2))]}, "predict: masks[0]: mask: must be 2-D (H×W), got shape (2, 2, 2)"),
        ({"masks": [np.zeros((4, 4))]}, "predict: masks[0]: mask: has no foreground pixel"),
    ],
)
def test_argument_errors_are_one_line_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError) as error:
        prompts_from_arguments(**kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"kind": "polygon", "vertices": [[0, 0]]}, "kind"),
        ({"kind": "point", "vertices": [[0, 0], [1, 1]]}, "vertices"),
        ({"kind": "point", "box": (0, 0, 1, 1)}, "vertices"),
        ({"kind": "box", "box": (0, 0, 1, 1), "vertices": [[0, 0]]}, "vertices"),
        ({"kind": "box", "box": (0, 0, 1, float("inf"))}, "box"),
        ({"kind": "scribble", "vertices": [[0, 0]]}, "vertices"),
        ({"kind": "mask", "mask": np.ones(5)}, "mask"),
    ],
)
def test_visual_prompt_validation_names_the_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field}: [^\n]*$"):
        VisualPrompt(**fields)


def test_json_round_trip_and_coco_rle():
    mask = ellipse(20, 30, 12, 9, 6, 4)
    prompts = [
        VisualPrompt("point", vertices=[1.5, 2.25], label=0),
        VisualPrompt("box", box=(1, 2, 3.5, 4)),
        VisualPrompt("scribble", vertices=[[0, 0], [5, 5], [9.5, 1]]),
        VisualPrompt("mask", mask=mask),
    ]
    items = json.loads(json.dumps(prompts_to_json(prompts)))  # plain JSON types only
    assert items[0] == {"type": "point", "xy": [1.5, 2.25], "label": 0}
    assert items[1] == {"type": "box", "box": [1.0, 2.0, 3.5, 4.0], "label": 1}
    np.testing.assert_array_equal(coco_mask.decode(items[3]["rle"]).astype(bool), mask)
    back = prompts_from_json(items, "records.json")
    assert prompts_to_json(back) == items
    for a, b in zip(prompts, back):
        assert (a.kind, a.box, a.label) == (b.kind, b.box, b.label)
    np.testing.assert_array_equal(back[2].vertices, prompts[2].vertices)
    np.testing.assert_array_equal(back[3].mask, mask)
    # Uncompressed RLE: column-major run lengths starting with a background run, computed by hand.
    flat = mask.T.ravel()
    changes = np.flatnonzero(np.diff(flat.astype(int))) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    counts = counts if not flat[0] else [0, *counts]
    raw = prompts_from_json([{"type": "mask", "rle": {"size": [20, 30], "counts": counts}}], "raw")
    np.testing.assert_array_equal(raw[0].mask, mask)


@pytest.mark.parametrize(
    "items,message",
    [
        ([{"type": "box", "box": [0, 0, 1, 1]}, {"type": "blob"}], "rec 7[1]: needs 'type' one of point, box"),
        ([{"type": "box", "bbox": [0, 0, 1, 1]}], "rec 7[0]: a box has keys type, box, label; got ['bbox', 'type']"),
        ([{"type": "point", "xy": [1]}], "rec 7[0]: xy must be [x, y], got [1]"),
        ([{"type": "box", "box": [4, 0, 1, 1]}], "rec 7[0]: box: needs x0 <= x1"),
        ([{"type": "point", "xy": [1, 1], "label": 3}], "rec 7[0]: label: must be 0"),
        ([{"type": "mask", "rle": {"size": [2, 2], "counts": [1, 2]}}], "rec 7[0]: rle counts sum to 3, not H·W = 4"),
        ([{"type": "mask", "rle": {"size": [2], "counts": "0"}}], "rec 7[0]: rle must be"),
        ({"type": "point"}, "rec 7: visual prompts must be a list of objects, got dict"),
    ],
)
def test_json_errors_name_the_record_and_item(items, message):
    with pytest.raises(ValueError) as error:
        prompts_from_json(items, "rec 7")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# --- batching ------------------------------------------------------------------------------------


def test_prompt_batch_pads_slots_and_measures_masks():
    h, w = 24, 32
    mask = np.zeros((h, w), dtype=bool)
    mask[5:9, 11:20] = True
    mask[14, 3] = True
    long_stroke = np.stack([np.linspace(0, 30, 100), np.linspace(2, 20, 100) ** 1.1], axis=1)
    samples = [
        [VisualPrompt("point", vertices=[3, 4], label=0), VisualPrompt("mask", mask=mask)],
        [
            VisualPrompt("scribble", vertices=long_stroke),
            VisualPrompt("box", box=(1, 2, 3, 4)),
            VisualPrompt("point", vertices=[5, 6]),
        ],
        [],
    ]
    batch = prompt_batch(samples, (h, w), max_prompts=4, max_vertices=16)
    assert batch.kind.tolist() == [[1, 4, 0, 0], [3, 2, 1, 0], [0, 0, 0, 0]]
    assert batch.npoints.tolist() == [[1, 0, 0, 0], [16, 0, 1, 0], [0, 0, 0, 0]]
    assert batch.labels.tolist() == [[0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert batch.points.shape == (3, 4, 16, 2) and batch.masks.shape == (3, 4, h, w)
    assert batch.image_size == (h, w) and batch.kind.dtype == torch.int64
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    expected = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]  # pixel edges: last column + 1
    torch.testing.assert_close(batch.boxes[0, 1], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(batch.boxes[0, 0], torch.tensor([3.0, 4.0, 3.0, 4.0]))
    torch.testing.assert_close(
        batch.boxes[1, 0], torch.tensor([*long_stroke.min(0), *long_stroke.max(0)], dtype=torch.float32)
    )
    torch.testing.assert_close(batch.points[1, 0, [0, -1]], torch.tensor(long_stroke[[0, -1]], dtype=torch.float32))
    assert torch.equal(batch.masks[0, 1], torch.from_numpy(mask)) and not batch.masks[1].any()
    assert batch.valid.sum().item() == 5


def test_prompt_batch_without_masks_and_its_errors():
    batch = prompt_batch(
        [[VisualPrompt("point", vertices=[1, 1])], [VisualPrompt("box", box=(0, 0, 2, 2))] * 3], (8, 8)
    )
    assert batch.masks is None and batch.slots == 3 and batch.points.shape == (2, 3, 1, 2)
    with pytest.raises(ValueError, match=r"^samples\[1\]: has 3 visual prompts, more than max_prompts=2$"):
        prompt_batch([[], [VisualPrompt("point", vertices=[1, 1])] * 3], (8, 8), max_prompts=2)
    with pytest.raises(ValueError, match=r"^samples\[0\]\[0\]: mask shape \(4, 4\) differs from image_size \(8, 8\)$"):
        prompt_batch([[VisualPrompt("mask", mask=np.ones((4, 4)))]], (8, 8))


# --- geometry against the image path -------------------------------------------------------------


@pytest.mark.parametrize("window", [(20, 30, 48, 40), (-10, 50, 40, 40), (0, 0, 96, 120)])
def test_window_prompts_match_cropping_the_raster(window):
    top, left, height, width = window
    h, w, radius, width_px = 96, 120, 4, 5
    prompts = [*scene(h, w), VisualPrompt("point", vertices=[60.5, 40.5]), VisualPrompt("point", vertices=[5.5, 90.5])]
    full = marks(prompts, (h, w), radius, width_px)
    padded = torch.nn.functional.pad(
        full, (max(0, -left), max(0, left + width - w), max(0, -top), max(0, top + height - h))
    )
    crop = padded[:, max(0, top) : max(0, top) + height, max(0, left) : max(0, left) + width]
    for k, p in enumerate(prompts):
        seen = window_prompts([p], top, left, height, width)
        if not seen:  # dropped: none of it shows in the window
            assert crop[k].sum() == 0, k
            continue
        score = iou(marks(seen, (height, width), radius, width_px)[0], crop[k])
        assert score >= 0.98, (k, seen[0].kind, score)


def test_window_prompts_clip_boxes_and_strokes_and_keep_order():
    prompts = [
        VisualPrompt("box", box=(5, 5, 15, 15)),
        VisualPrompt("point", vertices=[30, 30]),
        VisualPrompt("scribble", vertices=[[0, 12], [20, 12]]),
        VisualPrompt("scribble", vertices=[[0, 0], [10, 10]]),
        VisualPrompt("mask", mask=np.pad(np.ones((2, 2)), ((0, 18), (0, 18)))),
    ]
    seen = window_prompts(prompts, top=10, left=10, height=10, width=10)
    assert [p.kind for p in seen] == ["box", "scribble", "point"]
    assert seen[0].box == (0.0, 0.0, 5.0, 5.0)
    np.testing.assert_allclose(seen[1].vertices, [[0, 2], [10, 2]])
    np.testing.assert_allclose(seen[2].vertices, [[0, 0]])  # a stroke that only touches the corner


def test_dihedral_prompts_match_random_dihedral_on_the_raster():
    h, w, radius, width_px = 40, 56, 3, 3
    prompts = scene(h, w)
    raster = marks(prompts, (h, w), radius, width_px)
    valid = torch.ones(1, h, w, dtype=torch.bool)
    seen = set()
    for seed in range(64):
        moved_raster, _, _, info = random_dihedral(raster, None, valid, torch.Generator().manual_seed(seed))
        key = (info["rot90"], info["flip"])
        if key in seen:
            continue
        seen.add(key)
        moved = dihedral_prompts(prompts, (h, w), **info)
        redrawn = marks(moved, tuple(moved_raster.shape[-2:]), radius, width_px)
        for k in range(len(prompts)):
            # The centre rule is exactly equivariant, so this is 1.0 unless the convention is off.
            score = iou(redrawn[k], moved_raster[k])
            assert score >= 0.98, (key, prompts[k].kind, score)
            assert torch.equal(redrawn[k], moved_raster[k]), (key, prompts[k].kind)
    assert len(seen) == 8


# Odd integer shrink factors (1/3, 1/5): nearest-exact then samples each output pixel at the
# source pixel whose centre maps onto the output pixel's centre, so any difference left comes from
# the prompts' geometry (at other factors the raster itself moves by up to half a source pixel).
# The disc radius and stroke width are given after the resize; before it they are these over the
# scale, integers too, so both rasters draw the same shapes.
@pytest.mark.parametrize(
    "shape,size,radius,width_px",
    [((150, 240), 80, 8, 4), ((240, 150), 80, 8, 4), ((165, 99), 55, 6, 3), ((100, 250), 50, 4, 3)],
)
def test_resize_pad_prompts_match_resize_pad_on_the_raster(shape, size, radius, width_px):
    h, w = shape
    scale = size / max(h, w)
    prompts = scene(h, w)
    raster = marks(prompts, (h, w), round(radius / scale), round(width_px / scale))
    _, moved_raster, _, info = resize_pad(torch.zeros(1, h, w), raster, torch.ones(1, h, w, dtype=torch.bool), size)
    moved = resize_pad_prompts(prompts, info)
    redrawn = marks(moved, (size, size), radius, width_px)
    for k in range(len(prompts)):
        score = iou(redrawn[k], moved_raster[k])
        assert score >= 0.98, (prompts[k].kind, score)


@pytest.mark.parametrize(
    "shape,resized,pad", [((90, 150), (30, 50), (7, 0, 13, 0)), ((150, 90), (50, 30), (0, 8, 0, 12))]
)
def test_resize_pad_prompts_follow_a_centred_pad(shape, resized, pad):
    # resize_pad pads bottom/right; its info also describes a pad on the top or left (a centred
    # image), which moves the prompts by (left, top). The raster goes through the same torch ops.
    (h0, w0), (h, w), (top, left, bottom, right) = shape, resized, pad
    info = {"original_size": [h0, w0], "resized_size": [h, w], "scale": h / h0, "pad": list(pad)}
    prompts = scene(h0, w0)
    raster = marks(prompts, (h0, w0), 12, 9)
    small = torch.nn.functional.interpolate(raster[None], size=(h, w), mode="nearest-exact")[0]
    moved_raster = torch.nn.functional.pad(small, (left, right, top, bottom))
    redrawn = marks(resize_pad_prompts(prompts, info), tuple(moved_raster.shape[-2:]), 4, 3)
    for k in range(len(prompts)):
        score = iou(redrawn[k], moved_raster[k])
        assert score >= 0.98, (prompts[k].kind, score)


def test_resize_pad_prompts_exact_on_pixel_grid_upsampling():
    # ×2 with integer boxes: nearest upsampling of a box or mask raster is exactly the moved prompt's.
    h, w, size = 30, 40, 80
    mask = ellipse(h, w, 25, 12, 8, 6)
    prompts = [VisualPrompt("box", box=(3, 4, 17, 25)), VisualPrompt("mask", mask=mask)]
    raster = marks(prompts, (h, w), 2, 2)
    _, moved_raster, _, info = resize_pad(torch.zeros(1, h, w), raster, torch.ones(1, h, w, dtype=torch.bool), size)
    moved = resize_pad_prompts(prompts, info)
    assert moved[0].box == (6.0, 8.0, 34.0, 50.0) and moved[1].mask.shape == (size, size)
    assert torch.equal(marks(moved, (size, size), 2, 2), moved_raster)
    # A mask too small to survive the resize keeps the pixel holding its centroid.
    tiny = np.zeros((200, 200), dtype=bool)
    tiny[101, 57] = True
    _, _, _, info = resize_pad(torch.zeros(1, 200, 200), None, torch.ones(1, 200, 200, dtype=torch.bool), 20)
    assert np.argwhere(resize_pad_prompts([VisualPrompt("mask", mask=tiny)], info)[0].mask).tolist() == [[10, 5]]


def test_geometry_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^rot90, flip: must be 0..3 and 0/1, got 4, 0$"):
        dihedral_prompts([], (4, 4), 4, 0)
    with pytest.raises(ValueError, match=r"^prompts\[0\]: mask shape \(3, 3\) differs from size \(4, 4\)$"):
        dihedral_prompts([VisualPrompt("mask", mask=np.ones((3, 3)))], (4, 4), 1, 0)


# --- synthesis -----------------------------------------------------------------------------------


def ring(h: int = 40, w: int = 50) -> np.ndarray:
    """A non-convex mask: an annulus, whose centroid lies in the hole."""
    return ellipse(h, w, 25, 20, 18, 16) & ~ellipse(h, w, 25, 20, 10, 9)


@pytest.mark.parametrize("mask", [ellipse(40, 50, 20, 15, 12, 8), ring()], ids=["ellipse", "ring"])
def test_synthesized_points_and_scribbles_lie_in_the_mask(mask):
    rng = np.random.default_rng(0)
    for _ in range(30):
        (x, y) = synthesize_point(mask, rng).vertices[0]
        assert mask[int(y), int(x)] and x % 1 == 0.5 and y % 1 == 0.5
        stroke = synthesize_scribble(mask, rng).vertices
        assert stroke.shape == (32, 2)
        assert mask[np.floor(stroke[:, 1]).astype(int), np.floor(stroke[:, 0]).astype(int)].all()


def test_synthesized_points_gather_around_the_centroid():
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:80, 10:90] = True
    rng = np.random.default_rng(1)
    xy = np.array([synthesize_point(mask, rng).vertices[0] for _ in range(400)])
    np.testing.assert_allclose(xy.mean(axis=0), [50, 50], atol=1.5)
    np.testing.assert_allclose(xy.std(axis=0), [80 / 8, 60 / 8], rtol=0.2)


def test_jitter_box_stays_within_its_bounds():
    rng = np.random.default_rng(2)
    box = (20.0, 30.0, 60.0, 50.0)
    for _ in range(200):
        x0, y0, x1, y1 = jitter_box(box, rng)
        assert abs((x0 + x1) / 2 - 40) <= 40 / 8 + 1e-9 and abs((y0 + y1) / 2 - 40) <= 20 / 8 + 1e-9
        assert 0.85 * 40 - 1e-9 <= x1 - x0 <= 1.15 * 40 + 1e-9 and 0.85 * 20 - 1e-9 <= y1 - y0 <= 1.15 * 20 + 1e-9
        x0, y0, x1, y1 = jitter_box((0, 0, 10, 64), rng, image_size=(64, 48))
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 64


def test_synthesis_is_reproducible_and_rejects_empty_masks():
    mask = ring()
    a = [
        synthesize_scribble(mask, np.random.default_rng(5)).vertices,
        synthesize_point(mask, np.random.default_rng(5)).vertices,
    ]
    b = [
        synthesize_scribble(mask, np.random.default_rng(5)).vertices,
        synthesize_point(mask, np.random.default_rng(5)).vertices,
    ]
    c = synthesize_scribble(mask, np.random.default_rng(6)).vertices
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c)
    assert jitter_box((1, 1, 5, 5), np.random.default_rng(3)) == jitter_box((1, 1, 5, 5), np.random.default_rng(3))
    for synthesize in (synthesize_point, synthesize_scribble):
        with pytest.raises(ValueError, match="^mask: is empty"):
            synthesize(np.zeros((5, 5)), np.random.default_rng(0))

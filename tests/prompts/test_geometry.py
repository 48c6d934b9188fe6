"""Prompt drawing against independent references: scikit-image's disk / polygon / line, a
brute-force arc-length walk, and ``PIL.Image.alpha_composite``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.draw import disk, line, polygon

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.prompts.geometry import (
    PALETTE,
    alpha_composite,
    clip_polyline,
    default_line_width,
    default_point_radius,
    overlay,
    prompt_layer,
    rasterize,
    resample_stroke,
)

H, W = 64, 80


def make_batch(slots: list[list[tuple]], size: tuple[int, int] = (H, W)) -> VisualPromptBatch:
    """A batch from per-sample slots ``("point", (x, y))``, ``("box", (x0, y0, x1, y1))``,
    ``("scribble", [[x, y], ...])``, ``("mask", H×W bool)`` or ``None`` (empty), built by hand so
    that the drawing tests do not depend on the data-side batching."""
    b, m = len(slots), max(len(s) for s in slots)
    p = max([1] + [len(v) for s in slots for k, v in filter(None, s) if k == "scribble"])
    kind, npoints = torch.zeros(b, m, dtype=torch.int64), torch.zeros(b, m, dtype=torch.int64)
    points, boxes = torch.zeros(b, m, p, 2), torch.zeros(b, m, 4)
    masks = torch.zeros(b, m, *size, dtype=torch.bool)
    for i, sample in enumerate(slots):
        for k, slot in enumerate(sample):
            if slot is None:
                continue
            name, value = slot
            kind[i, k] = PROMPT_KINDS[name]
            if name == "point":
                points[i, k, 0], npoints[i, k] = torch.tensor(value), 1
            elif name == "box":
                boxes[i, k] = torch.tensor(value)
            elif name == "scribble":
                points[i, k, : len(value)], npoints[i, k] = torch.tensor(value, dtype=torch.float32), len(value)
            else:
                masks[i, k] = torch.from_numpy(value)
    has_mask = bool((kind == PROMPT_KINDS["mask"]).any())
    return VisualPromptBatch(
        kind, points, npoints, boxes, torch.ones(b, m, dtype=torch.int64), size, masks if has_mask else None
    )


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pixels on which ``a`` and ``b`` agree, as a fraction of their union."""
    union = (a | b).sum()
    return 1.0 if union == 0 else 1.0 - (a ^ b).sum() / union


def reference(draw, *args) -> np.ndarray:
    out = np.zeros((H, W), dtype=bool)
    rows, cols = draw(*args)
    keep = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    out[rows[keep], cols[keep]] = True
    return out


def test_defaults_follow_the_canvas_side():
    assert [default_point_radius(s) for s in (64, 336, 448, 1024)] == [2, 3, 4, 9]
    assert [default_line_width(s) for s in (64, 336, 448, 1024)] == [2, 3, 4, 9]


@pytest.mark.parametrize("radius", [2, 3, 5])
def test_points_are_skimage_discs(radius):
    rng = np.random.default_rng(radius)
    centres = rng.uniform([-2, -2], [W + 2, H + 2], size=(12, 2))  # some discs cut by the border
    marks = rasterize(make_batch([[("point", tuple(c)) for c in centres]]), point_radius=radius)[0].numpy() > 0
    for k, (x, y) in enumerate(centres):
        # skimage indexes pixels by their centre: pixel (i, j) is at row i, column j, so the
        # disc around edge coordinates (x, y) is centred at (y - 0.5, x - 0.5).
        ref = np.zeros((H, W), dtype=bool)
        ref[disk((y - 0.5, x - 0.5), radius, shape=(H, W))] = True
        assert agreement(marks[k], ref) >= 0.99, (k, x, y)


def test_default_point_radius_on_the_canvas():
    marks = rasterize(make_batch([[("point", (40.3, 30.7))]]))[0, 0].numpy() > 0
    ref = np.zeros((H, W), dtype=bool)
    ref[disk((30.2, 39.8), default_point_radius(max(H, W)), shape=(H, W))] = True
    assert agreement(marks, ref) >= 0.99


def test_boxes_are_skimage_polygons_and_keep_their_extent():
    rng = np.random.default_rng(0)
    xs, ys = np.sort(rng.uniform(0, W, size=(12, 2)), axis=1), np.sort(rng.uniform(0, H, size=(12, 2)), axis=1)
    boxes = [(x0, y0, x1, y1) for (x0, x1), (y0, y1) in zip(xs, ys) if x1 - x0 > 2 and y1 - y0 > 2]
    marks = rasterize(make_batch([[("box", b) for b in boxes]]))[0].numpy() > 0
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        ref = reference(polygon, np.array([y0, y0, y1, y1]) - 0.5, np.array([x0, x1, x1, x0]) - 0.5)
        assert agreement(marks[k], ref) >= 0.99
        rows, cols = np.nonzero(marks[k])
        drawn = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        np.testing.assert_allclose(drawn, [x0, y0, x1, y1], atol=1.0)


def test_box_outline_is_the_rectangle_minus_its_inside():
    box, width = (10.0, 8.0, 50.0, 40.0), 3
    ring = rasterize(make_batch([[("box", box)]]), line_width=width, box_style="outline")[0, 0].numpy() > 0
    outer = reference(polygon, np.array([8, 8, 40, 40]) - 0.5, np.array([10, 50, 50, 10]) - 0.5)
    inner = reference(polygon, np.array([11, 11, 37, 37]) - 0.5, np.array([13, 47, 47, 13]) - 0.5)
    assert agreement(ring, outer & ~inner) >= 0.99
    assert ring[20, 30] == 0 and ring[8, 30] and ring[20, 10]


def test_one_pixel_strokes_are_skimage_lines():
    rng = np.random.default_rng(1)
    strokes = [rng.integers(0, [W, H], size=(rng.integers(2, 6), 2)) + 0.5 for _ in range(8)]
    marks = rasterize(make_batch([[("scribble", s.tolist()) for s in strokes]]), line_width=1)[0].numpy() > 0
    for k, s in enumerate(strokes):
        cells = np.floor(s).astype(int)
        ref = np.zeros((H, W), dtype=bool)
        for (c0, r0), (c1, r1) in zip(cells[:-1], cells[1:]):
            ref |= reference(line, r0, c0, r1, c1)
        assert agreement(marks[k], ref) >= 0.99, k


def test_thick_strokes_are_discs_swept_along_the_polyline():
    stroke = np.array([[5.3, 6.1], [40.7, 12.2], [70.1, 55.4], [20.2, 50.9]])
    width = 5
    mark = rasterize(make_batch([[("scribble", stroke.tolist())]]), line_width=width)[0, 0].numpy() > 0
    ref = np.zeros((H, W), dtype=bool)
    for a, b in zip(stroke[:-1], stroke[1:]):
        for t in np.linspace(0, 1, 400):
            x, y = a + t * (b - a)
            ref[disk((y - 0.5, x - 0.5), width / 2, shape=(H, W))] = True
    assert agreement(mark, ref) >= 0.99


def test_identity_channels_follow_the_slots_and_type_channels_do_not():
    mask = np.zeros((H, W), dtype=bool)
    mask[40:60, 5:25] = True
    slots = [("point", (12.5, 10.5)), ("box", (30, 5, 60, 25)), ("scribble", [[5, 35], [70, 60]]), ("mask", mask)]
    canvas = rasterize(make_batch([slots]))[0]
    order = [2, 0, 3, 1]
    permuted = rasterize(make_batch([[slots[i] for i in order]]))[0]
    torch.testing.assert_close(permuted[:4], canvas[order])
    torch.testing.assert_close(permuted[4:], canvas[4:])
    assert canvas.shape == (4 + 3, H, W) and set(canvas.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(canvas[4], canvas[0])  # point channel
    torch.testing.assert_close(canvas[5], canvas[1])  # box channel
    torch.testing.assert_close(canvas[6], torch.maximum(canvas[2], canvas[3]))  # free-form channel
    assert torch.equal(canvas[3].bool(), torch.from_numpy(mask))


def test_empty_slots_and_samples_give_zero_channels():
    canvas = rasterize(make_batch([[None, ("point", (20, 20)), None], [None, None, None]]))
    assert canvas.shape == (2, 6, H, W)
    assert canvas[0, 0].sum() == 0 and canvas[0, 2].sum() == 0 and canvas[0, 1].sum() > 0
    assert canvas[1].sum() == 0
    assert canvas[0, 4].sum() == 0 and canvas[0, 5].sum() == 0  # no box, no free-form


def test_size_rescales_coordinates_and_masks():
    mask = np.zeros((H, W), dtype=bool)
    mask[10:30, 40:47] = True
    slots = [
        ("point", (10.2, 20.7)),
        ("box", (30.5, 5.25, 60.0, 25.5)),
        ("scribble", [[5, 35], [70, 60]]),
        ("mask", mask),
    ]
    big = rasterize(make_batch([slots]), size=(2 * H, 3 * W), point_radius=4, line_width=6)[0]
    scaled = [
        ("point", (30.6, 41.4)),
        ("box", (91.5, 10.5, 180.0, 51.0)),
        ("scribble", [[15, 70], [210, 120]]),
        ("mask", np.kron(mask, np.ones((2, 3), dtype=bool))),  # nearest neighbour by hand
    ]
    direct = rasterize(make_batch([scaled], size=(2 * H, 3 * W)), point_radius=4, line_width=6)[0]
    torch.testing.assert_close(big, direct)


def test_background_labels_are_drawn_like_foreground():
    batch = make_batch([[("point", (20, 20))]])
    background = VisualPromptBatch(**{**batch.__dict__, "labels": torch.zeros_like(batch.labels)})
    torch.testing.assert_close(rasterize(background), rasterize(batch))


def walk(vertices: np.ndarray, distance: float) -> np.ndarray:
    """The point ``distance`` along a polyline, by walking its segments one by one."""
    for a, b in zip(vertices[:-1], vertices[1:]):
        step = float(np.hypot(*(b - a)))
        if distance <= step and step > 0:
            return a + (b - a) * distance / step
        distance -= step
    return vertices[-1]


def arc_position(vertices: np.ndarray, point: np.ndarray) -> float:
    """How far along a polyline ``point`` (which lies on it) is: the first segment holding it."""
    done = 0.0
    for a, b in zip(vertices[:-1], vertices[1:]):
        step, to_point = float(np.hypot(*(b - a))), float(np.hypot(*(point - a)))
        if abs(to_point + float(np.hypot(*(b - point))) - step) < 1e-9:
            return done + to_point
        done += step
    raise AssertionError(f"{point} is not on the stroke")


def test_resample_stroke_matches_an_arc_length_walk():
    vertices = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [3.0, 10.0], [-5.0, 10.0]])
    total = 5 + 6 + 8
    out = resample_stroke(vertices, 20)
    assert out.shape == (20, 2)
    expected = np.stack([walk(vertices, d) for d in np.linspace(0, total, 20)])
    np.testing.assert_allclose(out, expected, atol=1e-9)
    np.testing.assert_allclose(out[[0, -1]], vertices[[0, -1]])
    # Equal spacing: every point is total/19 further along the stroke than the previous one.
    np.testing.assert_allclose(np.diff([arc_position(vertices, p) for p in out]), total / 19, atol=1e-9)


def test_resample_stroke_degenerate_cases():
    np.testing.assert_array_equal(resample_stroke(np.array([[2.0, 3.0]]), 4), [[2, 3]] * 4)
    np.testing.assert_array_equal(resample_stroke(np.array([[2.0, 3.0], [2.0, 3.0]]), 3), [[2, 3]] * 3)
    np.testing.assert_array_equal(resample_stroke(np.array([[0.0, 0.0], [4.0, 0.0]]), 3), [[0, 0], [2, 0], [4, 0]])
    with pytest.raises(ValueError, match="^count: must be >= 1"):
        resample_stroke(np.array([[0.0, 0.0]]), 0)


def test_clip_polyline_cuts_at_the_window_border():
    np.testing.assert_allclose(clip_polyline(np.array([[-10.0, 5.0], [30.0, 5.0]]), 20, 10), [[0, 5], [20, 5]])
    np.testing.assert_allclose(
        clip_polyline(np.array([[5.0, 5.0], [5.0, 15.0], [8.0, 15.0]]), 20, 10), [[5, 5], [5, 10]]
    )
    # Out and back in: the longer piece (the second, 8 long) is kept.
    zigzag = np.array([[2.0, 2.0], [2.0, -5.0], [10.0, -5.0], [10.0, 8.0]])
    np.testing.assert_allclose(clip_polyline(zigzag, 20, 10), [[10, 0], [10, 8]])
    assert clip_polyline(np.array([[-5.0, -5.0], [-1.0, 30.0]]), 20, 10) is None


def test_alpha_composite_matches_pil_byte_for_byte():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    layer = rng.integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    layer[..., 3][rng.random((37, 53)) < 0.2] = 0
    layer[..., 3][rng.random((37, 53)) < 0.1] = 255
    expected = Image.alpha_composite(Image.fromarray(image).convert("RGBA"), Image.fromarray(layer, "RGBA"))
    assert alpha_composite(image, layer).tobytes() == expected.convert("RGB").tobytes()


@pytest.mark.parametrize("alpha", [1, 96, 160, 255])
def test_overlay_matches_pil_alpha_composite_of_its_layer(alpha):
    rng = np.random.default_rng(alpha)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), dtype=bool)
    mask[40:60, 50:75] = True
    batch = make_batch(
        [[("point", (10, 10)), ("box", (20, 5, 45, 30)), ("scribble", [[5, 60], [30, 40]]), ("mask", mask)]]
    )
    layer = prompt_layer(batch, alpha=alpha)
    expected = Image.alpha_composite(Image.fromarray(image).convert("RGBA"), Image.fromarray(layer, "RGBA"))
    assert overlay(image, batch, alpha=alpha).tobytes() == expected.convert("RGB").tobytes()


def test_overlay_layer_paints_slot_k_in_colour_k():
    batch = make_batch([[("point", (10.5, 10.5)), ("box", (20, 5, 45, 30)), ("scribble", [[5, 60], [30, 40]])]])
    layer = prompt_layer(batch, alpha=200)
    assert tuple(layer[10, 10]) == (*PALETTE[0], 200)
    assert tuple(layer[5, 30]) == (*PALETTE[1], 200)  # outline, top edge
    assert tuple(layer[15, 30]) == (0, 0, 0, 0)  # inside the outlined box: untouched
    assert tuple(layer[50, 17]) == (*PALETTE[2], 200)
    assert tuple(layer[0, 79]) == (0, 0, 0, 0)
    # Prompts given on another frame are scaled to the image.
    small = make_batch([[("point", (5.25, 5.25))]], size=(H // 2, W // 2))
    assert tuple(prompt_layer(small, size=(H, W))[10, 10]) == (*PALETTE[0], 160)


def test_drawing_errors_name_the_field():
    batch = make_batch([[("point", (1, 1))], [("point", (2, 2))]])
    with pytest.raises(ValueError, match="^prompts: an overlay draws one sample, got a batch of 2$"):
        overlay(np.zeros((H, W, 3), np.uint8), batch)
    with pytest.raises(ValueError, match="^box_style: must be 'fill' or 'outline'"):
        rasterize(batch, box_style="dashed")
    with pytest.raises(ValueError, match="^image_rgb: expected H×W×3 uint8"):
        alpha_composite(np.zeros((H, W), np.uint8), np.zeros((H, W, 4), np.uint8))

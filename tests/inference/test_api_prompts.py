"""Visual prompts through the Python API: points, boxes, strokes and painted masks given in the
scene's pixels reach each tile in the tile's pixels, change only the tiles they lie in, and are
refused with one line by a model that reads none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rsvlm
from rsvlm.contracts import PROMPT_KINDS
from rsvlm.inference.api import PredictError


@pytest.fixture(scope="module")
def prompted(run_folder):
    """The demo run whose SAM decoder also reads the user's prompts (``use_visual_prompts``, a
    switch with no weights of its own, so the same checkpoint serves both)."""
    predictor = rsvlm.load(run_folder)
    predictor.model.decoder.use_visual_prompts = True
    return predictor


def spy_batches(monkeypatch, model) -> list[dict]:
    seen: list[dict] = []
    original = model.predict_masks

    def spy(batch):
        seen.append(batch)
        return original(batch)

    monkeypatch.setattr(model, "predict_masks", spy)
    return seen


def tile_prompts(batches: list[dict]) -> dict[tuple[int, int], tuple]:
    """Window origin (row, col) → (kinds, points, boxes) of the valid slots of that tile."""
    found = {}
    for batch in batches:
        prompts = batch["visual_prompts"]
        for i, meta in enumerate(batch["meta"]):
            valid = prompts.valid[i]
            found[tuple(meta["window"][:2])] = (
                prompts.kind[i][valid].tolist(),
                prompts.points[i][valid][:, 0].tolist(),
                prompts.boxes[i][valid].tolist(),
            )
    return found


def test_prompts_reach_each_tile_in_its_own_pixels(prompted, scene, monkeypatch):
    batches = spy_batches(monkeypatch, prompted.model)
    point, box = [10.5, 5.5], [60.0, 30.0, 90.0, 70.0]
    prompted.predict(str(scene), category="water", points=[point], boxes=[box])
    tiles = tile_prompts(batches)
    assert len(tiles) > 1 and (0, 0) in tiles  # 80×100 in overlapping 64² tiles
    for (row, col), (kinds, points, boxes) in tiles.items():
        expected_kinds, expected_boxes = [], []
        inside = col <= point[0] < col + 64 and row <= point[1] < row + 64
        if inside:
            expected_kinds.append(PROMPT_KINDS["point"])
            assert points[0] == pytest.approx([point[0] - col, point[1] - row])
        # the box clipped to the window, written out
        x0, y0 = max(box[0], col) - col, max(box[1], row) - row
        x1, y1 = min(box[2], col + 64) - col, min(box[3], row + 64) - row
        if x1 > x0 and y1 > y0:
            expected_kinds.append(PROMPT_KINDS["box"])
            expected_boxes.append([x0, y0, x1, y1])
        assert kinds == expected_kinds, (row, col)
        assert [b for b, k in zip(boxes, kinds, strict=True) if k == PROMPT_KINDS["box"]] == [
            pytest.approx(b) for b in expected_boxes
        ]


def test_a_prompt_changes_only_the_tiles_it_lies_in(prompted, scene):
    plain = prompted.predict(str(scene), category="water")
    pointed = prompted.predict(str(scene), category="water", points=[[3.5, 3.5]])
    by_window = {tuple(meta["window"][:2]): logits for meta, logits, _, _ in plain.tiles}
    changed = []
    for meta, logits, _, _ in pointed.tiles:
        row, col = meta["window"][:2]
        # tiles without a prompt decode one image at a time: equal up to float rounding
        same = torch.allclose(torch.as_tensor(logits), torch.as_tensor(by_window[(row, col)]), atol=1e-5)
        changed.append((row, col)) if not same else None
    assert changed == [(0, 0)]  # the point (3.5, 3.5) lies in the first tile only


def test_strokes_and_painted_masks_are_free_form_prompts(prompted, scene, monkeypatch):
    batches = spy_batches(monkeypatch, prompted.model)
    painted = np.zeros((80, 100), dtype=bool)
    painted[70:75, 90:95] = True
    stroke = [[2.0, 2.0], [20.0, 2.0], [20.0, 20.0]]
    result = prompted.predict(str(scene), category="water", scribble=[stroke], mask=painted)
    assert result.mask.shape == (80, 100)
    kinds = {window: found[0] for window, found in tile_prompts(batches).items()}
    assert PROMPT_KINDS["scribble"] in kinds[(0, 0)]
    last = max(kinds)  # the bottom-right tile holds the painted square
    assert PROMPT_KINDS["mask"] in kinds[last]
    masks = [b["visual_prompts"].masks for b in batches if b["visual_prompts"].masks is not None]
    assert masks and all(m.shape[-2:] == (64, 64) for m in masks)  # at the tile's size


def test_a_model_that_reads_no_prompts_refuses_them_in_one_line(run_folder, scene):
    plain = rsvlm.load(run_folder)
    with pytest.raises(PredictError, match="reads no visual prompts") as err:
        plain.predict(str(scene), category="water", boxes=[[0, 0, 5, 5]])
    assert "\n" not in str(err.value)


def test_bad_prompt_arguments_are_one_line_errors(prompted, scene):
    with pytest.raises(PredictError, match=r"predict: boxes\[0\]"):
        prompted.predict(str(scene), category="water", boxes=[[1, 2, 3]])
    with pytest.raises(PredictError, match="mask"):
        prompted.predict(str(scene), category="water", mask=np.zeros((5, 5), dtype=bool))


def test_prompts_in_map_coordinates_land_where_the_same_pixels_do(prompted, scene, monkeypatch):
    # the scene: 10 m pixels, north up, its top-left corner at (500000, 5300000) in EPSG:32632
    def to_map(x: float, y: float) -> list[float]:
        return [500000.0 + 10.0 * x, 5300000.0 - 10.0 * y]

    batches = spy_batches(monkeypatch, prompted.model)
    prompted.predict(str(scene), category="water", points=[[10.5, 5.5]], boxes=[[60.0, 30.0, 90.0, 70.0]])
    (west, north), (east, south) = to_map(60.0, 30.0), to_map(90.0, 70.0)
    prompted.predict(
        str(scene),
        category="water",
        points=[to_map(10.5, 5.5)],
        boxes=[[west, south, east, north]],  # a map box: (min x, min y, max x, max y)
        prompt_coordinates="map",
    )
    half = len(batches) // 2
    in_pixels, in_map = tile_prompts(batches[:half]), tile_prompts(batches[half:])
    assert in_pixels.keys() == in_map.keys()
    for window, (kinds, points, boxes) in in_pixels.items():
        assert in_map[window][0] == kinds
        assert np.allclose(in_map[window][1], points) and np.allclose(in_map[window][2], boxes)
    with pytest.raises(PredictError, match="needs one georeferenced image file"):
        prompted.predict(np.zeros((6, 8, 8), np.float32), category="water", points=[[1, 1]], prompt_coordinates="map")

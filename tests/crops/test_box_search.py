"""The PSC box search against a brute-force version written here (explicit loops over windows
and neighbours)."""

from __future__ import annotations

import numpy as np
import pytest

from rsvlm.crops.box_search import adaptive_box, crop_side, window_sums


def test_window_sums_are_the_sums_of_every_window():
    rng = np.random.default_rng(0)
    a = rng.random((7, 9))
    got = window_sums(a, 3, 4)
    want = np.array([[a[y : y + 3, x : x + 4].sum() for x in range(6)] for y in range(5)])
    np.testing.assert_allclose(got, want)


def _brute_force_box(att, image_size, s, ratios=(1, 1.2, 1.4, 1.6, 1.8, 2.0)):
    gh, gw = att.shape
    w_img, h_img = image_size
    cw, ch = w_img / gw, h_img / gh
    results = []
    for i, r in enumerate(ratios):
        bw, bh = min(int(s * r / cw), gw), min(int(s * r / ch), gh)
        if gw - bw < 1 and gh - bh < 1:
            if i == 0:
                return (0, 0, w_img, h_img)
            continue
        best, bx, by = -np.inf, 0, 0
        for x in range(gw - bw + 1):  # x-major scan, strict '>' keeps the first maximum
            for y in range(gh - bh + 1):
                total = sum(att[yy, xx] for yy in range(y, y + bh) for xx in range(x, x + bw))
                if total > best:
                    best, bx, by = total, x, y
        neighbours = []
        for nx, ny in ((bx - 1, by), (bx + 1, by), (bx, by - 1), (bx, by + 1)):
            if 0 <= nx <= gw - bw and 0 <= ny <= gh - bh:
                neighbours.append(sum(att[yy, xx] for yy in range(ny, ny + bh) for xx in range(nx, nx + bw)))
        diff = (best - (np.mean(neighbours) if neighbours else 0.0)) / (bw * bh)
        results.append((diff, r, bx, by, bw, bh))
    diff, r, bx, by, bw, bh = max(results, key=lambda t: t[0])  # max keeps the first of equals
    half = int(s * r // 2)
    cx = min(max(int(bx * cw + cw * bw / 2), half), w_img - half)
    cy = min(max(int(by * ch + ch * bh / 2), half), h_img - half)
    return (max(0, cx - half), max(0, cy - half), min(w_img, cx + half), min(h_img, cy + half))


@pytest.mark.parametrize("seed", range(8))
def test_adaptive_box_matches_the_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    att = rng.random((24, 24)) ** 4
    att[rng.integers(24), rng.integers(24)] += 3.0  # a hot spot
    for image_size, s in (((800, 800), 336), ((1024, 640), 200), ((336, 336), 100)):
        assert adaptive_box(att, image_size, s) == _brute_force_box(att, image_size, s)


def test_a_hot_spot_is_inside_the_box_and_a_large_window_returns_the_image():
    att = np.zeros((24, 24))
    att[5, 18] = 1.0  # cell (x 18, y 5) of an 800×800 image: pixels x 600–633, y 166–200
    x1, y1, x2, y2 = adaptive_box(att, (800, 800), 336)
    assert x1 <= 600 and x2 >= 633 and y1 <= 166 and y2 >= 200
    assert adaptive_box(att, (800, 800), 800) == (0, 0, 800, 800)
    assert crop_side(800, 800) == pytest.approx(336.0)
    assert 2 * crop_side(100, 100, fraction=0.8) <= 90.0 + 1e-9

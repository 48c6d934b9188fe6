"""APG, the attribute prompt generator of SPEX: spectral priors → text attributes.

Pipeline (SPEX, Si et al. 2025, arXiv:2508.05202, Sec. "SPIE"):

1. coarse mask = category index (NDVI / NDWI / NDBI) > Otsu threshold of the valid pixels
   (:func:`rsvlm.data.indices.coarse_mask`);
2. connected regions of the coarse mask (8-connectivity by default, 4 selectable);
3. per region r with N_r pixels in an H×W image:

   * **"Size of area"** from S_r = N_r / (H·W) (H·W counts every pixel, valid or not):

     ===================  ===========================
     S_r ≤ 0.0305         ``very tiny``
     0.0305 < S_r ≤ 0.0610  ``small``
     0.0610 < S_r ≤ 0.1221  ``somewhat large``
     0.1221 < S_r ≤ 0.2441  ``medium``
     0.2441 < S_r ≤ 0.3662  ``large``
     0.3662 < S_r ≤ 0.6104  ``very large``
     S_r > 0.6104         ``huge``
     ===================  ===========================

   * **"Centroid"** C_x = mean column index, C_y = mean row index of the region's pixels;
   * **"Location"**: the cell of a 3×3 grid holding the centroid (Eq. 5), with
     ``C_x < W/3`` → left, ``W/3 ≤ C_x < 2W/3`` → center, ``C_x ≥ 2W/3`` → right and the
     same for ``C_y`` against H (top / middle / bottom). Cell names are those of the
     released SPEX prompts: ``top-left``, ``top-center``, ``top-right``, ``middle-left``,
     ``center``, ``middle-right``, ``bottom-left``, ``bottom-center``, ``bottom-right``;
   * **"Bounding box"** (Eq. 6): four corners ``[[x, y], ...]`` in the order TL, TR, BR, BL,
     each normalised as (x / W, y / H) with x, y pixel indices (so the last column is
     (W−1)/W, e.g. 0.998 for W = 512, as in the released prompts), rounded to 3 decimals.

4. regions sorted by area, largest first (ties: the region whose first pixel comes first in
   raster order), at most ``max_regions`` (10) kept.

Two styles:

* ``"paper"``: centroid in pixels ``[C_x, C_y]`` (rounded to 0.1 px) and the axis-aligned
  bounding box;
* ``"released"``: the released SPEX data: centroid normalised ``[C_x/W, C_y/H]`` rounded to
  3 decimals and the minimum-area rotated rectangle (``cv2.minAreaRect`` of the region's
  outer contour, which has the same convex hull as its pixels, then ``cv2.boxPoints``),
  corners clipped to [0, 1] and ordered TL (smallest x + y) then clockwise on screen
  (TR, BR, BL).

Prompt text: the region list rendered as a Python literal, exactly as the released SPEX
question files show it (``[{'Size of area': 'huge', 'Centroid': [0.48, 0.422], ...}]``);
an image without regions gives "No {category} regions were found in the image."
The size thresholds are taken from the issue / paper as stated (they equal 8000, 16000,
32000, 64000, 96000 and 160000 pixels of a 512×512 tile to four decimals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from scipy import ndimage

from rsvlm.data.bands import BandSpec
from rsvlm.data.indices import coarse_mask, normalize_category

Style = Literal["paper", "released"]

SIZE_BINS: tuple[tuple[float, str], ...] = (
    (0.0305, "very tiny"),
    (0.0610, "small"),
    (0.1221, "somewhat large"),
    (0.2441, "medium"),
    (0.3662, "large"),
    (0.6104, "very large"),
)
LARGEST_SIZE = "huge"

LOCATIONS: tuple[tuple[str, str, str], ...] = (
    ("top-left", "top-center", "top-right"),
    ("middle-left", "center", "middle-right"),
    ("bottom-left", "bottom-center", "bottom-right"),
)

KEYS = ("Size of area", "Centroid", "Location", "Bounding box")

SPECTRAL_TEMPLATE = (
    "Based on the provided image and the attributes of the {category} regions, "
    "please provide a detailed description of them: {prompt}"
)
# The paper's ablation without spectral prompt, verbatim from Sec. IV-C1 ("the vegetation
# regions" there, with the category filled in).
PLAIN_TEMPLATE = (
    "You are an expert specializing in remote sensing. Based on the provided image and the "
    "{category} regions, please provide a detailed description of them."
)
EMPTY_PROMPT = "No {category} regions were found in the image."


def size_label(fraction: float) -> str:
    """Size bin of a region covering ``fraction`` = N_r/(H·W) of the image."""
    for upper, name in SIZE_BINS:
        if fraction <= upper:
            return name
    return LARGEST_SIZE


def location_label(cx: float, cy: float, height: int, width: int) -> str:
    """3×3 grid cell (Eq. 5) of a centroid given in pixels (C_x column, C_y row)."""
    # 3·C < W is C < W/3 without rounding W/3.
    col = 0 if 3 * cx < width else (1 if 3 * cx < 2 * width else 2)
    row = 0 if 3 * cy < height else (1 if 3 * cy < 2 * height else 2)
    return LOCATIONS[row][col]


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return ndimage.generate_binary_structure(2, 2)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def order_corners(points: np.ndarray) -> np.ndarray:
    """Order four (x, y) corners as TL, TR, BR, BL in image coordinates (y down).

    TL is the corner with the smallest x + y; the others follow clockwise on screen.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(4, 2)
    centre = pts.mean(axis=0)
    # With y pointing down, increasing atan2 angle runs clockwise on screen.
    ang = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(ang, kind="stable")]
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def _rotated_box(region: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Corners (4×2, x/y in pixels) of the minimum-area rectangle of a binary region crop."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)
    pts += np.array([x0, y0], dtype=np.float32)
    return order_corners(cv2.boxPoints(cv2.minAreaRect(pts)))


def _norm_corners(corners: np.ndarray, height: int, width: int, clip: bool) -> list[list[float]]:
    xy = corners / np.array([width, height], dtype=np.float64)
    if clip:
        xy = np.clip(xy, 0.0, 1.0)
    return [[round(float(x), 3), round(float(y), 3)] for x, y in xy]


def region_attributes(
    mask: np.ndarray, style: Style = "paper", connectivity: int = 8, max_regions: int = 10
) -> list[dict[str, Any]]:
    """Attributes of the connected regions of a binary mask, largest first.

    Args:
        mask: H×W bool (or 0/1) array.
        style: ``"paper"`` (pixel centroid, axis-aligned box) or ``"released"`` (normalised
            centroid, minimum-area rotated box); see the module docstring.
        connectivity: 8 (diagonal neighbours join regions; the default) or 4.
        max_regions: keep at most this many regions (the largest).

    Returns:
        One dict per region with keys exactly ``"Size of area"`` (str), ``"Centroid"``
        ([x, y] floats), ``"Location"`` (str) and ``"Bounding box"`` (four [x, y] corners
        TL, TR, BR, BL); plain Python types, so ``str()`` / ``json.dumps`` work. An empty
        mask gives ``[]``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"region_attributes: mask must be H×W, got shape {m.shape}")
    if style not in ("paper", "released"):
        raise ValueError(f"region_attributes: style must be 'paper' or 'released', got {style!r}")
    if max_regions < 1:
        raise ValueError(f"region_attributes: max_regions must be ≥ 1, got {max_regions}")
    m = m.astype(bool, copy=False)
    height, width = m.shape
    labels, n = ndimage.label(m, structure=_structure(connectivity))
    if n == 0:
        return []
    # Region moments with bincount over foreground pixels only: O(foreground), vectorised.
    flat_idx = np.flatnonzero(labels)
    lab = labels.ravel()[flat_idx]
    rows, cols = np.divmod(flat_idx, width)
    counts = np.bincount(lab, minlength=n + 1)
    sum_r = np.bincount(lab, weights=rows, minlength=n + 1)
    sum_c = np.bincount(lab, weights=cols, minlength=n + 1)
    # Stable sort on -area keeps raster order (label order) among equal areas.
    top = np.argsort(-counts[1:], kind="stable")[:max_regions] + 1
    slices = ndimage.find_objects(labels, max_label=int(top.max()))
    total = float(height * width)
    out: list[dict[str, Any]] = []
    for k in top:
        k = int(k)
        cx, cy = sum_c[k] / counts[k], sum_r[k] / counts[k]
        sl_r, sl_c = slices[k - 1]
        if style == "paper":
            x0, x1, y0, y1 = sl_c.start, sl_c.stop - 1, sl_r.start, sl_r.stop - 1
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
            centroid = [round(float(cx), 1), round(float(cy), 1)]
            box = _norm_corners(corners, height, width, clip=False)
        else:
            corners = _rotated_box(labels[sl_r, sl_c] == k, sl_c.start, sl_r.start)
            centroid = [round(float(cx) / width, 3), round(float(cy) / height, 3)]
            box = _norm_corners(corners, height, width, clip=True)
        out.append(
            {
                "Size of area": size_label(counts[k] / total),
                "Centroid": centroid,
                "Location": location_label(cx, cy, height, width),
                "Bounding box": box,
            }
        )
    return out


def format_prompt(regions: Sequence[dict[str, Any]], category: str) -> str:
    """Prompt text of a region list: its Python literal, or a no-region sentence."""
    if not regions:
        return EMPTY_PROMPT.format(category=normalize_category(category))
    return str(list(regions))


def spectral_prompt(
    image: np.ndarray,
    category: str,
    bands: BandSpec | str | Sequence[str],
    style: Style = "paper",
    valid: np.ndarray | None = None,
    connectivity: int = 8,
    max_regions: int = 10,
    threshold: float | None = None,
) -> str:
    """APG prompt text of one image for one category.

    Args:
        image: C×H×W multispectral image.
        category: vegetation, water or building(s).
        bands: the image's band spec (preset name, list of names or ``BandSpec``).
        style: ``"paper"`` or ``"released"`` attribute format.
        valid: H×W validity; invalid pixels are outside every region and out of the Otsu
            threshold.
        connectivity: 8 or 4.
        max_regions: regions kept (largest first).
        threshold: the index cut (a whole scene's Otsu threshold for one tile of it); None:
            Otsu's threshold of ``image``.

    Returns:
        The region list as text (see :func:`format_prompt`).
    """
    mask = coarse_mask(image, category, bands, valid, threshold)
    regions = region_attributes(mask, style=style, connectivity=connectivity, max_regions=max_regions)
    return format_prompt(regions, category)


def instruction(category: str, prompt: str | None, template: Literal["spectral", "plain"] = "spectral") -> str:
    """The SPIE instruction for a category.

    Args:
        category: vegetation, water or building(s) (``buildings`` is written ``building``).
        prompt: the spectral prompt (required for ``"spectral"``, ignored for ``"plain"``).
        template: ``"spectral"``: "Based on the provided image and the attributes of the
            {category} regions, please provide a detailed description of them: {prompt}";
            ``"plain"``: the no-spectral-prompt ablation as the paper gives it (Sec. IV-C1),
            "You are an expert specializing in remote sensing. Based on the provided image
            and the {category} regions, please provide a detailed description of them."

    The image placeholder (``<image>\\n`` in the released LLaVA data) is not included; the
    chat template / exporter adds it.
    """
    cat = normalize_category(category)
    if template == "spectral":
        if prompt is None:
            raise ValueError(
                "instruction: the 'spectral' template needs a spectral prompt; "
                "use template='plain' for the no-prompt ablation"
            )
        return SPECTRAL_TEMPLATE.format(category=cat, prompt=prompt)
    if template == "plain":
        return PLAIN_TEMPLATE.format(category=cat)
    raise ValueError(f"instruction: template must be 'spectral' or 'plain', got {template!r}")

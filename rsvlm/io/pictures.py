"""Picture helpers: band composites, mask overlays, error maps, PNG files, mask figures and curves.

Arrays: images are ``C×H×W`` (bands first, as in the datasets and models), pictures are
``H×W×3`` uint8 (as image files and matplotlib want them), masks are ``H×W`` bool.
Tensors are accepted wherever arrays are. Figures are drawn with matplotlib's Agg canvas on
their own ``Figure`` objects (no pyplot global state), and every file is written with
:func:`rsvlm.io.atomic.atomic_write` (a temporary file beside its target, moved into place with
``os.replace``), so a crash never leaves a half-written picture; existing files are only
replaced when asked.

:func:`composite_or_stretch` is the one place that decides how an image of named bands is shown:
true colour when the bands allow it, else false colour, else the first band in grey.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from einops import rearrange
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from rsvlm.io.atomic import atomic_write

COMPOSITES: dict[str, tuple[str, str, str]] = {
    "true": ("red", "green", "blue"),
    "false": ("nir", "red", "green"),
}
CompositeKind = Literal["auto", "true", "false"]


def _numpy(array) -> np.ndarray:
    """A numpy view of an array or (CPU/GPU, grad or not) tensor."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def stretch(bands, percentiles: tuple[float, float] = (2, 98)) -> np.ndarray:
    """Percentile-stretch 1 or 3 bands ``C×H×W`` to a picture ``H×W×3`` uint8.

    Each band is mapped linearly so that its low percentile becomes 0 and its high one 255,
    clipping outside. Non-finite pixels are left out of the percentiles and drawn black; a
    constant band is drawn black. One band is repeated to grey.
    """
    x = _numpy(bands).astype(np.float64)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"stretch: bands must be C×H×W with C = 1 or 3, got shape {x.shape}")
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"stretch: percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    out = np.zeros(x.shape, dtype=np.float64)
    for i, band in enumerate(x):
        finite = np.isfinite(band)
        if not finite.any():
            continue
        lo, hi = np.percentile(band[finite], [lo_p, hi_p])
        if hi > lo:
            out[i] = np.where(finite, np.clip((band - lo) / (hi - lo), 0.0, 1.0), 0.0)
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return rearrange(np.rint(out * 255).astype(np.uint8), "c h w -> h w c")


def composite(
    image,
    band_names: Sequence[str],
    kind: Literal["true", "false"] = "true",
    percentiles: tuple[float, float] = (2, 98),
) -> np.ndarray:
    """True-colour (red, green, blue) or false-colour (nir, red, green) picture ``H×W×3`` uint8.

    Args:
        image: ``C×H×W`` bands.
        band_names: the C band names, in order; matched case-insensitively.
        kind: ``"true"`` or ``"false"``.
        percentiles: passed to :func:`stretch`.
    """
    x = _numpy(image)
    if kind not in COMPOSITES:
        raise ValueError(f"composite: kind must be one of {sorted(COMPOSITES)}, got {kind!r}")
    if x.ndim != 3 or x.shape[0] != len(band_names):
        raise ValueError(
            f"composite: image must be C×H×W with C = len(band_names) = {len(band_names)}, got shape {x.shape}"
        )
    lookup = {name.lower(): i for i, name in enumerate(band_names)}
    picks = []
    for name in COMPOSITES[kind]:
        if name not in lookup:
            raise ValueError(
                f"composite: a {kind}-colour composite needs band {name!r}, but band_names are {list(band_names)}"
            )
        picks.append(lookup[name])
    return stretch(x[picks], percentiles)


def composite_kind(band_names: Sequence[str] | None, kind: CompositeKind = "auto") -> str | None:
    """The composite ``band_names`` allow: ``"true"``, else ``"false"`` (``kind="auto"``), else None.

    With ``kind="true"`` or ``"false"`` that composite is required: a missing band raises
    ``ValueError`` naming it. Band names are matched case-insensitively.
    """
    if kind != "auto" and kind not in COMPOSITES:
        raise ValueError(f"composite kind must be 'auto' or one of {sorted(COMPOSITES)}, got {kind!r}")
    names = {name.lower() for name in band_names or []}
    for candidate in ("true", "false") if kind == "auto" else (kind,):
        if all(band in names for band in COMPOSITES[candidate]):
            return candidate
    if kind != "auto":
        missing = [band for band in COMPOSITES[kind] if band not in names]
        raise ValueError(
            f"a {kind}-colour composite needs bands {COMPOSITES[kind]}; {missing} missing from {list(band_names or [])}"
        )
    return None


def composite_or_stretch(
    image,
    band_names: Sequence[str] | None,
    kind: CompositeKind = "auto",
    percentiles: tuple[float, float] = (2, 98),
) -> np.ndarray:
    """Picture ``H×W×3`` uint8 of an image ``C×H×W``: true colour, else false colour, else grey.

    Args:
        image: ``C×H×W`` bands.
        band_names: the C band names, in order, or None (unknown bands: the first band in grey).
        kind: ``"auto"`` falls back from true colour (red, green, blue) to false colour (nir,
            red, green) to a grey stretch of the first band; ``"true"`` / ``"false"`` require
            that composite (``ValueError`` naming the missing band otherwise).
        percentiles: passed to :func:`stretch`.
    """
    chosen = composite_kind(band_names, kind)
    if chosen is None:
        return stretch(_numpy(image)[:1], percentiles)
    return composite(image, list(band_names or []), chosen, percentiles)


def overlay(rgb, mask, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.45) -> np.ndarray:
    """Blend ``color`` into ``rgb`` (``H×W×3`` uint8) where ``mask`` (``H×W`` bool) is True.

    Masked pixels become ``round((1 − alpha)·rgb + alpha·color)``; others are unchanged.
    """
    rgb, mask = _numpy(rgb), _numpy(mask)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"overlay: rgb must be H×W×3 uint8, got {rgb.dtype} {rgb.shape}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"overlay: mask shape {mask.shape} must equal the picture's H×W {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    mask = mask.astype(bool)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * np.asarray(color, dtype=np.float64)
    out = rgb.copy()
    out[mask] = np.clip(np.rint(blended[mask]), 0, 255).astype(np.uint8)
    return out


#: Colours of :func:`error_map`: hits, false alarms, misses (not scored pixels are darkened).
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {"tp": (0, 200, 0), "fp": (255, 0, 0), "fn": (0, 120, 255)}


def error_map(rgb, pred, target, valid=None, alpha: float = 0.6) -> np.ndarray:
    """Where a predicted mask agrees with its reference, drawn over the picture ``H×W×3`` uint8.

    True positives are blended with green, false positives (predicted, not in the reference) with
    red and false negatives (in the reference, missed) with blue, each by ``alpha``
    (:data:`ERROR_COLOURS`, :func:`overlay`); true negatives stay as the picture. Pixels outside
    ``valid`` (``H×W`` bool; None: all valid) are not scored: they are halved towards black and
    get no colour.
    """
    pred, target = _numpy(pred).astype(bool), _numpy(target).astype(bool)
    valid = np.ones(pred.shape, bool) if valid is None else _numpy(valid).astype(bool)
    if not pred.shape == target.shape == valid.shape:
        raise ValueError(
            f"error_map: prediction {pred.shape}, reference {target.shape} and valid {valid.shape} must share H×W"
        )
    out = overlay(rgb, ~valid, color=(0, 0, 0), alpha=0.5)
    cases = {"tp": pred & target, "fp": pred & ~target, "fn": ~pred & target}
    for case, where in cases.items():
        out = overlay(out, where & valid, color=ERROR_COLOURS[case], alpha=alpha)
    return out


def save_png(path: str | os.PathLike, array, overwrite: bool = False) -> Path:
    """Write a picture ``H×W×3``/``H×W×4`` uint8, or a mask/grey ``H×W`` (bool or uint8), as PNG.

    Bool masks are written as 0/255. Refuses to replace an existing file unless ``overwrite``.
    """
    x = _numpy(array)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    if x.dtype != np.uint8 or not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (3, 4))):
        raise ValueError(f"save_png: {path}: expected H×W, H×W×3 or H×W×4 uint8 (or H×W bool), got {x.dtype} {x.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(x).save(tmp, format="PNG"), overwrite)


def save_figure(path: str | os.PathLike, fig: Figure, overwrite: bool = False) -> Path:
    """Write a matplotlib ``Figure`` (built without pyplot) as PNG, atomically."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite)


def save_mask_figure(
    path: str | os.PathLike,
    rgb,
    pred,
    target=None,
    overwrite: bool = False,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Side-by-side panels: the picture, the prediction overlay (red) and the target overlay (green).

    Args:
        path: PNG file to write.
        rgb: ``H×W×3`` uint8 picture (e.g. from :func:`composite`).
        pred: ``H×W`` bool predicted mask.
        target: optional ``H×W`` bool reference mask (its panel is left out when None).
        overwrite: replace an existing file.
        panel_inches: width and height of each panel; the file is
            ``round(n_panels·panel_inches·dpi) × round(panel_inches·dpi)`` pixels.
        dpi: dots per inch.
    """
    panels = [("image", _numpy(rgb)), ("prediction", overlay(rgb, pred, color=(255, 0, 0)))]
    if target is not None:
        panels.append(("target", overlay(rgb, target, color=(0, 255, 0))))
    return save_figure(path, _panels_figure(panels, panel_inches, dpi), overwrite)


def save_error_figure(
    path: str | os.PathLike,
    rgb,
    target,
    predictions: Mapping[str, object],
    valid=None,
    title: str | None = None,
    overwrite: bool = False,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Panels side by side: the picture, the reference (yellow) and one :func:`error_map` per method.

    Args:
        path: PNG file to write.
        rgb: ``H×W×3`` uint8 picture.
        target: ``H×W`` bool reference mask.
        predictions: panel title (e.g. ``"index baseline, F1 0.818"``) → ``H×W`` bool predicted mask.
        valid: ``H×W`` bool scored pixels (None: all).
        title: a line above the panels (the colour key is added below it).
        overwrite: replace an existing file.
        panel_inches, dpi: each panel is ``panel_inches`` square; the file is
            ``round(n_panels·panel_inches·dpi) × round((panel_inches + 0.8)·dpi)`` pixels (the
            extra 0.8 inch holds the title and the colour key).
    """
    # Yellow, not green, for the reference: vegetation and water masks lie on green imagery.
    reference = overlay(rgb, _numpy(target).astype(bool), color=(255, 220, 0), alpha=0.6)
    panels = [("image", _numpy(rgb)), ("reference", reference)]
    panels += [(name, error_map(rgb, pred, target, valid)) for name, pred in predictions.items()]
    fig = _panels_figure(panels, panel_inches, dpi, extra_inches=0.8, fontsize=9)
    key = "green: found · red: false alarm · blue: missed · dark: not scored"
    fig.suptitle(f"{title}\n{key}" if title else key, fontsize=9)
    fig.tight_layout()
    return save_figure(path, fig, overwrite)


def _panels_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    panel_inches: float,
    dpi: int,
    extra_inches: float = 0.0,
    fontsize: float | None = None,
) -> Figure:
    """Titled pictures ``H×W×3`` side by side, each ``panel_inches`` wide, ``extra_inches`` of
    height added for titles above them."""
    fig = Figure(figsize=(panel_inches * len(panels), panel_inches + extra_inches), dpi=dpi)
    for i, (title, picture) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=fontsize)
        ax.set_axis_off()
    return fig


def plot_curves(
    path: str | os.PathLike,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    overwrite: bool = False,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Line plot of several named series over shared ``xs`` (e.g. loss or F1 per epoch), as PNG.

    The file is ``round(figsize[0]·dpi) × round(figsize[1]·dpi)`` pixels.
    """
    if not series:
        raise ValueError(f"plot_curves: {path}: no series to plot")
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"plot_curves: {path}: series {name!r} has {len(ys)} values but xs has {len(xs)}")
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        ax.plot(list(xs), list(ys), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(path, fig, overwrite)

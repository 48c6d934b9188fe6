"""Sample transforms: per-band normalisation, aspect-preserving resize + pad, flips/rot90.

All functions take and return torch tensors: image ``C×H×W`` float32, mask ``1×H×W`` float32
(0/1), valid ``1×H×W`` bool. Order used by the datamodule: normalise → resize/pad →
augment.

Padding: the resized image sits in the **top-left** corner of the ``size``×``size`` canvas;
the bottom rows / right columns are padded with **0 after normalisation, i.e. the band mean**,
the mask with 0, and the padded pixels are marked invalid (``valid`` False), so losses and
metrics ignore them. Invalid input pixels are likewise set to 0 (the mean) by
:func:`normalize`, so NaN never reaches a model.

Normalisation (:data:`NORMALIZATIONS`, the ``normalization`` option of the datamodules):

* ``"dataset"`` (default): ``(x − mean) / std`` with the dataset's band statistics
  (``stats.json``); the model then depends on the training sensor's units.
* ``"image"``: each band of each image (or prediction tile) by its own mean and standard
  deviation over the valid pixels; a sensor's gain and offset cancel out.
* ``"robust_image"``: each band by its own median and interquartile range / 1.349 (the IQR
  of a normal distribution is 1.349 σ, so the scale matches ``"image"`` on Gaussian data)
  over the valid pixels; a few saturated or cloudy pixels barely move it.
* ``"robust_image_floor"``: as ``"robust_image"``, but no band's scale is below
  :data:`SCALE_FLOOR` times the image's level (the mean over bands of ``|median|``). A
  near-uniform image (a tile inside a lake, an 8-bit water patch whose NIR is 0 everywhere)
  has almost no spread, and dividing by it stretches sensor noise and quantisation steps into
  contrast no mixed scene has; the floor leaves mixed scenes as they were and keeps a uniform
  one nearly flat.

A band with zero spread (constant, or fewer than two valid pixels) is divided by 1, so it
maps to 0 instead of NaN/inf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Normalization = Literal["dataset", "image", "robust_image", "robust_image_floor"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
# IQR of a standard normal distribution: IQR / 1.349 estimates σ.
IQR_TO_STD = 1.3489795003921634
#: ``"robust_image_floor"``: the smallest scale a band gets, as a share of the image's level.
SCALE_FLOOR = 0.1


def check_normalization(value: str, where: str = "normalization") -> str:
    """``value`` if it is one of :data:`NORMALIZATIONS`, else a ``ValueError`` naming ``where``."""
    if value not in NORMALIZATIONS:
        raise ValueError(f"{where} must be one of {', '.join(NORMALIZATIONS)}; got {value!r}")
    return value


def image_statistics(image: Tensor, valid: Tensor, method: Normalization) -> tuple[Tensor, Tensor]:
    """Per-band centre and scale of one image over its valid pixels.

    Args:
        image: ``C×H×W`` float (NaN allowed where invalid).
        valid: ``1×H×W`` or ``H×W`` bool.
        method: ``"image"`` (mean, population std), ``"robust_image"`` (median, IQR / 1.349) or
            ``"robust_image_floor"`` (the same, each scale at least :data:`SCALE_FLOOR` × the mean
            over bands of ``|median|``).

    Returns:
        ``(centre, scale)``, each ``(C,)`` float64; scale 1 where a band has no spread (and, with
        the floor, the image has no level), centre 0 and scale 1 when no pixel is valid.
    """
    c = image.shape[0]
    v = valid.reshape(image.shape[-2:]).bool()
    pixels = image.double()[:, v]  # C×N
    if pixels.shape[1] == 0:
        return torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    if method == "image":
        centre, scale = pixels.mean(dim=1), pixels.std(dim=1, correction=0)
    elif method in ("robust_image", "robust_image_floor"):
        # numpy: torch.quantile refuses inputs of more than 2**24 elements.
        q = torch.from_numpy(np.quantile(pixels.numpy(), [0.25, 0.5, 0.75], axis=1))
        centre, scale = q[1], (q[2] - q[0]) / IQR_TO_STD
        if method == "robust_image_floor":
            scale = scale.clamp(min=SCALE_FLOOR * float(centre.abs().mean()))
    else:
        raise ValueError(
            f"image_statistics: method must be 'image', 'robust_image' or 'robust_image_floor', got {method!r}"
        )
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    return centre, scale


def normalize_as(
    image: Tensor,
    valid: Tensor,
    method: Normalization,
    mean: Tensor | np.ndarray | None = None,
    std: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Normalise ``image`` by ``method`` (see the module docstring); invalid pixels → 0.

    Args:
        image: ``C×H×W`` float.
        valid: ``1×H×W`` or ``H×W`` bool.
        method: ``"dataset"`` uses ``mean``/``std`` (``(C,)``, required); ``"image"`` and
            ``"robust_image"`` use the image's own statistics (:func:`image_statistics`).

    Returns:
        ``C×H×W`` float32.
    """
    check_normalization(method)
    if method == "dataset":
        if mean is None or std is None:
            raise ValueError("normalize_as: normalization 'dataset' needs the dataset's mean and std")
        return normalize(image, valid, mean, std)
    centre, scale = image_statistics(image, valid, method)
    return normalize(image, valid, centre, scale)


#: Suffix of an index channel that is the index's coarse mask (index > Otsu's threshold), SPEX's APG prior.
OTSU_SUFFIX = "_otsu"
#: Suffix of an index channel that is the index's margin over Otsu's threshold (index − threshold): the
#: coarse mask's signed distance from its cut, so a prior can be sure far from it and unsure near it.
MARGIN_SUFFIX = "_margin"
_CUT_SUFFIXES = (OTSU_SUFFIX, MARGIN_SUFFIX)


def index_of_channel(name: str) -> str:
    """The index an index channel is computed from: ``ndwi_otsu`` and ``ndwi_margin`` → ``ndwi``."""
    for suffix in _CUT_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def needs_threshold(name: str) -> bool:
    """Whether index channel ``name`` is cut at Otsu's threshold (:data:`OTSU_SUFFIX`, :data:`MARGIN_SUFFIX`)."""
    return name.endswith(_CUT_SUFFIXES)


def check_threshold_jitter(value: float, field: str) -> float:
    """``value`` as a float if it is ≥ 0 (index units; NaN is not), else a one-line error naming ``field``."""
    if not value >= 0:
        raise ValueError(f"{field}: must be ≥ 0 (index units), got {value}")
    return float(value)


def check_index_channels(indices: Sequence[str]) -> tuple[str, ...]:
    """``indices`` as a tuple; a ValueError names the first that is neither an index of
    :data:`rsvlm.data.indices.INDEX_BANDS` nor one followed by :data:`OTSU_SUFFIX` or :data:`MARGIN_SUFFIX`."""
    from rsvlm.data.indices import INDEX_BANDS

    for name in indices:
        if index_of_channel(name) not in INDEX_BANDS:
            known = ", ".join(f"{i}{suffix}" for i in INDEX_BANDS for suffix in ("", *_CUT_SUFFIXES))
            raise ValueError(f"index_channels: unknown index {name!r}; known: {known}")
    return tuple(indices)


def _index_maps(raw: np.ndarray, valid: np.ndarray, bands: object, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each index of ``names`` (without a suffix, each once) as ``H×W`` float32 from the raw
    bands, invalid and non-finite pixels read as 0."""
    from rsvlm.data.indices import INDEX_FOR_CATEGORY, category_index

    by_index = {index: category for category, index in INDEX_FOR_CATEGORY.items()}
    filled = np.where(valid[None], np.nan_to_num(np.asarray(raw, dtype=np.float32)), 0.0)
    return {name: category_index(filled, by_index[name], bands) for name in dict.fromkeys(names)}


def _otsu_cuts(maps: Mapping[str, np.ndarray], valid: np.ndarray, indices: Sequence[str]) -> dict[str, float]:
    """Otsu's threshold over ``valid`` of each map that ``indices`` asks a cut of (``ndwi_otsu``,
    ``ndwi_margin`` → ``maps["ndwi"]``); none without a valid pixel."""
    from rsvlm.data.indices import otsu_threshold

    wanted = dict.fromkeys(index_of_channel(n) for n in indices if needs_threshold(n))
    return {name: otsu_threshold(maps[name], valid) for name in wanted} if valid.any() else {}


def index_thresholds(raw: np.ndarray, valid: np.ndarray, bands: object, indices: Sequence[str]) -> dict[str, float]:
    """Otsu's threshold of each index that ``indices`` asks a cut of (``ndwi_otsu`` → ``ndwi``),
    over the valid pixels of ``raw`` (``C×H×W``, ``valid`` ``H×W``): a whole scene's, so that its tiles
    share the threshold the index + Otsu baseline uses. An index without a valid pixel is left out."""
    v = np.asarray(valid, dtype=bool)
    wanted = [index_of_channel(n) for n in indices if needs_threshold(n)]
    return _otsu_cuts(_index_maps(raw, v, bands, wanted), v, indices)


def with_index_channels(
    normalized: Tensor,
    raw: np.ndarray | Tensor,
    valid: Tensor,
    bands: object,
    indices: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    offsets: Mapping[str, float] | None = None,
) -> Tensor:
    """Append spectral-index channels computed from the *raw* bands to a normalised image.

    Per-band normalisation (``image``, ``robust_image``) removes a sensor's gain and offset but
    also the spectral shape across bands; a normalised difference such as NDWI is unchanged by
    a common gain, so the channels give back what separates the materials. A name with
    :data:`OTSU_SUFFIX` (``ndwi_otsu``) is the index's coarse mask, 1 where the index exceeds Otsu's
    threshold and 0 elsewhere (:func:`rsvlm.data.indices.coarse_mask`, SPEX's APG prior as a map); one
    with :data:`MARGIN_SUFFIX` (``ndwi_margin``) is the index minus that threshold.

    Args:
        normalized: ``C×H×W`` the normalised bands.
        raw: ``C×H×W`` the same bands before normalisation.
        valid: ``1×H×W`` or ``H×W`` bool; invalid pixels get 0.
        bands: the band spec of ``raw`` (names the bands each index needs).
        indices: index names of :data:`rsvlm.data.indices.INDEX_BANDS` (``ndvi``, ``ndwi``, ``ndbi``),
            each optionally with :data:`OTSU_SUFFIX` or :data:`MARGIN_SUFFIX`.
        thresholds: index → the threshold of its coarse mask (a whole scene's, :func:`index_thresholds`,
            when ``raw`` is one tile of it); an index not in it is thresholded over ``raw``'s valid pixels.
        offsets: index → an amount added to its threshold (a training sample's moved cut,
            :class:`rsvlm.data.spie.dataset.SpieDataset`'s ``threshold_jitter``); 0 for an index not in it.

    Returns:
        ``(C+K)×H×W`` float32, the indices in ``[−1, 1]`` (0 where undefined), the masks in ``{0, 1}``,
        the margins in ``[−2, 2]`` (0 without a valid pixel).
    """
    if not indices:
        return normalized
    check_index_channels(indices)
    data = raw.numpy() if isinstance(raw, Tensor) else np.asarray(raw)
    v = valid.reshape(data.shape[-2:]).numpy().astype(bool)
    maps = _index_maps(data, v, bands, [index_of_channel(name) for name in indices])
    given = dict(thresholds or {})
    cuts = {**_otsu_cuts(maps, v, [n for n in indices if index_of_channel(n) not in given]), **given}
    shift = dict(offsets or {})
    cuts = {base: cut + shift.get(base, 0.0) for base, cut in cuts.items()}
    channels = []
    for name in indices:
        base = index_of_channel(name)
        values = maps[base]
        if needs_threshold(name) and base not in cuts:
            values = np.zeros_like(values)
        elif name.endswith(OTSU_SUFFIX):
            values = values > cuts[base]
        elif name.endswith(MARGIN_SUFFIX):
            values = values - cuts[base]
        channels.append(np.where(v, values, 0.0))
    extra = torch.from_numpy(np.stack(channels).astype(np.float32))
    return torch.cat([normalized.float(), extra], dim=0)


def normalize(image: Tensor, valid: Tensor, mean: Tensor | np.ndarray, std: Tensor | np.ndarray) -> Tensor:
    """(image − mean) / std per band; invalid pixels → 0.

    Args:
        image: ``C×H×W`` float.
        valid: ``1×H×W`` or ``H×W`` bool.
        mean, std: ``(C,)`` per-band statistics (in the image's band order).

    Returns:
        ``C×H×W`` float32.
    """
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    if m.shape[0] != image.shape[0] or s.shape[0] != image.shape[0]:
        raise ValueError(
            f"normalize: image has {image.shape[0]} bands but statistics have {m.shape[0]} means / {s.shape[0]} stds"
        )
    out = (image.float() - m) / s
    v = valid.reshape(1, *image.shape[-2:]).bool()
    return torch.where(v, out, torch.zeros((), dtype=out.dtype))


def resize_pad(
    image: Tensor, mask: Tensor | None, valid: Tensor, size: int
) -> tuple[Tensor, Tensor | None, Tensor, dict[str, Any]]:
    """Resize so the longer side is ``size`` (aspect kept), then pad bottom/right to a square.

    The image is resized bilinearly (antialiased when shrinking); mask and validity by
    nearest neighbour so they stay binary.

    Args:
        image: ``C×H×W`` float (already normalised: the pad value 0 is the band mean).
        mask: ``1×H×W`` float mask or None.
        valid: ``1×H×W`` bool.
        size: output side S.

    Returns:
        ``(image C×S×S, mask 1×S×S | None, valid 1×S×S, info)`` where ``info`` has
        ``original_size`` (H, W), ``resized_size`` (h, w), ``scale`` (h/H) and ``pad``
        (top, left, bottom, right) in output pixels.
    """
    h0, w0 = int(image.shape[-2]), int(image.shape[-1])
    scale = size / max(h0, w0)
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    if (h, w) != (h0, w0):
        image = F.interpolate(
            image[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
        valid = F.interpolate(valid[None].float(), size=(h, w), mode="nearest-exact")[0] > 0.5
        if mask is not None:
            mask = F.interpolate(mask[None].float(), size=(h, w), mode="nearest-exact")[0]
    pad = (0, 0, size - h, size - w)
    if pad[2] or pad[3]:
        # F.pad order: (left, right, top, bottom) of the last two dims.
        spec = (0, pad[3], 0, pad[2])
        image = F.pad(image, spec, value=0.0)
        valid = F.pad(valid, spec, value=False)
        if mask is not None:
            mask = F.pad(mask, spec, value=0.0)
    info = {"original_size": [h0, w0], "resized_size": [h, w], "scale": h / h0, "pad": list(pad)}
    return image, mask, valid, info


def random_dihedral(
    image: Tensor, mask: Tensor | None, valid: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor | None, Tensor, dict[str, int]]:
    """One of the 8 flips/rotations, the same for image, mask and validity.

    ``k`` quarter turns counter-clockwise (``torch.rot90``), then a left-right flip when
    ``flip`` is 1; both drawn from ``generator``.

    Returns:
        ``(image, mask, valid, {"rot90": k, "flip": flip})``.
    """
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip = int(torch.randint(0, 2, (1,), generator=generator))

    def apply(x: Tensor) -> Tensor:
        x = torch.rot90(x, k, dims=(-2, -1)) if k else x
        return torch.flip(x, dims=(-1,)) if flip else x

    return (apply(image), None if mask is None else apply(mask), apply(valid), {"rot90": k, "flip": flip})

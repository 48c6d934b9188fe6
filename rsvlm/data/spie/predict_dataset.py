"""Tiles of GeoTIFFs of any size with their SPIE instruction, for prediction."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rsvlm.contracts import MissingFileError
from rsvlm.data.bands import BandError, BandSpec, band_spec, described_bands
from rsvlm.data.raster import georef_meta, read_header, read_window
from rsvlm.data.tiling import Window, check_flips, flip_tile, tile_windows
from rsvlm.data.transforms import Normalization, check_index_channels, check_normalization


@dataclass
class _SceneContext:
    """A scene's statistics shared by its tiles (see :meth:`TiledPredictDataset._context`)."""

    thresholds: dict[str, float] = field(default_factory=dict)
    centre: torch.Tensor | None = None  # (C,) per-band normalisation centre, with statistics="scene"
    scale: torch.Tensor | None = None


@dataclass
class _SceneInfo:
    path: str
    height: int
    width: int
    crs: str | None
    transform: list[float] | None
    windows: list[Window] = field(default_factory=list)
    file_bands: tuple[str, ...] = ()  # the file's bands in file order (its overlay is drawn from them)
    indexes: list[int] | None = None  # 1-based file bands read, in the model's order; None: all, as stored


def _open_info(path: str, bands: BandSpec, file_bands: BandSpec | None) -> _SceneInfo:
    """A scene file's size, georeferencing and which of its bands are the model's.

    The file's bands are named by ``file_bands`` if given, else by its band descriptions when
    they are band names (:func:`rsvlm.data.bands.described_bands`), else taken to be the
    model's in the model's order (then only their number can be checked).
    """
    if not os.path.exists(path):
        raise MissingFileError(f"predict input not found: {path}")
    header = read_header(path)
    georef = georef_meta(header.crs, header.transform)
    named = file_bands or described_bands(header.descriptions)
    if named is None:
        if header.count != len(bands):
            raise BandError(
                f"{path}: has {header.count} bands but the model reads {len(bands)} ({', '.join(bands.names)}); "
                "name the file's bands in order (predict_bands, or bands= in Python: a preset such as "
                "'sentinel2' or a list) and the model's are read by name",
                spec=bands,
                path=path,
            )
        return _SceneInfo(path, header.height, header.width, **georef, file_bands=bands.names)
    named_by = "predict_bands" if file_bands is not None else "its band descriptions"
    named.check_count(header.count, path=path, declared_by=named_by)
    missing = [b for b in bands.names if not named.has(b)]
    if missing:
        raise BandError(
            f"{path}: has no band {missing[0]!r}, which the model reads ({named_by} name "
            f"{', '.join(named.names)}; the model reads {', '.join(bands.names)})",
            band=missing[0],
            spec=named,
            path=path,
        )
    indexes = [named.index(b) + 1 for b in bands.names]
    as_stored = indexes == list(range(1, header.count + 1))
    return _SceneInfo(
        path, header.height, header.width, **georef, file_bands=named.names, indexes=None if as_stored else indexes
    )


class TiledPredictDataset(Dataset):
    """Tiles of GeoTIFFs for prediction, read with rasterio windows (a scene is never loaded whole).

    Args:
        paths: rasters holding the model's ``bands``: exactly those, in that order, or any bands
            named by ``file_bands`` or by the file's band descriptions (the model's are read
            by name; a file without one of them is an error naming the file and the band).
        bands: the model's band spec (preset name or list of names).
        mean, std: ``(C,)`` band statistics in the order of ``bands``.
        tile: model input side; scenes are cut into ``tile``×``tile`` windows.
        overlap: pixels shared by neighbouring tiles.
        categories: one pass per category, each tile with its APG instruction; None: no text.
        template: ``"spectral"`` (instruction with the tile's APG prompt) or ``"plain"``.
        apg_style: ``"paper"`` or ``"released"``.
        normalization: ``"dataset"`` (``mean``/``std``), ``"image"``, ``"robust_image"`` or ``"robust_image_floor"``
            (each tile by its own valid pixels; see :mod:`rsvlm.data.transforms`). Use the one
            the model was trained with.
        index_channels: spectral indices appended as channels, as the model was trained with
            (:func:`rsvlm.data.transforms.with_index_channels`); a coarse-mask channel (``ndwi_otsu``)
            is cut at the whole scene's Otsu threshold, which costs one read of the whole scene.
        statistics: where per-image statistics come from: ``"tile"`` (each tile's own, as records
            cut from larger scenes were built) or ``"scene"`` (the whole scene's: ``image`` /
            ``robust_image`` normalisation and the APG prompt's Otsu threshold, so that a tile is
            normalised and prompted as the whole scene would be; for a model trained on whole
            scenes, such as the generated demos; one more read of the whole scene).
        flips: test-time flips of every tile (names of :data:`rsvlm.data.tiling.FLIPS`, ``"none"``
            among them): each tile is yielded once per flip, its data mirrored right after it is
            read, so its normalisation, index channels and APG prompt are those of the mirrored
            tile (the scene's statistics do not change under a flip). The writer and
            :func:`rsvlm.inference.tiles.run_tiles` mirror each prediction back and average them.
        file_bands: the input files' bands in file order (a preset name such as ``"sentinel2"``
            or a list), when they are not exactly ``bands``; overrides their band descriptions.

    Samples follow the datamodule's predict contract: ``image`` ``C×T×T`` float32 (normalised,
    invalid and padding pixels 0), ``valid`` ``1×T×T`` bool, ``category``, ``instruction``,
    ``response`` (empty), and ``meta``: ``image`` (path), ``window`` ``[row, col, h, w]``,
    ``scene_size`` ``[H, W]``, ``tile_index``, ``num_tiles``, ``crs``, ``transform``,
    ``bands`` (the model's, the channels of ``image``), ``file_bands`` (the file's, in file order,
    for its overlay), ``category``, ``categories``, ``pad`` ``[top, left, bottom, right]``, ``flip``
    (the name) and ``num_flips``.

    A tile without a single valid pixel (outside a scene's footprint) is still yielded, with
    an empty-region prompt; its pixels are invalid and written as 0 in the mask. A scene
    without any valid pixel is an error naming the file.
    """

    def __init__(
        self,
        paths: Sequence[str],
        bands: Sequence[str] | str,
        mean: np.ndarray | Sequence[float],
        std: np.ndarray | Sequence[float],
        tile: int = 512,
        overlap: int = 64,
        categories: Sequence[str] | None = None,
        template: Literal["spectral", "plain"] = "spectral",
        apg_style: Literal["paper", "released"] = "paper",
        normalization: Normalization = "dataset",
        index_channels: Sequence[str] = (),
        statistics: Literal["tile", "scene"] = "tile",
        flips: Sequence[str] = ("none",),
        file_bands: Sequence[str] | str | None = None,
    ) -> None:
        if not paths:
            raise ValueError("TiledPredictDataset: no input paths given (field 'predict_paths' is empty)")
        self.bands = band_spec(bands)
        self.file_bands = None if file_bands is None else band_spec(file_bands)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != (len(self.bands),) or self.std.shape != (len(self.bands),):
            raise ValueError(
                f"TiledPredictDataset: mean/std must have one value per band ({len(self.bands)}), "
                f"got {self.mean.shape} / {self.std.shape}"
            )
        self.tile, self.overlap = tile, overlap
        self.categories = list(categories) if categories else [None]
        self.template, self.apg_style = template, apg_style
        self.normalization = check_normalization(normalization, "TiledPredictDataset.normalization")
        self.index_channels = check_index_channels(index_channels)
        if statistics not in ("tile", "scene"):
            raise ValueError(f"TiledPredictDataset.statistics: must be 'tile' or 'scene', got {statistics!r}")
        self.statistics = statistics
        self.flips = check_flips(flips, "TiledPredictDataset.flips")
        self.scene_context: dict[int, _SceneContext] = {}
        self._all_invalid: dict[int, bool] = {}  # scene → no valid pixel (read once, not per category and flip)
        self.scenes = [self._open(str(p)) for p in paths]
        self.items: list[tuple[int, int, str | None, str]] = []
        for s, scene in enumerate(self.scenes):
            scene.windows = tile_windows(scene.height, scene.width, tile, overlap)
            for category in self.categories:
                self.items += [(s, t, category, f) for t in range(len(scene.windows)) for f in self.flips]

    def outputs(self) -> list[tuple[str, str | None, bool]]:
        """``(path, category, several categories)`` of every scene pass, for output names."""
        many = len(self.categories) > 1
        return [(scene.path, c, many) for scene in self.scenes for c in self.categories]

    def __len__(self) -> int:
        return len(self.items)

    def _open(self, path: str) -> _SceneInfo:
        return _open_info(path, self.bands, self.file_bands)

    def _read(self, scene: _SceneInfo, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """One window of a scene → (float32 C×h×w in the model's band order, valid h×w)."""
        data, valid, _, _, _ = read_window(scene.path, window, scene.indexes)
        return data, valid

    def __getitem__(self, index: int) -> dict[str, Any]:
        from rsvlm.data.indices import INDEX_FOR_CATEGORY, normalize_category
        from rsvlm.data.spie.apg import instruction, spectral_prompt
        from rsvlm.data.transforms import normalize, normalize_as, with_index_channels

        s, t, category, flip = self.items[index]
        scene = self.scenes[s]
        window = scene.windows[t]
        data, valid = self._read(scene, window)
        if t == 0 and not valid.any() and self._scene_all_invalid(s):
            raise ValueError(f"{scene.path}: every pixel is invalid (nodata / NaN); nothing to predict")
        data, valid = flip_tile(data, flip), flip_tile(valid, flip)
        v = torch.from_numpy(valid)[None]
        context = self._context(s)
        if context.centre is not None:
            image = normalize(torch.from_numpy(data), v, context.centre, context.scale)
        else:
            image = normalize_as(torch.from_numpy(data), v, self.normalization, self.mean, self.std)
        image = with_index_channels(image, data, v, self.bands, self.index_channels, context.thresholds)
        _, _, h, w = window
        pad = [0, 0, self.tile - h, self.tile - w]
        if pad[2] or pad[3]:
            image = F.pad(image, (0, pad[3], 0, pad[2]), value=0.0)
            v = F.pad(v, (0, pad[3], 0, pad[2]), value=False)
        sample: dict[str, Any] = {
            "image": image.contiguous(),
            "valid": v.contiguous(),
            "meta": {
                "image": scene.path,
                "window": list(window),
                "scene_size": [scene.height, scene.width],
                "tile_index": t,
                "num_tiles": len(scene.windows),
                "crs": scene.crs,
                "transform": scene.transform,
                "bands": list(self.bands.names),
                "file_bands": list(scene.file_bands),
                "category": category,
                "categories": [c for c in self.categories if c is not None],
                "pad": pad,
                "flip": flip,
                "num_flips": len(self.flips),
            },
        }
        if category is not None:
            prompt = None
            if self.template == "spectral":
                filled = np.where(valid[None], data, 0)
                scene_cut = self.statistics == "scene"
                cut = context.thresholds.get(INDEX_FOR_CATEGORY[normalize_category(category)]) if scene_cut else None
                prompt = spectral_prompt(filled, category, self.bands, style=self.apg_style, valid=valid, threshold=cut)
            sample.update(
                category=category, response="", instruction=instruction(category, prompt, template=self.template)
            )
        return sample

    def _context(self, s: int) -> _SceneContext:
        """What scene ``s``'s tiles share, from one read of the whole scene (once): the Otsu
        thresholds of the coarse-mask index channels (``ndwi_otsu``), so that every tile is cut where
        the index + Otsu baseline cuts the scene, and with ``statistics="scene"`` the per-band
        normalisation statistics and every category index's threshold (for the APG prompt)."""
        from rsvlm.data.indices import INDEX_BANDS
        from rsvlm.data.transforms import OTSU_SUFFIX, image_statistics, index_thresholds, needs_threshold

        scene_wide = self.statistics == "scene"
        if not scene_wide and not any(map(needs_threshold, self.index_channels)):
            return _SceneContext()
        if s not in self.scene_context:
            scene = self.scenes[s]
            data, valid = self._read(scene, (0, 0, scene.height, scene.width))
            wanted = list(self.index_channels)
            if scene_wide:
                # Only the indices whose bands the model has (a 4-band model has no NDBI).
                wanted += [f"{i}{OTSU_SUFFIX}" for i, pair in INDEX_BANDS.items() if all(map(self.bands.has, pair))]
            context = _SceneContext(thresholds=index_thresholds(data, valid, self.bands, wanted))
            if scene_wide and self.normalization != "dataset":
                centre, scale = image_statistics(torch.from_numpy(data), torch.from_numpy(valid), self.normalization)
                context.centre, context.scale = centre, scale
            self.scene_context[s] = context
        return self.scene_context[s]

    def _scene_all_invalid(self, s: int) -> bool:
        if s not in self._all_invalid:
            scene = self.scenes[s]
            self._all_invalid[s] = not any(self._read(scene, w)[1].any() for w in scene.windows)
        return self._all_invalid[s]


class ArrayPredictDataset(TiledPredictDataset):
    """:class:`TiledPredictDataset` over scenes held in memory instead of GeoTIFFs.

    Args:
        scenes: ``(name, image, valid)`` per scene: ``image`` ``C×H×W`` float32 with the bands
            of ``bands`` in that order, ``valid`` ``H×W`` bool. ``name`` is the scene's
            ``meta["image"]`` and must be unique.
        Others as :class:`TiledPredictDataset`.
    """

    def __init__(
        self,
        scenes: Sequence[tuple[str, np.ndarray, np.ndarray]],
        bands: Sequence[str] | str,
        mean: np.ndarray | Sequence[float],
        std: np.ndarray | Sequence[float],
        **kwargs: Any,
    ) -> None:
        self._arrays = {name: (np.asarray(image, np.float32), np.asarray(valid, bool)) for name, image, valid in scenes}
        if len(self._arrays) != len(scenes):
            raise ValueError("ArrayPredictDataset: scene names must be unique")
        super().__init__([name for name, _, _ in scenes], bands, mean, std, **kwargs)

    def _open(self, path: str) -> _SceneInfo:
        image, valid = self._arrays[path]
        self.bands.check_count(image.shape[0], path=path, declared_by="the model's band spec 'bands'")
        if image.ndim != 3 or valid.shape != image.shape[1:]:
            raise ValueError(f"{path}: image must be C×H×W and valid H×W, got {image.shape} and {valid.shape}")
        return _SceneInfo(path, int(image.shape[1]), int(image.shape[2]), None, None, file_bands=self.bands.names)

    def _read(self, scene: _SceneInfo, window: Window) -> tuple[np.ndarray, np.ndarray]:
        image, valid = self._arrays[scene.path]
        r, c, h, w = window
        return image[:, r : r + h, c : c + w], valid[r : r + h, c : c + w]

"""Prediction outputs users can open: a mask GeoTIFF, an overlay PNG and a JSON per input.

:class:`PredictionWriter` collects the predicted tiles of each scene, stitches them
(:class:`rsvlm.inference.stitch.Stitcher`) and writes the scene's files when its last tile
arrives.

Outputs, per input GeoTIFF and category
---------------------------------------
* ``<out>/<stem>.mask.tif``: uint8 0/1 mask on the source's grid (its CRS and transform),
  via :func:`rsvlm.data.raster.write_mask`; pixels invalid in the source (nodata / NaN) are 0;
* ``<out>/<stem>.overlay.png``: the mask in red over a true-colour (red, green, blue) or,
  failing that, false-colour (nir, red, green) composite, or the first band in grey; scenes
  larger than ``overlay_max_side`` are drawn downsampled;
* ``<out>/<stem>.prob.tif`` (``probabilities=True``): the mask probability, float32, NaN where the
  source has no data, on the source's grid;
* ``<out>/<stem>.json``: the generated description of each tile (a whole-image model's answer:
  its one tile, with the question as ``instruction``), the category, threshold, tiling and the
  paths written;
* ``<out>/<stem>.boxes.geojson``, when the answers write boxes or points (``<p>phrase</p>[…]``), or
  segment what they name (``<p>ship</p> [SEG]``: the mask's box,
  :func:`~rsvlm.inference.tile_outputs.segmented_groundings`):
  them in the image's CRS, mapped to the image's pixels and written by the code of
  :meth:`rsvlm.inference.prediction.Prediction.save` (:func:`~rsvlm.inference.tile_outputs.tile_groundings`,
  :func:`~rsvlm.inference.tile_outputs.save_boxes`).

A tile predicted in several test-time flips (meta ``flip`` / ``num_flips``, the data module's
``predict_flips``) is mirrored back and averaged into the scene; the JSON's descriptions and the
boxes are the unflipped pass's. With several categories per image the stem is
``<stem>.<category>``. Inputs are never overwritten, and existing outputs only with
``overwrite=True`` (the error names the file).
Predict on one device: the tiles of a scene must reach the same writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter

from rsvlm.contracts import OutputExistsError
from rsvlm.data.bands import BandError
from rsvlm.data.coords import Grounding
from rsvlm.data.raster import Raster, open_raster, read_header, write_geotiff, write_mask
from rsvlm.inference.stitch import BLENDS, Blend, Stitcher, mask_probabilities, window_prediction
from rsvlm.inference.tile_outputs import answer_groundings, boxes_path, save_boxes, whole_image_tile
from rsvlm.io.atomic import atomic_write_text
from rsvlm.io.pictures import CompositeKind, composite_or_stretch, overlay, save_png


# ---------------------------------------------------------------------------- output files
def output_stem(out_dir: str | os.PathLike, image: str, category: str | None, several: bool) -> Path:
    """``<out_dir>/<stem>`` or ``<out_dir>/<stem>.<category>`` (several categories per image)."""
    stem = Path(image).name
    for suffix in (".tiff", ".tif", ".TIFF", ".TIF"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if several and category:
        stem = f"{stem}.{category}"
    return Path(out_dir) / stem


def output_paths(
    out_dir: str | os.PathLike, image: str, category: str | None, several: bool, probabilities: bool = False
) -> dict[str, Path]:
    """The files written for one image (and category): ``mask``, ``overlay``, ``json`` (and
    ``probabilities`` when asked)."""
    base = output_stem(out_dir, image, category, several)
    paths = {
        "mask": base.with_name(base.name + ".mask.tif"),
        "overlay": base.with_name(base.name + ".overlay.png"),
        "json": base.with_name(base.name + ".json"),
    }
    if probabilities:
        paths["probabilities"] = base.with_name(base.name + ".prob.tif")
    return paths


def write_probabilities(path: Path, probabilities: np.ndarray, valid: np.ndarray, crs: Any, transform: Any) -> Path:
    """The ``H×W`` mask probabilities as a float32 GeoTIFF on the scene's grid, NaN (declared
    nodata) where the scene has no data, so that a GIS can threshold or fuse them."""
    data = np.where(valid, probabilities, np.nan).astype(np.float32)[None]
    return write_geotiff(
        path, data, crs, transform, band_names=["probability"], nodata=float("nan"), compress="deflate"
    )


def check_outputs(paths: dict[str, Path], inputs: set[Path], overwrite: bool) -> None:
    """Refuse to write over an input, or over an existing output unless ``overwrite``."""
    for kind, path in paths.items():
        if path.resolve() in inputs:
            raise OutputExistsError(f"refusing to write the {kind} output over the input file {path}")
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; pass overwrite=True (PredictionWriter) to replace it")


def overlay_picture(
    path: str,
    mask: np.ndarray,
    band_names: Sequence[str] | None,
    max_side: int = 4096,
    composite_kind: CompositeKind = "auto",
    color: tuple[int, int, int] = (255, 0, 0),
    alpha: float = 0.45,
) -> np.ndarray:
    """``h×w×3`` uint8: ``mask`` (scene ``H×W``) over a composite of the scene at ``path``.

    The background is :func:`rsvlm.io.pictures.composite_or_stretch` of the scene (invalid
    pixels black). The scene is read decimated when its longer side exceeds ``max_side``.

    Raises:
        BandError: ``composite_kind`` is ``"true"`` or ``"false"`` and ``band_names`` lack a
            band it needs (names the file).
    """
    height, width = mask.shape
    scale = min(1.0, max_side / max(height, width))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    with open_raster(str(path), f"cannot read raster {path} for its overlay") as src:
        data = src.read(out_shape=(src.count, out_h, out_w)).astype(np.float32)
        masks = src.read_masks(out_shape=(src.count, out_h, out_w))
    data[:, ~np.all(masks > 0, axis=0)] = np.nan
    try:
        rgb = composite_or_stretch(data, band_names, composite_kind)
    except ValueError as err:
        raise BandError(f"{path}: {err}", path=path) from err
    if (out_h, out_w) != (height, width):
        rows = np.arange(out_h) * height // out_h
        cols = np.arange(out_w) * width // out_w
        mask = mask[rows][:, cols]
    return overlay(rgb, mask.astype(bool), color=color, alpha=alpha)


@dataclass
class _SceneState:
    """One scene (and category) being stitched: its first tile's meta, logits, valid ``H×W`` pixels, the
    ``(tile index, flip)`` passes seen, and each tile's boxes in the scene's pixels (by tile index)."""

    meta: dict[str, Any]
    stitcher: Stitcher
    valid: np.ndarray
    descriptions: list[dict[str, Any]] = field(default_factory=list)
    seen: set[tuple[int, str]] = field(default_factory=set)
    groundings: dict[int, list[Grounding]] = field(default_factory=dict)


class PredictionWriter(BasePredictionWriter):
    """Stitch predicted tiles and write mask GeoTIFF, overlay PNG and JSON per input (see module docstring).

    Args:
        output_dir: folder for the outputs (created).
        threshold: a pixel is in the mask when ``sigmoid(logit) > threshold``.
        blend: ``"cosine"`` or ``"mean"`` stitching of overlapping tiles.
        overwrite: replace existing outputs (inputs are never replaced).
        composite: overlay background: ``"auto"`` (true colour, else false colour, else grey),
            ``"true"`` or ``"false"``.
        bands: band names for the composite when the batches' meta does not carry them.
        overlay_max_side: longer side of the overlay PNG at most (larger scenes are downsampled).
        probabilities: also write ``<stem>.prob.tif``, the mask probability (float32, NaN where the
            scene has no data) on the scene's grid.

    Works with :class:`rsvlm.data.spie.predict_dataset.TiledPredictDataset` batches (meta
    ``window``/``scene_size``/``num_tiles``), with whole-image batches resized to the model
    input (meta ``original_size``, ``resized_size``, ``pad``), which are resized back to the
    scene's size, and with the whole-image question batches of
    :class:`rsvlm.data.multitask.predict.WholeImagePredictDataset` (meta ``resize``), mapped back
    by :func:`rsvlm.inference.tile_outputs.whole_image_tile` as ``Prediction.save`` maps them (the
    JSON then also holds the ``instruction`` and ``granularity``).
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float = 0.5,
        blend: Blend = "cosine",
        overwrite: bool = False,
        composite: CompositeKind = "auto",
        bands: list[str] | None = None,
        overlay_max_side: int = 4096,
        probabilities: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"PredictionWriter: threshold must be in (0, 1), got {threshold}")
        if blend not in BLENDS:
            raise ValueError(f"PredictionWriter: blend must be 'cosine' or 'mean', got {blend!r}")
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.blend = blend
        self.overwrite = overwrite
        self.composite = composite
        self.bands = bands
        self.overlay_max_side = overlay_max_side
        self.probabilities = probabilities
        self._scenes: dict[tuple[str, str | None], _SceneState] = {}
        self._inputs: set[Path] = set()
        self.written: list[dict[str, str]] = []

    # ------------------------------------------------------------------ Lightning hooks
    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            raise RuntimeError(
                "PredictionWriter stitches every tile of a scene in one process; predict with one device "
                "(--trainer.devices 1)"
            )
        self._scenes.clear()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        datasets = []
        loaders = trainer.predict_dataloaders
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            datasets.append(getattr(loader, "dataset", None))
        for dataset in datasets:
            if hasattr(dataset, "outputs"):
                plan = dataset.outputs()
                self._inputs |= {Path(p).resolve() for p, _, _ in plan}
                # Refuse before any prediction runs.
                for image, category, several in plan:
                    check_outputs(
                        output_paths(self.output_dir, image, category, several, self.probabilities),
                        self._inputs,
                        self.overwrite,
                    )

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        logits = prediction["mask_logits"]
        texts = prediction.get("texts") or [None] * logits.shape[0]
        metas = prediction.get("meta") or batch.get("meta")
        valid = batch.get("valid")
        if metas is None:
            raise KeyError("PredictionWriter: batches need 'meta' (image path and window) to place predictions")
        for i, meta in enumerate(metas):
            v = valid[i, 0] if valid is not None else torch.ones(logits.shape[-2:], dtype=torch.bool)
            self.add(meta, logits[i, 0], v, texts[i])

    # ------------------------------------------------------------------ stitching
    def add(self, meta: dict[str, Any], logits: torch.Tensor, valid: torch.Tensor, text: str | None) -> Path | None:
        """Add one sample's ``T×T`` logits; writes the scene's files when its last tile arrives.

        Returns the mask path when the scene was written, else None.
        """
        if "resize" in meta:  # a whole-image question (rsvlm.data.multitask.predict): its one tile on the image
            meta, logits, valid, text = whole_image_tile(meta, logits, valid, text)
        image = str(meta["image"])
        category = meta.get("category")
        key = (image, category)
        flip, num_flips = str(meta.get("flip", "none")), int(meta.get("num_flips", 1))
        if "window" in meta:
            height, width = (int(x) for x in meta["scene_size"])
            num_tiles, index = int(meta["num_tiles"]), int(meta["tile_index"])
            window, tile_logits, tile_valid = window_prediction(meta, logits, valid)
        elif "original_size" in meta:
            height, width = (int(x) for x in meta["original_size"])
            rh, rw = (int(x) for x in meta["resized_size"])
            window, num_tiles, index = (0, 0, height, width), 1, 0
            crop = logits[:rh, :rw].float()[None, None]
            tile_logits = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            crop_valid = valid[:rh, :rw].float()[None, None]
            tile_valid = F.interpolate(crop_valid, size=(height, width), mode="nearest-exact")[0, 0] > 0.5
        else:
            raise KeyError(f"PredictionWriter: meta of {image} has neither 'window' nor 'original_size'")
        state = self._scenes.get(key)
        if state is None:
            self._inputs.add(Path(image).resolve())
            several = len(meta.get("categories") or []) > 1
            check_outputs(
                output_paths(self.output_dir, image, category, several, self.probabilities),
                self._inputs,
                self.overwrite,
            )
            state = _SceneState(
                meta={**meta, "several": several},
                stitcher=Stitcher(height, width, self.blend),
                valid=np.zeros((height, width), dtype=bool),
            )
            self._scenes[key] = state
        if (index, flip) in state.seen:
            raise ValueError(f"PredictionWriter: tile {index} (flip {flip}) of {image} arrived twice")
        state.seen.add((index, flip))
        state.stitcher.add(window, tile_logits)
        r, c, h, w = window
        state.valid[r : r + h, c : c + w] |= tile_valid.cpu().numpy().astype(bool)
        if flip == "none":  # a flipped pass's text describes (and places boxes in) the mirror image
            state.descriptions.append({"tile_index": index, "window": list(window), "description": text})
            state.groundings[index] = answer_groundings(meta, tuple(logits.shape[-2:]), text, tile_logits, window[:2])
        if len(state.seen) == num_tiles * num_flips:
            del self._scenes[key]
            return self._write_scene(state)
        return None

    def _write_scene(self, state: _SceneState) -> Path:
        meta = state.meta
        image, category = str(meta["image"]), meta.get("category")
        paths = output_paths(self.output_dir, image, category, meta["several"], self.probabilities)
        groundings = [g for i in sorted(state.groundings) for g in state.groundings[i]]
        boxes = boxes_path(paths["json"]) if any(g.boxes or g.points for g in groundings) else None
        check_outputs({**paths, **({"boxes": boxes} if boxes else {})}, self._inputs, self.overwrite)
        logits = state.stitcher.result()
        probs = mask_probabilities(logits)
        mask = (probs > self.threshold) & state.valid

        header = read_header(image)
        crs, transform = header.crs, header.transform
        height, width = mask.shape
        # write_mask needs only the grid and the source path of `like`, not its pixels.
        like = Raster(
            data=np.broadcast_to(np.float32(0), (1, height, width)),
            valid=np.broadcast_to(True, (height, width)),
            crs=crs,
            transform=transform,
            path=image,
        )
        write_mask(paths["mask"], mask.astype(np.uint8), like, overwrite=self.overwrite)
        if "probabilities" in paths:
            write_probabilities(paths["probabilities"], probs, state.valid, crs, transform)
        bands = meta.get("file_bands") or meta.get("bands") or self.bands  # the file's bands draw its picture
        picture = overlay_picture(image, mask, bands, self.overlay_max_side, self.composite)
        save_png(paths["overlay"], picture, overwrite=self.overwrite)
        if boxes is not None:
            paths["boxes"] = save_boxes(paths["json"], groundings, crs, transform, self.overwrite)
        payload = {
            "image": image,
            "category": category,
            "threshold": self.threshold,
            "blend": self.blend,
            "scene_size": [height, width],
            "crs": None if crs is None else crs.to_string(),
            "transform": None if transform is None else list(transform)[:6],
            "positive_fraction": float(mask.sum() / max(state.valid.sum(), 1)),
            "tiles": sorted(state.descriptions, key=lambda d: d["tile_index"]),
            **{key: meta[key] for key in ("instruction", "granularity") if key in meta},
            "outputs": {k: str(v) for k, v in paths.items()},
        }
        atomic_write_text(paths["json"], json.dumps(payload, indent=1), overwrite=self.overwrite)
        self.written.append({k: str(v) for k, v in paths.items()})
        return paths["mask"]

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._scenes:
            missing = {f"{img} ({cat})": f"{len(s.seen)} tiles" for (img, cat), s in self._scenes.items()}
            raise RuntimeError(f"PredictionWriter: prediction ended before every tile arrived: {missing}")


__all__ = [
    "PredictionWriter",
    "check_outputs",
    "output_paths",
    "output_stem",
    "overlay_picture",
]

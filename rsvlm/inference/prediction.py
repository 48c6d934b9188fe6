"""One image's answer (:class:`Prediction`): texts, probabilities, mask, georeferencing; saved as
``rsvlm predict`` saves it (with the answer's boxes as GeoJSON), shown as an overlay with the
visual prompts it was asked with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.contracts import OutputExistsError, RsvlmError
from rsvlm.data.coords import Grounding
from rsvlm.inference.tile_outputs import answer_groundings, boxes_path, save_boxes


class PredictError(RsvlmError, ValueError):
    """A predict call the model cannot answer (missing category, visual prompts, bad array)."""


@dataclass
class Prediction:
    """One image's answer.

    Attributes:
        image: the input path, or ``"array"`` for an in-memory image.
        category, instruction: what was asked (``instruction`` None: the APG instruction).
        texts: the generated answer of each tile, in tile order.
        probabilities: ``H×W`` float32 mask probability (0 where invalid).
        mask: ``H×W`` bool, ``probabilities > threshold`` on valid pixels.
        valid: ``H×W`` bool, pixels with data.
        crs, transform: the input's georeferencing (None for arrays and plain pictures).
        bands: the model's band names.
        image_bands: the input file's band names in file order, which its overlay is drawn from
            (empty: the model's ``bands``).
        threshold: the probability threshold.
        prompts: the visual prompts asked with (:class:`rsvlm.data.visual_prompts.VisualPrompt`, in
            the image's pixels), drawn on the overlay.
        boxes: (property) the boxes the answers write, in the image's pixels.
    """

    image: str
    category: str | None
    instruction: str | None
    texts: list[str]
    probabilities: np.ndarray
    mask: np.ndarray
    valid: np.ndarray
    crs: Any
    transform: Any
    bands: tuple[str, ...]
    threshold: float
    pixels: np.ndarray | None = None
    image_bands: tuple[str, ...] = ()
    tiles: list[tuple[dict, Any, Any, str]] = field(default_factory=list, repr=False)
    prompts: list[Any] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        """The answers of all tiles, one per line (one tile: its answer)."""
        return "\n".join(self.texts)

    @property
    def boxes(self) -> list[Grounding]:
        """The boxes and points the answers write (``<p>phrase</p>[x0,y0,x1,y1;…]``, normalised on
        the model's input), each in the image's pixels (:func:`rsvlm.inference.tile_outputs.tile_groundings`), tile by tile; for
        an answer that segments what it names (``<p>ship</p> [SEG]``), its mask's box
        (:func:`~rsvlm.inference.tile_outputs.segmented_groundings`); empty for answers without any."""
        found = []
        for meta, logits, _, text in self.tiles:
            if meta.get("flip", "none") != "none":  # a mirrored pass's text places boxes in the mirror image
                continue
            row, col, h, w = (int(v) for v in meta.get("window", (0, 0, *logits.shape[-2:])))
            found += answer_groundings(meta, logits.shape[-2:], text, np.asarray(logits)[:h, :w], (row, col))
        return found

    def show(self, composite: str = "auto", prompts: bool = True) -> np.ndarray:
        """``H×W×3`` uint8: the mask in red over a true- or false-colour composite of the image, and
        (``prompts``) the visual prompts in their slot colours (:func:`draw_prompts`); a scene larger
        than 4096 pixels a side is drawn downsampled, as the writer draws it."""
        from rsvlm.inference.writer import overlay_picture
        from rsvlm.io.pictures import composite_or_stretch, overlay

        if self.pixels is None:
            picture = overlay_picture(self.image, self.mask, self.image_bands or self.bands, composite_kind=composite)
        else:
            rgb = composite_or_stretch(np.where(self.valid[None], self.pixels, np.nan), self.bands, composite)
            picture = overlay(rgb, self.mask, color=(255, 0, 0), alpha=0.45)
        return draw_prompts(picture, self.prompts, self.mask.shape) if prompts and self.prompts else picture

    def save(self, folder: str | os.PathLike, overwrite: bool = False, probabilities: bool = False) -> dict[str, Path]:
        """Write ``<stem>.mask.tif``, ``<stem>.overlay.png`` and ``<stem>.json`` into ``folder``:
        for a file input exactly what ``rsvlm predict``'s writer writes (``<stem>`` the input's
        name), the overlay with the visual prompts drawn when there are some; an array is written
        as ``array.mask.tif`` without georeferencing. When the answers hold boxes or points,
        ``<stem>.boxes.geojson`` too: a FeatureCollection of Polygons (and Points) in the image's
        CRS with each one's ``phrase`` (pixel coordinates and no CRS for a picture without
        georeferencing; :func:`rsvlm.io.geojson.grounding_collection`). ``probabilities``: also
        ``<stem>.prob.tif``, :attr:`probabilities` as float32 with NaN where there is no data
        (the writer's ``probabilities=True``).

        Returns:
            ``{"mask", "overlay", "json"}`` (and ``"boxes"``, ``"probabilities"``) → path. Existing
            files are refused unless ``overwrite``.
        """
        from rsvlm.inference.writer import PredictionWriter, output_paths
        from rsvlm.io.pictures import save_png

        several = len((self.tiles[0][0].get("categories") if self.tiles else None) or []) > 1
        json_path = output_paths(folder, self.image, self.category, several)["json"]
        if any(g.boxes or g.points for g in self.boxes) and boxes_path(json_path).exists() and not overwrite:
            raise OutputExistsError(f"{boxes_path(json_path)} already exists; pass overwrite=True to replace it")
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self.pixels is None:  # the writer writes the boxes too, as `rsvlm predict` does
            writer = PredictionWriter(
                str(folder), threshold=self.threshold, overwrite=overwrite, probabilities=probabilities
            )
            for meta, logits, valid, text in self.tiles:
                writer.add(meta, logits, valid, text)
            paths = {k: Path(v) for k, v in writer.written[-1].items()}
            if self.prompts:  # the writer draws the mask only
                save_png(paths["overlay"], self.show(), overwrite=True)
        else:
            paths = _save_array(self, Path(folder), overwrite, probabilities)
            written = save_boxes(json_path, self.boxes, None, None, overwrite)
            paths.update({"boxes": written} if written else {})
        return paths


def draw_prompts(picture: np.ndarray, prompts: list[Any], size: tuple[int, int]) -> np.ndarray:
    """``picture`` (``h×w×3`` uint8, the image drawn at any size) with ``prompts`` (in pixels of an
    image of ``size`` = ``(H, W)``) painted over it by :func:`rsvlm.prompts.geometry.overlay`: slot k in
    ``PALETTE[k + 1]`` (the palette's red is the mask's), boxes as outlines."""
    from rsvlm.data.visual_prompts import prompt_batch
    from rsvlm.prompts.geometry import PALETTE, overlay

    most = max([2] + [len(p.vertices) for p in prompts if p.vertices is not None])
    batch = prompt_batch([prompts], tuple(size), max_vertices=most)
    return overlay(picture, batch, colours=PALETTE[1:] + PALETTE[:1])


def _save_array(prediction: Prediction, folder: Path, overwrite: bool, probabilities: bool) -> dict[str, Path]:
    import json

    from rsvlm.inference.writer import check_outputs, output_paths, write_probabilities
    from rsvlm.io.atomic import atomic_write_text
    from rsvlm.io.pictures import save_png

    paths = output_paths(folder, prediction.image, prediction.category, False, probabilities)
    check_outputs(paths, set(), overwrite)
    import rasterio

    height, width = prediction.mask.shape
    with rasterio.open(paths["mask"], "w", driver="GTiff", height=height, width=width, count=1, dtype="uint8") as dst:
        dst.write(prediction.mask.astype(np.uint8)[None])
    if probabilities:
        write_probabilities(paths["probabilities"], prediction.probabilities, prediction.valid, None, None)
    save_png(paths["overlay"], prediction.show(), overwrite=overwrite)
    payload = {
        "image": prediction.image,
        "category": prediction.category,
        "instruction": prediction.instruction,
        "threshold": prediction.threshold,
        "scene_size": [height, width],
        "positive_fraction": float(prediction.mask.sum() / max(prediction.valid.sum(), 1)),
        "tiles": [{"tile_index": i, "description": t} for i, t in enumerate(prediction.texts)],
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=1), overwrite=overwrite)
    return paths

"""Use a trained model from Python: ``model = rsvlm.load(path)``, ``model.predict(image, ...)``.

:func:`load` takes a run folder (``rsvlm fit``'s ``default_root_dir``), one of its checkpoints,
or a recipe plus a checkpoint, builds the recipe's model and data settings and loads the
weights. :meth:`Predictor.predict` sees an image as ``rsvlm predict`` does — its bands picked by
the model's band spec, cut into tiles of the model input with overlap, each tile normalised as
the data module says and given its APG instruction, answers generated, tile logits stitched
(cosine blend) — and returns a :class:`Prediction` holding the answers, the probabilities, the
mask and the georeferencing. ``Prediction.save(folder)`` writes the files ``rsvlm predict``'s
writer writes (the same bytes for the same GeoTIFF); ``Prediction.show()`` returns the overlay.

Images: a raster path (GeoTIFF, PNG, JPEG: anything rasterio reads), or a ``C×H×W`` NumPy array
or tensor in the model's band order (or ``bands=`` names to pick them from).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.contracts import RsvlmError

ImageLike = str | os.PathLike | np.ndarray | Any  # Any: a torch tensor
CONFIG_NAMES = ("config.yaml", "config.parsed.yaml")


class LoadError(RsvlmError, FileNotFoundError):
    """A model path that is not a run folder, a checkpoint or a recipe + checkpoint."""


class PredictError(RsvlmError, ValueError):
    """A predict call the model cannot answer (missing category, visual prompts, bad array)."""


def _find_config(start: Path) -> Path | None:
    """The run's saved recipe: ``config.yaml`` in ``start`` or up to three folders above it."""
    for folder in [start, *list(start.parents)[:3]]:
        for name in CONFIG_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def resolve_run(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(recipe, checkpoint)`` of a run folder or a checkpoint inside one.

    A run folder gives its newest version's ``best-*.ckpt`` (the checkpoint ``fit`` tested),
    else ``last.ckpt``; the recipe is the ``config.yaml`` LightningCLI saved beside it.

    Raises:
        LoadError: naming the path and what is missing.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".ckpt":
            raise LoadError(f"{p}: not a checkpoint (.ckpt) or a run folder")
        config = _find_config(p.parent)
        if config is None:
            raise LoadError(f"{p}: no config.yaml beside it or in the folders above; pass recipe= as well")
        return config, p
    if not p.is_dir():
        raise LoadError(f"{p}: no such run folder or checkpoint")
    checkpoints = sorted(p.rglob("*.ckpt"), key=lambda c: (c.stat().st_mtime, c.name))
    if not checkpoints:
        raise LoadError(f"{p}: a run folder needs a checkpoint (*.ckpt) below it; none found")
    best = [c for c in checkpoints if c.name.startswith("best")]
    ckpt = (best or [c for c in checkpoints if c.name == "last.ckpt"] or checkpoints)[-1]
    config = _find_config(ckpt.parent)
    if config is None:
        raise LoadError(f"{p}: found {ckpt.name} but no config.yaml of the run; pass recipe= as well")
    return config, ckpt


def load(path: str | os.PathLike, recipe: str | os.PathLike | None = None, device: str = "cpu") -> Predictor:
    """A :class:`Predictor` of a trained model.

    Args:
        path: a model folder (``rsvlm export``), a run folder, or a checkpoint (its run's
            ``config.yaml`` is found above it).
        recipe: the recipe to build the model with (needed for a checkpoint outside its run).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    """
    from rsvlm.inference.evaluate import load_model
    from rsvlm.inference.export import is_model_folder, load_folder

    if recipe is None and is_model_folder(path):
        model, datamodule = load_folder(path)
        return Predictor(model, datamodule, source=str(path), device=device)
    if recipe is None:
        recipe, ckpt = resolve_run(path)
    else:
        ckpt = Path(path).expanduser()
        if not ckpt.is_file():
            raise LoadError(f"{ckpt}: no such checkpoint")
    model, datamodule = load_model(recipe, ckpt)
    return Predictor(model, datamodule, source=str(ckpt), device=device)


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
        threshold: the probability threshold.
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
    tiles: list[tuple[dict, Any, Any, str]] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        """The answers of all tiles, one per line (one tile: its answer)."""
        return "\n".join(self.texts)

    def show(self, composite: str = "auto") -> np.ndarray:
        """``H×W×3`` uint8: the mask in red over a true- or false-colour composite of the image."""
        from rsvlm.inference.writer import overlay_picture
        from rsvlm.io.pictures import composite_or_stretch, overlay

        if self.pixels is None:
            return overlay_picture(self.image, self.mask, self.bands, composite_kind=composite)
        rgb = composite_or_stretch(np.where(self.valid[None], self.pixels, np.nan), self.bands, composite)
        return overlay(rgb, self.mask, color=(255, 0, 0), alpha=0.45)

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
        """Write ``<stem>.mask.tif``, ``<stem>.overlay.png`` and ``<stem>.json`` into ``folder``:
        for a file input exactly what ``rsvlm predict``'s writer writes (``<stem>`` the input's
        name); an array is written as ``array.mask.tif`` without georeferencing.

        Returns:
            ``{"mask", "overlay", "json"}`` → path. Existing files are refused unless ``overwrite``.
        """
        from rsvlm.inference.writer import PredictionWriter

        writer = PredictionWriter(str(folder), threshold=self.threshold, overwrite=overwrite)
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self.pixels is None:
            for meta, logits, valid, text in self.tiles:
                writer.add(meta, logits, valid, text)
            return {k: Path(v) for k, v in writer.written[-1].items()}
        return _save_array(self, Path(folder), overwrite)


def _save_array(prediction: Prediction, folder: Path, overwrite: bool) -> dict[str, Path]:
    import json

    from rsvlm.inference.writer import check_outputs, output_paths
    from rsvlm.io.atomic import atomic_write_text
    from rsvlm.io.pictures import save_png

    paths = output_paths(folder, prediction.image, prediction.category, False)
    check_outputs(paths, set(), overwrite)
    import rasterio

    height, width = prediction.mask.shape
    with rasterio.open(paths["mask"], "w", driver="GTiff", height=height, width=width, count=1, dtype="uint8") as dst:
        dst.write(prediction.mask.astype(np.uint8)[None])
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


class Predictor:
    """A trained model with its data settings, ready to answer images (see the module docstring).

    Args:
        model: a :class:`rsvlm.models.vlm.VisionLanguageModel` with its weights.
        datamodule: the recipe's data module (bands, statistics, tile size, normalisation).
        source: where the weights came from (shown in errors).
        device: where the model runs.
    """

    def __init__(self, model: Any, datamodule: Any, source: str = "", device: str = "cpu") -> None:
        from rsvlm.bridges.positions import with_response_suffix
        from rsvlm.inference.evaluate import ModelInput

        self.model = model.eval().to(device)
        self.datamodule = datamodule
        self.settings = ModelInput.from_datamodule(datamodule)
        self.formatter = with_response_suffix(model.llm.formatter, model.positions.response_suffix)
        self.source = source
        self.device = device

    @property
    def bands(self) -> tuple[str, ...]:
        return self.settings.bands

    def predict(
        self,
        image: ImageLike | Sequence[ImageLike],
        category: str | None = None,
        instruction: str | None = None,
        bands: Sequence[str] | None = None,
        points: Any = None,
        boxes: Any = None,
        scribble: Any = None,
        threshold: float = 0.5,
        overlap: int | None = None,
        progress: bool = False,
    ) -> Prediction | list[Prediction]:
        """Answer one image, or a list (one :class:`Prediction` each; their tiles share batches).

        Args:
            image: a raster path, or a ``C×H×W`` array / tensor (see the module docstring).
            category: ``water``, ``vegetation`` or ``building``: the APG instruction of the tile.
            instruction: your own instruction instead of the APG one (``category`` optional).
            bands: names of an array's bands (default: the model's, in its order).
            points, boxes, scribble: visual prompts, for models with a visual-prompt encoder.
            threshold: probability threshold of the mask.
            overlap: pixels shared by neighbouring tiles (default: the recipe's).
            progress: a progress bar over the tiles.
        """
        from rsvlm.inference.tiles import predict_images

        if (
            any(p is not None for p in (points, boxes, scribble))
            and getattr(self.model, "prompt_encoder", None) is None
        ):
            raise PredictError(
                f"{self.source or 'this model'} has no visual-prompt encoder (its recipe leaves prompt_encoder "
                "empty): points=, boxes= and scribble= need a model trained with one"
            )
        if category is None and instruction is None:
            raise PredictError("predict needs category= (water, vegetation, building) or instruction=")
        if not 0.0 < threshold < 1.0:
            raise PredictError(f"predict: threshold must be in (0, 1), got {threshold}")
        several = isinstance(image, (list, tuple))
        results = predict_images(
            self, list(image) if several else [image], category, instruction, bands, threshold, overlap, progress
        )
        return results if several else results[0]

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
or tensor in the model's band order. Whatever its bands, ``bands=`` names them (a preset such as
``"sentinel2"`` or a list) and the model's are picked by name; a file whose band descriptions are
band names (as rsvlm writes them) needs no ``bands=``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.inference.prediction import PredictError, Prediction
from rsvlm.inference.runs import LoadError, resolve_run

ImageLike = str | os.PathLike | np.ndarray | Any  # Any: a torch tensor
__all__ = ["LoadError", "PredictError", "Prediction", "Predictor", "load", "resolve_run"]


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
        from rsvlm.data.multitask.datamodule import InstructDataModule

        # models of instruction data see whole images (GeoMag, EarthGPT-X); SPEX models see tiles
        self.whole_image = isinstance(datamodule, InstructDataModule)
        self.settings = None if self.whole_image else ModelInput.from_datamodule(datamodule)
        self.formatter = with_response_suffix(model.llm.formatter, model.positions.response_suffix)
        self.source = source
        self.device = device

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.datamodule.band_names) if self.whole_image else self.settings.bands

    @property
    def takes_visual_prompts(self) -> bool:
        """Whether the model reads points, boxes and strokes (a visual-prompt encoder feeding its
        LLM, or a mask decoder that gives them to SAM's prompt encoder)."""
        model = self.model
        return model.prompt_encoder is not None or bool(getattr(model.decoder, "use_visual_prompts", False))

    def predict(
        self,
        image: ImageLike | Sequence[ImageLike],
        category: str | None = None,
        instruction: str | None = None,
        bands: Sequence[str] | str | None = None,
        points: Sequence[Sequence[float]] | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        scribble: Sequence[Sequence[Sequence[float]]] | None = None,
        mask: np.ndarray | Sequence[np.ndarray] | None = None,
        granularity: str = "pixel",
        prompt_coordinates: str = "pixel",
        threshold: float = 0.5,
        overlap: int | None = None,
        progress: bool = False,
        modality: str | None = None,
    ) -> Prediction | list[Prediction]:
        """Answer one image, or a list (one :class:`Prediction` each; their tiles share batches).

        Args:
            image: a raster path, or a ``C×H×W`` array / tensor (see the module docstring).
            category: ``water``, ``vegetation`` or ``building``: the APG instruction of the tile (with
                visual prompts, on a model trained on prompted extraction: its template, "Segment the
                water region marked by Region 1.").
            instruction: your own instruction instead of the APG one (``category`` optional).
            bands: the image's bands in its order, a preset (``"sentinel2"``, ``"naip"``) or a list of
                names, when they are not the model's in the model's order (a 13-band Sentinel-2 file
                for a 4-band model): the model's are picked by name. Default: a file's band
                descriptions when they are band names, else the model's bands.
            points: ``[[x, y], ...]`` (or ``[x, y, label]``, label 0 for background) in the image's
                pixels (x right, y down; the centre of pixel column j is x = j + 0.5).
            boxes: ``[[x0, y0, x1, y1], ...]`` in pixels (edges).
            scribble: free-form strokes, ``[[[x, y], ...], ...]``, one vertex list per stroke.
            mask: a painted free-form region, ``H×W`` bool at the image's size (a list: one prompt each).
            prompt_coordinates: ``pixel`` (default) or ``map``: points, boxes and strokes in the
                image's CRS (one georeferenced file), turned into its pixels by its transform.
            granularity: ``image``, ``region`` or ``pixel``: what the question asks about, for
                whole-image models whose cropper routes by it (GeoMag's MagCrop without its classifier).
                Visual prompts need a model that reads them (:attr:`takes_visual_prompts`); each
                tile gets the part of the prompts inside it; for a list of images they apply to each.
            threshold: probability threshold of the mask.
            overlap: pixels shared by neighbouring tiles (default: the recipe's).
            progress: a progress bar over the tiles.
            modality: ``optical`` (default), ``sar`` or ``infrared``: the image's modality, for
                whole-image models with per-modality stems (EarthGPT-X); with the recipe's
                ``modality_presets`` the image keeps its own bands (SAR: VV, VH in dB) and is
                normalised by that modality's preset, as in training.
        """
        from rsvlm.data.visual_prompts import prompts_from_arguments
        from rsvlm.inference.tiles import predict_images

        if prompt_coordinates == "map":
            points, boxes, scribble = _prompts_in_pixels(image, points, boxes, scribble)
        elif prompt_coordinates != "pixel":
            raise PredictError(f"predict: prompt_coordinates must be 'pixel' or 'map', got {prompt_coordinates!r}")
        try:
            prompts = prompts_from_arguments(
                points=points,
                boxes=boxes,
                scribbles=scribble,
                masks=None if mask is None else [np.asarray(m, dtype=bool) for m in _as_list(mask)],
                where="predict",
            )
        except ValueError as error:
            raise PredictError(str(error)) from None
        if prompts and not self.takes_visual_prompts:
            raise PredictError(
                f"{self.source or 'this model'} reads no visual prompts (its recipe has no prompt_encoder and its "
                "decoder no use_visual_prompts): points=, boxes=, scribble= and mask= need a model trained with them"
            )
        sampling = getattr(self.datamodule, "prompts", None)
        if prompts and instruction is None and category is not None and sampling is not None:
            # a model trained on prompted extraction is asked as it was trained
            from rsvlm.data.indices import normalize_category

            instruction = sampling.template.format(category=normalize_category(category))
        if category is None and instruction is None:
            raise PredictError("predict needs category= (water, vegetation, building) or instruction=")
        if not 0.0 < threshold < 1.0:
            raise PredictError(f"predict: threshold must be in (0, 1), got {threshold}")
        several = isinstance(image, (list, tuple))
        if modality is not None and not self.whole_image:
            raise PredictError(
                f"predict: modality= is for whole-image models (EarthGPT-X); {self.source or 'this model'} reads tiles "
                "of its recipe's bands"
            )
        if self.whole_image:
            from rsvlm.inference.whole_image import predict_whole_images

            if bands is not None:
                raise PredictError(
                    f"predict: bands= is for tile models (SPEX); {self.source or 'this model'} takes an image in its "
                    "recipe's bands (or, with modality=, in that modality's own)"
                )
            if instruction is None:
                raise PredictError(f"{self.source or 'this model'} answers questions: give instruction=")
            results = predict_whole_images(
                self,
                list(image) if several else [image],
                instruction,
                granularity,
                prompts,
                threshold,
                modality or "optical",
            )
            return _with_prompts(results, prompts, several)
        results = predict_images(
            self,
            list(image) if several else [image],
            category,
            instruction,
            bands,
            threshold,
            overlap,
            progress,
            prompts=prompts,
        )
        return _with_prompts(results, prompts, several)


def _as_list(mask: Any) -> list[Any]:
    """One painted mask (an ``H×W`` array) as a list of one; a list or tuple of them as given."""
    return list(mask) if isinstance(mask, (list, tuple)) else [mask]


def _with_prompts(results: list[Prediction], prompts: list[Any], several: bool) -> Prediction | list[Prediction]:
    """``results`` holding the prompts they were asked with (drawn by ``show`` and ``save``)."""
    for result in results:
        result.prompts = list(prompts)
    return results if several else results[0]


def _prompts_in_pixels(image: Any, points: Any, boxes: Any, scribble: Any) -> tuple[Any, Any, Any]:
    """Points, boxes and strokes given in map coordinates of one georeferenced file, in its pixels."""
    from rsvlm.data.raster import map_to_pixels, read_header

    if not isinstance(image, (str, os.PathLike)):
        raise PredictError("predict: prompt_coordinates='map' needs one georeferenced image file")
    header = read_header(image)
    if header.crs is None:
        raise PredictError(f"predict: {image} has no CRS, so prompt_coordinates='map' cannot place the prompts")

    def moved(xy: Any) -> list[list[float]]:
        values = np.asarray(xy, dtype=np.float64)
        return map_to_pixels(header.transform, values[:, :2]).tolist() if len(values) else []

    if points is not None:
        points = [p + list(np.asarray(q)[2:]) for p, q in zip(moved(points), points, strict=True)]
    if boxes is not None:
        corners = [moved([[b[0], b[1]], [b[2], b[3]]]) for b in boxes]  # a north-up raster flips y
        boxes = [[min(a[0], c[0]), min(a[1], c[1]), max(a[0], c[0]), max(a[1], c[1])] for a, c in corners]
    if scribble is not None:
        scribble = [moved(stroke) for stroke in scribble]
    return points, boxes, scribble

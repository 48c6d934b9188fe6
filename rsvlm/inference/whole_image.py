"""Predictions of models that see the whole image at once (GeoMag, EarthGPT-X: their data module is
:class:`rsvlm.data.multitask.datamodule.InstructDataModule`).

Where SPEX cuts a scene into tiles, these models resize the image to their square input (keeping
the aspect, padded as the data module pads) and answer a free-text question about all of it. The
image and the question become an instruction record (:class:`rsvlm.data.multitask.records.InstructRecord`)
and go through the data module's own dataset and collate, so a prediction sees exactly what
training saw; the answer is generated, the mask of every ``[SEG]`` group decoded, their union
mapped back through the padding and the resize to the image's pixels and georeferencing
(:func:`rsvlm.inference.tile_outputs.whole_image_tile`).

``rsvlm predict`` builds the same samples (:class:`rsvlm.data.multitask.predict.WholeImagePredictDataset`,
:class:`~rsvlm.data.multitask.predict.PredictCollate`) and its writer maps them back with the same
:func:`rsvlm.inference.tile_outputs.whole_image_tile`, so both write the same files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsvlm.data.multitask.predict import (
    TASK_OF_GRANULARITY,
    PredictCollate,
    PredictInputError,
    WholeImagePredictDataset,
    check_granularity,
)
from rsvlm.inference.prediction import PredictError, Prediction
from rsvlm.inference.stitch import mask_probabilities
from rsvlm.inference.tile_outputs import whole_image_tile

__all__ = ["TASK_OF_GRANULARITY", "predict_whole_images"]


def predict_whole_images(
    predictor: Any,
    images: Sequence[Any],
    instruction: str,
    granularity: str,
    prompts: Sequence[Any],
    threshold: float,
    modality: str = "optical",
) -> list[Prediction]:
    """One :class:`Prediction` per image (paths, or ``C×H×W`` arrays in the model's bands, or in the
    modality's own bands when the model normalises by modality), all of ``modality``."""
    try:
        check_granularity(granularity, "predict")
    except PredictInputError as error:
        raise PredictError(str(error)) from None
    with tempfile.TemporaryDirectory(prefix="rsvlm-predict-") as scratch:
        paths, names, pixels = [], [], []
        for i, image in enumerate(images):
            if isinstance(image, (str, Path)):
                if not Path(image).is_file():
                    raise PredictError(f"predict: {image}: no such file")
                paths.append(str(image)), names.append(str(image)), pixels.append(None)
            else:
                array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
                paths.append(_write_array(array, Path(scratch) / f"array_{i}.tif"))
                names.append("array" if len(images) == 1 else f"array_{i}"), pixels.append(array)
        return [
            _predict_one(predictor, path, name, array, instruction, granularity, prompts, threshold, modality)
            for path, name, array in zip(paths, names, pixels, strict=True)
        ]


def _write_array(array: np.ndarray, path: Path) -> str:
    import rasterio

    if array.ndim != 3:
        raise PredictError(f"predict: an array image must be C×H×W, got shape {tuple(array.shape)}")
    with rasterio.open(
        path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0], dtype="float32"
    ) as dst:
        dst.write(array.astype(np.float32))
    return str(path)


def _predict_one(
    predictor: Any,
    path: str,
    name: str,
    array: np.ndarray | None,
    instruction: str,
    granularity: str,
    prompts: Sequence[Any],
    threshold: float,
    modality: str,
) -> Prediction:
    try:
        dataset = WholeImagePredictDataset.of_datamodule(
            predictor.datamodule, [path], instruction, granularity, prompts, modality=modality
        )
    except PredictInputError as error:
        raise PredictError(str(error)) from None
    sample = dataset[0]
    batch = PredictCollate(predictor.formatter)([sample])
    device = next(predictor.model.parameters()).device
    with torch.inference_mode(False), torch.no_grad():
        out = predictor.model.predict_masks(_to(batch, device))
    meta, logits, valid, text = whole_image_tile(
        sample["meta"], out["mask_logits"][0, 0], sample["valid"][0], out["texts"][0]
    )
    exact = mask_probabilities(logits.numpy())
    return Prediction(
        image=name,
        category=None,
        instruction=instruction,
        texts=[text],
        probabilities=np.where(valid.numpy(), exact, 0.0).astype(np.float32),
        mask=(exact > threshold) & valid.numpy(),
        valid=valid.numpy(),
        crs=None if array is not None else meta["crs"],
        transform=None if array is not None else meta["transform"],
        bands=tuple(predictor.bands),
        threshold=threshold,
        pixels=array,
        tiles=[(meta, logits, valid, text)],
    )


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)

"""Predictions of models that see the whole image at once (GeoMag, EarthGPT-X: their data module is
:class:`rsvlm.data.multitask.datamodule.InstructDataModule`).

Where SPEX cuts a scene into tiles, these models resize the image to their square input (keeping
the aspect, padded as the data module pads) and answer a free-text question about all of it. The
image and the question become an instruction record (:class:`rsvlm.data.multitask.records.InstructRecord`)
and go through the data module's own dataset and collate, so a prediction sees exactly what
training saw; the answer is generated, the mask of every ``[SEG]`` group decoded, their union
mapped back through the padding and the resize to the image's pixels and georeferencing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rsvlm.inference.prediction import PredictError, Prediction

#: The task a record of each granularity is given (MagCrop reads the granularity; a task it skips, GCG, is not one).
TASK_OF_GRANULARITY = {"image": "scene_classification", "region": "vqa", "pixel": "referring_segmentation"}


def predict_whole_images(
    predictor: Any,
    images: Sequence[Any],
    instruction: str,
    granularity: str,
    prompts: Sequence[Any],
    threshold: float,
) -> list[Prediction]:
    """One :class:`Prediction` per image (paths, or ``C×H×W`` arrays in the model's bands)."""
    if granularity not in TASK_OF_GRANULARITY:
        raise PredictError(f"predict: granularity must be one of {', '.join(TASK_OF_GRANULARITY)}, got {granularity!r}")
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
            _predict_one(predictor, path, name, array, instruction, granularity, prompts, threshold)
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
) -> Prediction:
    from rsvlm.data.multitask.dataset import InstructCollate, InstructDataset, Item
    from rsvlm.data.multitask.records import InstructRecord, Turn
    from rsvlm.data.raster import read_header
    from rsvlm.data.visual_prompts import prompts_to_json

    dm = predictor.datamodule
    header = read_header(path)
    record = InstructRecord(
        id="predict",
        images=[path],
        task=TASK_OF_GRANULARITY[granularity],
        granularity=granularity,
        conversations=[Turn("human", f"<image>\n{instruction}"), Turn("gpt", "")],
        source="predict",
        split="test",
        visual_prompts=prompts_to_json(list(prompts)),
    )
    dataset = InstructDataset(
        [Item(record, "predict", dm.scale)], dm.image_size, dm.pad, dm.num_bands, dm.mean, dm.std, dm.seg_text
    )
    sample = dataset[0]
    batch = InstructCollate(predictor.formatter)([sample])
    batch.pop("masks")  # no reference targets: the model unites the targets it answers with
    device = next(predictor.model.parameters()).device
    with torch.inference_mode(False), torch.no_grad():
        out = predictor.model.predict_masks(_to(batch, device))
    info = sample["meta"]["resize"]
    logits = _to_original(out["mask_logits"][0, 0].float().cpu(), info)
    valid = _to_original(sample["valid"][0].float(), info) > 0.5
    exact = 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64)))
    height, width = logits.shape
    meta = {
        "image": path,
        "window": [0, 0, height, width],
        "scene_size": [height, width],
        "tile_index": 0,
        "num_tiles": 1,
        "crs": header.crs,
        "transform": header.transform,
        "bands": list(predictor.bands),
        "category": None,
    }
    text = out["texts"][0]
    return Prediction(
        image=name,
        category=None,
        instruction=instruction,
        texts=[text],
        probabilities=np.where(valid.numpy(), exact, 0.0).astype(np.float32),
        mask=(exact > threshold) & valid.numpy(),
        valid=valid.numpy(),
        crs=None if array is not None else header.crs,
        transform=None if array is not None else header.transform,
        bands=tuple(predictor.bands),
        threshold=threshold,
        pixels=array,
        tiles=[(meta, logits, valid, text)],
    )


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


def _to_original(square: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """``S×S`` on the model's square → ``H×W`` of the image: the padding cut off, the resize undone."""
    top, left = int(info["pad"][0]), int(info["pad"][1])
    h, w = (int(x) for x in info["resized_size"])
    crop = square[top : top + h, left : left + w].float()[None, None]
    height, width = (int(x) for x in info["original_size"])
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0, 0]

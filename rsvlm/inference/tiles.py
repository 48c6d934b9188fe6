"""Run a :class:`rsvlm.inference.api.Predictor` over the tiles of one image and stitch them.

The tiles are those of ``rsvlm predict`` (:class:`rsvlm.data.spie.predict_dataset.TiledPredictDataset`
for a file, :class:`~rsvlm.data.spie.predict_dataset.ArrayPredictDataset` for an array); the
stitching is the writer's (:class:`rsvlm.inference.stitch.Stitcher`, cosine blend), so a
prediction saved from Python and one written by ``rsvlm predict`` agree byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from rsvlm.inference.api import PredictError, Prediction


class _WithInstruction(Dataset):
    """A predict dataset whose samples carry ``instruction`` (and an empty response) instead of the APG one."""

    def __init__(self, base: Dataset, instruction: str, category: str | None) -> None:
        self.base, self.instruction, self.category = base, instruction, category

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.base[index])
        sample.update(instruction=self.instruction, response="", category=self.category or "")
        return sample


def _as_array(image: Any, model_bands: Sequence[str], bands: Sequence[str] | None) -> np.ndarray:
    """A ``C×H×W`` float32 array in the model's band order."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim != 3:
        raise PredictError(f"predict: an array image must be C×H×W, got shape {tuple(array.shape)}")
    if bands is None:
        if array.shape[0] != len(model_bands):
            raise PredictError(
                f"predict: the array has {array.shape[0]} bands but the model takes {len(model_bands)} "
                f"({', '.join(model_bands)}); pass bands= to pick them by name"
            )
        return array.astype(np.float32)
    names = list(bands)
    if len(names) != array.shape[0]:
        raise PredictError(f"predict: bands= names {len(names)} bands but the array has {array.shape[0]}")
    missing = [b for b in model_bands if b not in names]
    if missing:
        raise PredictError(f"predict: the array has no band {missing[0]!r} that the model needs (it has {names})")
    return array[[names.index(b) for b in model_bands]].astype(np.float32)


def predict_tiles(
    predictor: Any,
    image: Any,
    category: str | None,
    instruction: str | None,
    bands: Sequence[str] | None,
    threshold: float,
    overlap: int | None,
    progress: bool,
) -> Prediction:
    """The :class:`Prediction` of one image (see :meth:`rsvlm.inference.api.Predictor.predict`)."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from rsvlm.data.indices import normalize_category
    from rsvlm.data.raster import read_header
    from rsvlm.data.spie.dataset import SpieCollate
    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset, TiledPredictDataset
    from rsvlm.inference.stitch import Stitcher

    s = predictor.settings
    category = None if category is None else normalize_category(category)
    options = {
        "tile": s.tile,
        "overlap": min(s.overlap if overlap is None else overlap, s.tile // 2),
        "categories": [category] if category else None,
        "template": s.template,
        "apg_style": s.apg_style,
        "normalization": s.normalization,
        "index_channels": s.index_channels,
    }
    pixels = None
    if isinstance(image, (str, Path)):
        name = str(image)
        if not Path(name).is_file():
            raise PredictError(f"predict: {name}: no such file")
        dataset = TiledPredictDataset([name], list(s.bands), s.mean, s.std, **options)
        header = read_header(name)
        crs, transform = header.crs, header.transform
    else:
        pixels = _as_array(image, s.bands, bands)
        valid = np.all(np.isfinite(pixels), axis=0)
        name, crs, transform = "array", None, None
        dataset = ArrayPredictDataset([(name, np.nan_to_num(pixels), valid)], list(s.bands), s.mean, s.std, **options)
    height, width = dataset.scenes[0].height, dataset.scenes[0].width
    if instruction is not None:
        dataset = _WithInstruction(dataset, instruction, category)
    loader = DataLoader(dataset, batch_size=s.batch_size, collate_fn=SpieCollate(predictor.formatter))
    stitcher = Stitcher(height, width)
    covered = np.zeros((height, width), dtype=bool)
    tiles, texts = [], []
    model = predictor.model
    device = next(model.parameters()).device
    bar = tqdm(total=len(dataset), desc=f"predict {Path(name).name}", disable=not progress)
    with torch.no_grad():
        for batch in loader:
            out = model.predict_masks(move_data_to_device(batch, device))
            logits = out["mask_logits"].float().cpu()
            for i, meta in enumerate(batch["meta"]):
                r, c, h, w = meta["window"]
                stitcher.add((r, c, h, w), logits[i, 0, :h, :w])
                covered[r : r + h, c : c + w] |= batch["valid"][i, 0, :h, :w].cpu().numpy()
                tiles.append((meta, logits[i, 0], batch["valid"][i, 0].cpu(), out["texts"][i]))
                texts.append(out["texts"][i])
            bar.update(len(batch["meta"]))
    bar.close()
    # float64 and ">" as the writer, so the saved mask and this one agree pixel for pixel.
    exact = 1.0 / (1.0 + np.exp(-stitcher.result().astype(np.float64)))
    mask = (exact > threshold) & covered
    probabilities = np.where(covered, exact, 0.0).astype(np.float32)
    return Prediction(
        image=name,
        category=category,
        instruction=instruction,
        texts=texts,
        probabilities=probabilities,
        mask=mask,
        valid=covered,
        crs=crs,
        transform=transform,
        bands=tuple(s.bands),
        threshold=threshold,
        pixels=pixels,
        tiles=tiles,
    )

"""Run a :class:`rsvlm.inference.api.Predictor` over the tiles of images and stitch each one.

The tiles are those of ``rsvlm predict`` (:class:`rsvlm.data.spie.predict_dataset.TiledPredictDataset`
for a file, :class:`~rsvlm.data.spie.predict_dataset.ArrayPredictDataset` for an array); the
stitching is the writer's (:class:`rsvlm.inference.stitch.Stitcher`, cosine blend), so a
prediction saved from Python and one written by ``rsvlm predict`` agree byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from rsvlm.inference.prediction import PredictError, Prediction
from rsvlm.inference.stitch import mask_probabilities


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


class _WithPrompts(Dataset):
    """A predict dataset whose samples carry the visual prompts that fall in their window."""

    def __init__(self, base: Dataset, prompts: Sequence[Any]) -> None:
        self.base, self.prompts = base, list(prompts)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from rsvlm.data.visual_prompts import window_prompts

        sample = dict(self.base[index])
        row, col, height, width = sample["meta"]["window"]
        sample["visual_prompts"] = window_prompts(self.prompts, row, col, height, width)
        return sample


def _as_array(image: Any, model_bands: Sequence[str], bands: Sequence[str] | str | None) -> np.ndarray:
    """A ``C×H×W`` float32 array in the model's band order (``bands``: the array's, a list or a preset)."""
    from rsvlm.data.bands import band_spec

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
    names = list(band_spec(bands).names)
    if len(names) != array.shape[0]:
        raise PredictError(f"predict: bands= names {len(names)} bands but the array has {array.shape[0]}")
    missing = [b for b in model_bands if b not in names]
    if missing:
        raise PredictError(f"predict: the array has no band {missing[0]!r} that the model needs (it has {names})")
    return array[[names.index(b) for b in model_bands]].astype(np.float32)


@dataclass
class Scene:
    """One image being stitched: its logits (``stitcher``), the pixels its tiles covered with data,
    and what the tiles said."""

    stitcher: Any
    covered: np.ndarray
    crs: Any = None
    transform: Any = None
    pixels: np.ndarray | None = None
    image_bands: tuple[str, ...] = ()  # a file's bands in file order
    texts: list[str] = field(default_factory=list)
    tiles: list[tuple[dict, Any, Any, str]] = field(default_factory=list)

    @classmethod
    def of_size(cls, height: int, width: int, **fields: Any) -> Scene:
        from rsvlm.inference.stitch import Stitcher

        return cls(Stitcher(height, width), np.zeros((height, width), dtype=bool), **fields)


def tile_options(settings: Any, category: str | None, overlap: int | None = None) -> dict[str, Any]:
    """Keyword arguments of the predict datasets for a model's :class:`~rsvlm.inference.evaluate.ModelInput`."""
    from rsvlm.data.indices import normalize_category

    return {
        "tile": settings.tile,
        "overlap": min(settings.overlap if overlap is None else overlap, settings.tile // 2),
        "categories": [normalize_category(category)] if category else None,
        "template": settings.template,
        "apg_style": settings.apg_style,
        "normalization": settings.normalization,
        "index_channels": settings.index_channels,
        "statistics": settings.statistics,
        "flips": settings.flips,
    }


def run_tiles(
    model: Any,
    formatter: Any,
    batch_size: int,
    datasets: Sequence[Dataset],
    scenes: dict[str, Scene],
    progress: str | None = None,
) -> None:
    """Generate and decode every tile of ``datasets`` (``batch_size`` at a time, the paper's
    inference) and add each to its scene in ``scenes`` (keyed by ``meta["image"]``).

    A tile read in several test-time flips (``meta["flip"]``) is mirrored back before it is
    stitched, so the scene holds the mean of its passes; the texts kept are the unflipped pass's,
    the tiles every pass's (``Prediction.save`` hands them to the writer, which needs them all).

    Args:
        progress: the progress bar's label (None: no bar).
    """
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from rsvlm.data.spie.dataset import SpieCollate
    from rsvlm.inference.stitch import window_prediction

    device = next(model.parameters()).device
    bar = tqdm(total=sum(len(d) for d in datasets), desc=progress, disable=progress is None)
    with torch.no_grad():
        for dataset in datasets:
            for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=SpieCollate(formatter)):
                out = model.predict_masks(move_data_to_device(batch, device))
                logits = out["mask_logits"].float().cpu()
                for i, meta in enumerate(batch["meta"]):
                    scene, valid = scenes[meta["image"]], batch["valid"][i, 0].cpu()
                    window, tile_logits, tile_valid = window_prediction(meta, logits[i, 0], valid)
                    r, c, h, w = window
                    scene.stitcher.add(window, tile_logits)
                    scene.covered[r : r + h, c : c + w] |= tile_valid.numpy()
                    scene.tiles.append((meta, logits[i, 0], valid, out["texts"][i]))
                    if meta.get("flip", "none") == "none":  # a flipped pass's text describes the mirror image
                        scene.texts.append(out["texts"][i])
                bar.update(len(batch["meta"]))
    bar.close()


def predict_images(
    predictor: Any,
    images: Sequence[Any],
    category: str | None,
    instruction: str | None,
    bands: Sequence[str] | str | None,
    threshold: float,
    overlap: int | None,
    progress: bool,
    prompts: Sequence[Any] = (),
) -> list[Prediction]:
    """One :class:`Prediction` per image, in order (see :meth:`rsvlm.inference.api.Predictor.predict`).

    The tiles of all files (and of all arrays) go through the model together, ``batch_size`` at a
    time, whichever image they come from; each image is stitched on its own.
    """
    from rsvlm.data.indices import normalize_category
    from rsvlm.data.raster import read_header
    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset, TiledPredictDataset

    s = predictor.settings
    category = None if category is None else normalize_category(category)
    options = tile_options(s, category, overlap)
    names: list[str] = []
    files: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    n_arrays = sum(not isinstance(i, (str, Path)) for i in images)
    for image in images:
        if isinstance(image, (str, Path)):
            name = str(image)
            if not Path(name).is_file():
                raise PredictError(f"predict: {name}: no such file")
            if name not in files:
                files.append(name)
        else:
            name = "array" if n_arrays == 1 else f"array_{len(arrays)}"
            arrays[name] = _as_array(image, s.bands, bands)
        names.append(name)
    datasets: list[Dataset] = []
    if files:
        datasets.append(TiledPredictDataset(files, list(s.bands), s.mean, s.std, file_bands=bands, **options))
    if arrays:
        scenes = [(n, np.nan_to_num(a), np.all(np.isfinite(a), axis=0)) for n, a in arrays.items()]
        datasets.append(ArrayPredictDataset(scenes, list(s.bands), s.mean, s.std, **options))
    state: dict[str, Scene] = {}
    for dataset in datasets:
        for scene in dataset.scenes:
            georef = read_header(scene.path) if scene.path in files else None
            state[scene.path] = Scene.of_size(
                scene.height,
                scene.width,
                crs=georef.crs if georef else None,
                transform=georef.transform if georef else None,
                pixels=arrays.get(scene.path),
                image_bands=scene.file_bands,
            )
    if instruction is not None:
        datasets = [_WithInstruction(d, instruction, category) for d in datasets]
    if prompts:
        datasets = [_WithPrompts(d, prompts) for d in datasets]
    label = f"predict {len(state)} image(s)" if progress else None
    run_tiles(predictor.model, predictor.formatter, s.batch_size, datasets, state, label)
    return [_prediction(name, state[name], category, instruction, tuple(s.bands), threshold) for name in names]


def _prediction(
    name: str, scene: Scene, category: str | None, instruction: str | None, bands: tuple[str, ...], threshold: float
) -> Prediction:
    exact = mask_probabilities(scene.stitcher.result())  # and ">" as the writer: the saved mask is this one
    return Prediction(
        image=name,
        category=category,
        instruction=instruction,
        texts=list(scene.texts),
        probabilities=np.where(scene.covered, exact, 0.0).astype(np.float32),
        mask=(exact > threshold) & scene.covered,
        valid=scene.covered.copy(),
        crs=scene.crs,
        transform=scene.transform,
        bands=bands,
        threshold=threshold,
        pixels=scene.pixels,
        image_bands=scene.image_bands,
        tiles=list(scene.tiles),
    )

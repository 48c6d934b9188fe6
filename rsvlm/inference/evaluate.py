"""Score a SPIE model and the index baseline on the same labelled real images.

:func:`evaluate` runs every predictor (a trained model through :class:`ModelPredictor`, the
spectral-index + Otsu baseline through :func:`baseline_predictor`) on every image and category
with a reference mask and scores them with :class:`rsvlm.data.baseline.ScoreAccumulator`: one row
per dataset, category and method with F1 / Recall / Precision / OA / IoU of the category, only
over valid pixels (data present and labelled), averaged ``"global"`` (one confusion matrix over
the images) or ``"image"`` (mean of per-image scores). :func:`format_table` prints the rows.

The model sees an image as ``rsvlm predict`` would: its bands picked by name, cut into tiles of
the data module's ``image_size`` (overlapping by ``overlap`` pixels), each normalised as the data
module says and given its APG instruction; the answers are generated (the paper's inference),
the tile masks decoded, their logits stitched (cosine blend) and thresholded at 0 (p = 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.data.baseline import METRIC_NAMES, IndexBaseline, ScoreAccumulator, scores
from rsvlm.data.real import LabelledImage, select_bands

Predictor = Callable[[LabelledImage, str], np.ndarray]
#: ``on_mask(item, category, method, mask, counts)``: sees each mask :func:`evaluate` scores and
#: its counts ``tp, fp, fn, tn`` on the image's valid pixels.
MaskObserver = Callable[[LabelledImage, str, str, np.ndarray, dict[str, int]], None]
BASELINE_NAME = "index baseline"


class EvaluateError(RsvlmError, ValueError):
    """Bad evaluation input (nothing to score, an output file that exists, ...)."""


@dataclass
class ModelInput:
    """How a model wants its input, as its data module feeds it.

    Attributes:
        bands: band names, in the model's order.
        mean, std: ``(C,)`` dataset statistics (used when ``normalization`` is ``"dataset"``).
        normalization: ``"dataset"``, ``"image"``, ``"robust_image"`` or ``"robust_image_floor"``.
        tile: model input side (the data module's ``image_size``).
        overlap: pixels shared by neighbouring tiles.
        template, apg_style: instruction template and APG style.
        batch_size: tiles per forward pass.
        index_channels: spectral indices appended as channels (as the data module does).
        statistics: ``"tile"`` or ``"scene"``: per-image statistics of each tile or of its whole
            image (the data module's ``predict_statistics``).
        flips: test-time flips of each tile whose mirrored-back logits are averaged (the data
            module's ``predict_flips``; :data:`rsvlm.data.tiling.FLIPS`).
    """

    bands: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    normalization: str = "dataset"
    tile: int = 512
    overlap: int = 64
    template: str = "spectral"
    apg_style: str = "paper"
    batch_size: int = 2
    index_channels: tuple[str, ...] = ()
    statistics: str = "tile"
    flips: tuple[str, ...] = ("none",)

    @classmethod
    def from_datamodule(cls, datamodule: Any, overlap: int | None = None) -> ModelInput:
        """The settings of a :class:`rsvlm.data.spie.datamodule.SpieDataModule`."""
        mean, std = datamodule.band_statistics()
        tile = int(datamodule.image_size)
        return cls(
            bands=tuple(datamodule.band_names),
            mean=np.asarray(mean, np.float32),
            std=np.asarray(std, np.float32),
            normalization=getattr(datamodule, "normalization", "dataset"),
            tile=tile,
            # A tile never overlaps its neighbour by half or more of itself (as predict).
            overlap=min(datamodule.predict_overlap if overlap is None else overlap, tile // 2),
            template=datamodule.template,
            apg_style=datamodule.apg_style,
            batch_size=int(datamodule.batch_size),
            index_channels=tuple(getattr(datamodule, "index_channels", ())),
            statistics=getattr(datamodule, "predict_statistics", "tile"),
            flips=tuple(getattr(datamodule, "predict_flips", ("none",))),
        )


class ModelPredictor:
    """A SPIE model as a predictor: ``predictor(image, category)`` → ``H×W`` bool mask.

    Args:
        model: a :class:`rsvlm.models.vlm.VisionLanguageModel` (weights loaded, any device).
        settings: how its data module feeds it (:class:`ModelInput`).
        progress: show a progress bar over the tiles of each image (stderr).
        prior: False scores the decoder alone: an :class:`~rsvlm.heads.index_prior.IndexPriorHead`'s
            logits without the index prior it adds (an error for a model without one).
    """

    def __init__(self, model: Any, settings: ModelInput, progress: bool = False, prior: bool = True) -> None:
        self.model = model.eval()
        self.settings = settings
        self.progress = progress
        self.prior = prior
        from rsvlm.heads.index_prior import IndexPriorHead

        decoder = getattr(model, "decoder", None)
        if not prior and not isinstance(decoder, IndexPriorHead):
            raise EvaluateError(
                f"the model's decoder ({type(decoder).__name__}, field 'model.decoder') "
                "has no index prior to leave out; --without-prior needs an IndexPriorHead"
            )

    def __call__(self, item: LabelledImage, category: str) -> np.ndarray:
        from rsvlm.bridges.positions import with_response_suffix
        from rsvlm.data.spie.predict_dataset import ArrayPredictDataset
        from rsvlm.inference.tiles import Scene, run_tiles, tile_options

        s = self.settings
        dataset = ArrayPredictDataset(
            [(item.path, select_bands(item, s.bands), item.valid)],
            list(s.bands),
            s.mean,
            s.std,
            **tile_options(s, category),
        )
        formatter = with_response_suffix(self.model.llm.formatter, self.model.positions.response_suffix)
        scene = Scene.of_size(*item.valid.shape)
        label = f"{category} {Path(item.path).name}" if self.progress else None
        with nullcontext() if self.prior else self.model.decoder.without_prior():
            run_tiles(self.model, formatter, s.batch_size, [dataset], {item.path: scene}, label)
        return (scene.stitcher.result() > 0) & item.valid


def baseline_predictor(item: LabelledImage, category: str) -> np.ndarray:
    """The index + Otsu mask of ``category`` on all of the image's bands."""
    return IndexBaseline(category, list(item.bands)).predict(item.image, item.valid)


def evaluate(
    items: Sequence[LabelledImage],
    predictors: Mapping[str, Predictor],
    average: Literal["global", "image"] = "global",
    categories: Sequence[str] | None = None,
    skip_missing_bands: bool = False,
    on_mask: MaskObserver | None = None,
) -> list[dict[str, Any]]:
    """Score each predictor on each labelled image and category.

    Args:
        items: labelled images (:mod:`rsvlm.data.real`).
        predictors: method name → ``predictor(item, category)`` returning an ``H×W`` bool mask.
        average: ``"global"`` or ``"image"`` (see the module docstring).
        categories: score only these (default: every category an image has a mask of).
        skip_missing_bands: a predictor that needs a band an image lacks gets a row with
            ``skipped`` (the reason) for that dataset instead of stopping the evaluation.
        on_mask: called with ``(item, category, method, mask, counts)`` for each ``H×W`` bool mask
            scored and its counts (e.g. :class:`rsvlm.inference.error_figures.ErrorFigures`).

    Returns:
        Rows ``{"dataset", "category", "method", "average", "images", F1, Recall, Precision,
        OA, IoU, tp, fp, fn, tn, "per_image"}`` (or ``skipped``), ordered by dataset, category,
        method; ``per_image`` lists each image's ``{"image", F1, ..., tp, fp, fn, tn}`` (an image
        without target or prediction scores 1, as in the ``image`` average).

    Raises:
        EvaluateError: no image has a mask of any category asked for.
        BandError: an image lacks a band a predictor needs (unless ``skip_missing_bands``).
    """
    from rsvlm.data.bands import BandError
    from rsvlm.data.indices import normalize_category

    wanted = None if categories is None else {normalize_category(c) for c in categories}
    groups: dict[tuple[str, str], list[LabelledImage]] = {}
    for item in items:
        for category in item.targets:
            if wanted is None or category in wanted:
                groups.setdefault((item.dataset, category), []).append(item)
    if not groups:
        raise EvaluateError(f"no image has a reference mask of {sorted(wanted) if wanted else 'any category'}")
    rows = []
    for (dataset, category), group in groups.items():
        for method, predict in predictors.items():
            accumulator = ScoreAccumulator(average)
            row: dict[str, Any] = {"dataset": dataset, "category": category, "method": method, "average": average}
            per_image = []
            try:
                for item in group:
                    mask = predict(item, category)
                    counts = accumulator.add(mask, item.targets[category], item.valid)
                    # An image's own scores; where it has neither target nor prediction they are 1.
                    per_image.append({"image": item.path, **scores(counts, zero_division=1.0), **counts})
                    if on_mask is not None:
                        on_mask(item, category, method, mask, counts)
            except BandError as err:
                if not skip_missing_bands:
                    raise
                rows.append({**row, "images": len(group), "skipped": str(err)})
                continue
            rows.append({**row, **accumulator.result(), "per_image": per_image})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`evaluate`'s rows, with the averaging in its title."""
    from rsvlm.data.indices import INDEX_FOR_CATEGORY

    averages = sorted({str(r["average"]) for r in rows})
    how = {"global": "one confusion matrix over the images", "image": "mean of per-image scores"}
    lines = [
        "Scores of the category's pixels (valid pixels only); average: "
        + "; ".join(f"{a} ({how.get(a, a)})" for a in averages),
        "",
        "| dataset | category | method | images | " + " | ".join(METRIC_NAMES) + " |",
        "|---|---|---|---:|" + "---:|" * len(METRIC_NAMES),
    ]
    for r in rows:
        if "skipped" in r:
            cells = [f"skipped: {r['skipped']}"] + [""] * (len(METRIC_NAMES) - 1)
        else:
            cells = [f"{r[m]:.3f}" for m in METRIC_NAMES]
        method = r["method"]
        if method == BASELINE_NAME:
            method = f"{method} ({INDEX_FOR_CATEGORY[r['category']].upper()} > Otsu)"
        lines.append(f"| {r['dataset']} | {r['category']} | {method} | {r['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_model(recipe: str | Path, ckpt: str | Path | None) -> tuple[Any, Any]:
    """Build a recipe's ``model`` and ``data`` (seeded with its ``seed_everything``, as
    ``rsvlm predict`` does) and load the checkpoint's weights into the model (none: as built).

    Returns:
        ``(model in eval mode, data module)``.
    """
    from rsvlm.io.yaml_file import read_yaml

    path = Path(recipe)
    model, data = build_from_config(read_yaml(path) or {}, where=str(path))
    if ckpt is not None:
        model.load_weights(str(ckpt))
    return model.eval(), data


def build_from_config(config: dict[str, Any], where: str = "recipe") -> tuple[Any, Any]:
    """``(model, data module)`` of a recipe's parsed YAML (its ``model`` and ``data`` sections),
    seeded with its ``seed_everything``."""
    import lightning as L
    from jsonargparse import ArgumentParser

    from rsvlm.io.recipe_errors import parse_and_build

    missing = [k for k in ("model", "data") if k not in config]
    if missing:
        raise EvaluateError(f"recipe {where} has no {missing[0]!r} section")
    seed = config.get("seed_everything", 0)
    if isinstance(seed, int) and not isinstance(seed, bool):
        L.seed_everything(seed)  # no verbose= before Lightning 2.4
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    objects = parse_and_build(parser, {"model": config["model"], "data": config["data"]}, str(where))
    return objects.model, objects.data

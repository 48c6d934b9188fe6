"""Whole images with one free-text question, for the prediction of GeoMag / EarthGPT-X models.

One owner for both ways to predict: ``rsvlm predict`` (:meth:`InstructDataModule.predict_dataloader
<rsvlm.data.multitask.datamodule.InstructDataModule.predict_dataloader>`) and the Python API
(:mod:`rsvlm.inference.whole_image`) build the same :class:`WholeImagePredictDataset` and collate
it with :class:`PredictCollate`, so an image and a question become the same batch either way.

Each image and the question become an instruction record (:func:`predict_record`): the human turn
``"<image>\\n<question>"``, an empty gpt turn, the task of the asked granularity
(:data:`TASK_OF_GRANULARITY`, which MagCrop routes by) and the images' modality (with the data
module's ``modality_presets``, each image is normalised by its modality's preset, as in training). The samples are
:class:`rsvlm.data.multitask.dataset.InstructDataset`'s (``image`` ``C×S×S``, ``valid`` ``1×S×S``,
``meta`` with the resize info), their ``meta`` adding ``bands``, ``instruction`` and ``granularity``
for the writer (:class:`rsvlm.inference.writer.PredictionWriter`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rsvlm.contracts import RsvlmError
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.data.multitask.dataset import InstructCollate, InstructDataset, Item
from rsvlm.data.multitask.geometry import PadMode
from rsvlm.data.multitask.records import InstructRecord, Turn
from rsvlm.data.raster import read_header
from rsvlm.data.visual_prompts import VisualPrompt, prompts_to_json

#: The task a record of each granularity is given (MagCrop reads the granularity; a task it skips, GCG, is not one).
TASK_OF_GRANULARITY = {"image": "scene_classification", "region": "vqa", "pixel": "referring_segmentation"}


class PredictInputError(RsvlmError, ValueError):
    """An image that cannot be read, or a question or granularity that cannot be asked (names the file or field)."""


def check_granularity(granularity: str, where: str) -> str:
    """``granularity`` if it is a key of :data:`TASK_OF_GRANULARITY`, else a :class:`PredictInputError`."""
    if granularity not in TASK_OF_GRANULARITY:
        raise PredictInputError(
            f"{where}: granularity must be one of {', '.join(TASK_OF_GRANULARITY)}, got {granularity!r}"
        )
    return granularity


def check_question(question: str | None, where: str) -> str:
    """``question`` when it has text, else a :class:`PredictInputError` naming ``where``."""
    if question is None or not str(question).strip():
        raise PredictInputError(
            f"{where}: a whole-image model answers a question about each image; give one "
            "(rsvlm predict: --data.init_args.question='Segment the ship by the pier.')"
        )
    return str(question)


def check_modality(modality: str, presets: Mapping[str, Any] | None, where: str) -> str:
    """``modality`` if it is known (and has a preset when the model normalises by modality), else a
    :class:`PredictInputError` naming ``where``."""
    if modality not in MODALITY_IDS:
        raise PredictInputError(f"{where}: unknown modality {modality!r}; known: {', '.join(MODALITY_IDS)}")
    if presets is not None and modality not in presets:
        raise PredictInputError(
            f"{where}: modality {modality!r} has no entry in the model's modality_presets ({', '.join(presets)})"
        )
    return modality


def predict_record(
    path: str,
    question: str,
    granularity: str,
    prompts: Sequence[VisualPrompt] = (),
    record_id: str = "predict",
    modality: str = "optical",
) -> InstructRecord:
    """The instruction record that asks ``question`` about the image at ``path`` (see the module docstring)."""
    return InstructRecord(
        id=record_id,
        images=[path],
        task=TASK_OF_GRANULARITY[granularity],
        granularity=granularity,
        conversations=[Turn("human", f"<image>\n{question}"), Turn("gpt", "")],
        source="predict",
        split="test",
        modality=modality,
        visual_prompts=prompts_to_json(list(prompts)),
    )


class WholeImagePredictDataset(InstructDataset):
    """One sample per image, all asked the same question, on the model's square.

    Args:
        paths: raster files (GeoTIFF, PNG, JPEG: anything rasterio reads), checked here: a missing
            or unreadable file is an error naming it before any prediction runs.
        question: the free-text question.
        granularity: ``image``, ``region`` or ``pixel`` (what the question asks about).
        bands: the model's band names (kept in ``meta["bands"]`` for the overlay).
        scale: pixel divisor; image_size, pad, channels, mean, std, seg_text: as
            :class:`~rsvlm.data.multitask.dataset.InstructDataset`.
        prompts: visual prompts in the images' pixels, given to every image.
        where: the caller, named in errors (``InstructDataModule.predict_paths``, ``predict``).
        modality: ``optical``, ``sar`` or ``infrared``, the images' modality (the stems pick by it).
        modality_presets: modality → normalisation preset, as the data module's (then ``scale``,
            ``mean`` and ``std`` are not used); None normalises by ``scale``, ``mean`` and ``std``.

    Samples: :class:`~rsvlm.data.multitask.dataset.InstructDataset`'s (``image`` ``C×S×S`` float32,
    ``valid`` ``1×S×S`` bool, ...), ``meta`` with ``bands``, ``instruction`` and ``granularity`` added.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        question: str,
        granularity: str,
        bands: Sequence[str],
        scale: float,
        image_size: int,
        pad: PadMode = "center",
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seg_text: str | None = None,
        prompts: Sequence[VisualPrompt] = (),
        where: str = "predict",
        modality: str = "optical",
        modality_presets: Mapping[str, Any] | None = None,
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise PredictInputError(f"{where}: no images to predict; give at least one raster file")
        self.question = check_question(question, where)
        self.granularity = check_granularity(granularity, where)
        self.bands = list(bands)
        self.modality = check_modality(modality, modality_presets, where.rsplit(".", 1)[0] + ".modality")
        for path in self.paths:
            if not os.path.isfile(path):
                raise PredictInputError(f"{where}: {path}: no such file")
            read_header(path)  # RasterError naming the file when rasterio cannot open it
        items = [
            Item(
                predict_record(p, self.question, self.granularity, prompts, f"predict-{i}", self.modality),
                "predict",
                scale,
            )
            for i, p in enumerate(self.paths)
        ]
        super().__init__(items, image_size, pad, channels, mean, std, seg_text, modality_presets)

    @classmethod
    def of_datamodule(
        cls,
        datamodule: Any,
        paths: Sequence[str | os.PathLike],
        question: str,
        granularity: str,
        prompts: Sequence[VisualPrompt] = (),
        where: str = "predict",
        modality: str = "optical",
    ) -> WholeImagePredictDataset:
        """The dataset of ``paths`` prepared as an :class:`~rsvlm.data.multitask.datamodule.InstructDataModule` says."""
        dm = datamodule
        return cls(
            paths,
            question,
            granularity,
            dm.band_names,
            dm.scale,
            dm.image_size,
            dm.pad,
            dm.num_bands,
            dm.mean,
            dm.std,
            dm.seg_text,
            prompts,
            where,
            modality,
            dm.modality_presets,
        )

    def outputs(self) -> list[tuple[str, str | None, bool]]:
        """``(path, category, several categories)`` of every image, for the writer's output names."""
        return [(path, None, False) for path in self.paths]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        sample["meta"].update(bands=list(self.bands), instruction=self.question, granularity=self.granularity)
        return sample


class PredictCollate(InstructCollate):
    """:class:`~rsvlm.data.multitask.dataset.InstructCollate` without ``masks``: a prediction has no
    reference targets, so the model unites the targets it answers with (``mask_logits`` ``B×1×S×S``)."""

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(samples)
        batch.pop("masks")
        return batch


__all__ = [
    "TASK_OF_GRANULARITY",
    "PredictCollate",
    "PredictInputError",
    "WholeImagePredictDataset",
    "check_granularity",
    "check_question",
    "predict_record",
]

"""Pictures of where each method of ``rsvlm evaluate`` agrees with the reference, image by image.

:class:`ErrorFigures` is an ``on_mask`` observer of :func:`rsvlm.inference.evaluate.evaluate`: it
keeps every scored mask and the counts evaluate made of it and, once scoring is done, writes one
PNG per image and category, ``FOLDER/<dataset>/<image name>_<category>.png``: the picture, the
reference and one error map per method (:func:`rsvlm.io.pictures.save_error_figure`), each titled
with that method's F1 on this image. Paths are checked before anything is scored, so a long
evaluation never ends on a file that exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rsvlm.data.baseline import scores
from rsvlm.data.indices import normalize_category
from rsvlm.data.real import LabelledImage
from rsvlm.inference.evaluate import EvaluateError


class ErrorFigures:
    """Collects :func:`~rsvlm.inference.evaluate.evaluate`'s masks and writes error-map figures.

    Masks are kept (``H×W`` bool per image, category and method: 1 byte a pixel) until :meth:`write`.

    Args:
        folder: where the figures go (created).
        items: the images that will be scored (their figure names are fixed here).
        overwrite: replace existing figures; without it an existing one is an error before scoring.
        categories: the categories that will be scored (None: every one an image has a mask of).

    Raises:
        EvaluateError: a figure file exists and ``overwrite`` is False (names it).
    """

    def __init__(
        self,
        folder: str | Path,
        items: Sequence[LabelledImage],
        overwrite: bool = False,
        categories: Sequence[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.names = _unique_names(items)
        # (image, category) → method → (its H×W bool mask, its counts tp, fp, fn, tn)
        self.scored: dict[tuple[str, str], dict[str, tuple[np.ndarray, dict[str, int]]]] = {}
        self.items = {item.path: item for item in items}
        wanted = None if categories is None else {normalize_category(c) for c in categories}
        if not overwrite:
            for item in items:
                for category in item.targets:
                    if (wanted is None or category in wanted) and self.path(item, category).exists():
                        raise EvaluateError(f"{self.path(item, category)} exists; pass --overwrite to replace it")

    def path(self, item: LabelledImage, category: str) -> Path:
        """The figure of ``item`` and ``category``."""
        return self.folder / item.dataset / f"{self.names[item.path]}_{category}.png"

    def __call__(
        self, item: LabelledImage, category: str, method: str, mask: np.ndarray, counts: dict[str, int]
    ) -> None:
        self.scored.setdefault((item.path, category), {})[method] = (np.asarray(mask, bool), counts)

    def write(self, progress: bool = False) -> list[Path]:
        """One figure per scored image and category; returns the files written."""
        from tqdm.auto import tqdm

        from rsvlm.io.pictures import composite_or_stretch, save_error_figure

        written = []
        for (path, category), by_method in tqdm(self.scored.items(), desc="figures", disable=not progress):
            item = self.items[path]
            target = item.targets[category]
            panels = {}
            for method, (mask, counts) in by_method.items():
                panels[f"{method}\n{_score_line(counts)}"] = mask
            out = self.path(item, category)
            out.parent.mkdir(parents=True, exist_ok=True)
            rgb = composite_or_stretch(item.image, item.bands)
            title = f"{item.dataset}: {Path(path).name}, {category}"
            written.append(save_error_figure(out, rgb, target, panels, item.valid, title, self.overwrite))
        return written


def _score_line(counts: dict[str, int]) -> str:
    """``F1 0.812`` from an image's counts; where it has no reference pixel (F1 says nothing),
    the share of scored pixels the method marks instead."""
    if counts["tp"] + counts["fn"] == 0:
        scored = sum(counts.values())
        return f"no reference pixel; marks {100 * counts['fp'] / max(scored, 1):.1f} %"
    return f"F1 {scores(counts)['F1']:.3f}"


def _unique_names(items: Sequence[LabelledImage]) -> dict[str, str]:
    """Image path → figure name: the file's stem, numbered where two images of a dataset share it."""
    stems: dict[tuple[str, str], int] = {}
    for item in items:
        key = (item.dataset, Path(item.path).stem)
        stems[key] = stems.get(key, 0) + 1
    names = {}
    for index, item in enumerate(items):
        stem = Path(item.path).stem
        names[item.path] = stem if stems[(item.dataset, stem)] == 1 else f"{index:03d}_{stem}"
    return names

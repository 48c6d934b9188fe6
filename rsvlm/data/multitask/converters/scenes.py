"""Scene-classification folders (AID, NWPU-RESISC45, UC Merced) → scene-classification records.

Official layout: one folder per class, the images inside::

    AID/<Class>/<class>_<n>.jpg                    (30 classes, 600²; e.g. ``DenseResidential``)
    NWPU-RESISC45/<class>/<class>_<nnn>.jpg        (45 classes, 256²; e.g. ``baseball_diamond``)
    UCMerced_LandUse/Images/<class>/<class><nn>.tif (21 classes, 256²)

GeoMag evaluates AID and RESISC-45 zero-shot (``geomag.md`` §4.1), so the datasets ship no split:
every image becomes a record of the one ``split`` given (default ``test``). Classes are the sub-folders
in sorted order (hidden ones skipped); images are the files with an image suffix, sorted by name.

The label is the folder name made readable (``DenseResidential`` → ``dense residential``,
``baseball_diamond`` → ``baseball diamond``; ``readable_labels=False`` keeps it), because the answer
is scored as generated text against it. Templates:

* ``earthgptx``: "Classify the scene. Answer with one word or phrase." (EarthGPT-X §4.1);
* ``geomag``: the class list in the question, GeoChat-style (the spec's choice): "Classify the image
  within one of the given classes: a, b, …. Answer with one word or phrase."
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rsvlm.data.multitask.converters.common import ConverterError, image_size
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, InstructRecord, Turn
from rsvlm.data.multitask.templates import IMAGE_PREFIX, Style, check_style
from rsvlm.data.multitask.validate import check_record

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def readable_class(name: str) -> str:
    """A class folder's name as words: camel case split, ``_`` / ``-`` → space, lower case."""
    return " ".join(_CAMEL.sub(" ", name).replace("_", " ").replace("-", " ").lower().split())


def scene_question(style: Style, classes: list[str]) -> str:
    """The human turn (after ``<image>\\n``) of one style."""
    check_style(style)
    if style == "earthgptx":
        return "Classify the scene. Answer with one word or phrase."
    return f"Classify the image within one of the given classes: {', '.join(classes)}. Answer with one word or phrase."


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted; an error when there are none."""
    if not root.is_dir():
        raise ConverterError(f"{root}: scene-classification folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConverterError(f"{root}: no class folders (expected <root>/<class>/<image>)")
    return folders


def convert_scene_folders(
    root: str | os.PathLike,
    source: str,
    split: str = "test",
    style: Style = "earthgptx",
    readable_labels: bool = True,
    check_files: bool = True,
) -> list[InstructRecord]:
    """Scene-classification records of a folder-per-class dataset (one per image).

    Args:
        root: the folder holding the class folders.
        source: the records' source name (``aid``, ``resisc45``, ``ucm``).
        split: the split every record gets.
        style: template family (see the module docstring).
        readable_labels: class names as words (:func:`readable_class`).
        check_files: check the records before returning them.

    Raises:
        ConverterError: no class folders, a class folder without images, or an unreadable image.
    """
    check_style(style)
    folders = class_folders(Path(root))
    names = {f.name: (readable_class(f.name) if readable_labels else f.name) for f in folders}
    question = IMAGE_PREFIX + scene_question(style, list(names.values()))
    records = []
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ConverterError(f"{folder}: class folder without images ({', '.join(IMAGE_SUFFIXES)})")
        label = names[folder.name]
        for image in images:
            where = str(image)
            record = InstructRecord(
                id=f"{source}_{folder.name}_{image.stem}",
                images=[str(image)],
                task="scene_classification",
                granularity=DEFAULT_GRANULARITY["scene_classification"],
                conversations=[Turn("human", question), Turn("gpt", label)],
                source=source,
                split=split,
                size=list(image_size(image, where)),
                labels=[label],
                coord_convention="center",
                meta={"class_folder": folder.name, "file": image.name},
            )
            check_record(record, where, check_files)
            records.append(record)
    return records

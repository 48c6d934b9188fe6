"""``rsvlm evaluate --figures``: one picture per image and category of the masks that were scored.

The masks a figure shows are checked against the rows' confusion counts with sklearn's confusion
matrix; the files against their names, sizes and the never-replace rule.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import labelled_scene
from PIL import Image
from sklearn.metrics import confusion_matrix

from rsvlm.cli.main import main
from rsvlm.data.real import read_labelled
from rsvlm.inference.error_figures import ErrorFigures
from rsvlm.inference.evaluate import BASELINE_NAME, EvaluateError, baseline_predictor, evaluate

BANDS = ["red", "green", "blue", "nir"]


def _two_scenes_of_one_name(tmp_path):
    """``a/scene.tif`` and ``b/scene.tif`` (different seeds) as labelled images."""
    images, masks = [], []
    for seed, sub in enumerate(("a", "b")):
        folder = tmp_path / sub
        folder.mkdir()
        image, mask, _, _ = labelled_scene(folder, "scene", seed=seed)
        images.append(str(image))
        masks.append(str(mask))
    return images, masks


def _low_nir(item, category: str) -> np.ndarray:
    """A second method that differs from the baseline: NIR below its median."""
    nir = item.image[item.bands.index("nir")]
    return nir < np.median(nir)


def test_figures_hold_the_masks_each_row_scored(tmp_path):
    items = read_labelled(*_two_scenes_of_one_name(tmp_path), "water", BANDS)
    figures = ErrorFigures(tmp_path / "figures", items)
    predictors = {"low nir": _low_nir, BASELINE_NAME: baseline_predictor}
    rows = evaluate(items, predictors, on_mask=figures)
    assert len(rows) == 2
    for row in rows:
        preds, targets = [], []
        for item in items:
            mask, _ = figures.scored[(item.path, "water")][row["method"]]
            np.testing.assert_array_equal(mask, predictors[row["method"]](item, "water"))
            preds.append(mask[item.valid])
            targets.append(item.targets["water"][item.valid])
        tn, fp, fn, tp = confusion_matrix(np.concatenate(targets), np.concatenate(preds), labels=[0, 1]).ravel()
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn), row["method"]

    written = figures.write()
    # Two images of one name in one dataset are numbered, not written over each other.
    assert sorted(p.relative_to(tmp_path / "figures").as_posix() for p in written) == [
        "images/000_scene_water.png",
        "images/001_scene_water.png",
    ]
    with Image.open(written[0]) as picture:
        assert picture.format == "PNG" and picture.size == (4 * 300, 380)  # image, reference, 2 methods
    with pytest.raises(EvaluateError, match=r"000_scene_water\.png exists; pass --overwrite"):
        ErrorFigures(tmp_path / "figures", items)
    assert len(ErrorFigures(tmp_path / "figures", items, overwrite=True).names) == 2
    ErrorFigures(tmp_path / "figures", items, categories=["vegetation"])  # water's are not redrawn: no refusal


def test_cli_figures_are_checked_before_scoring_and_replaced_only_when_asked(tmp_path, capsys):
    image, mask, _, _ = labelled_scene(tmp_path, "strip")
    figures = tmp_path / "figures"
    args = ["evaluate", "--images", str(image), "--masks", str(mask), "--category", "water"]
    args += ["--bands", ",".join(BANDS), "--figures", str(figures), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "first.json")]) == 0
    assert "wrote 1 figure(s)" in capsys.readouterr().err
    figure = figures / "images" / "strip_water.png"
    before = figure.read_bytes()
    assert json.loads((tmp_path / "first.json").read_text())["rows"][0]["method"] == BASELINE_NAME

    # A figure that exists stops the run before anything is scored or written.
    assert main([*args, "--out", str(tmp_path / "second.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strip_water.png exists" in err
    assert not (tmp_path / "second.json").exists() and figure.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0
    assert figure.is_file()

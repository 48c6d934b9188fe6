"""Predicting a SAR image with a model that normalises by modality: the image keeps its own bands and
is normalised by the SAR preset, as in training; a modality the model has no preset for is refused."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from rsvlm.data.modalities import EARTHDIAL_S1_MEAN, EARTHDIAL_S1_STD, MODALITY_IDS, S1_CLIP_DB
from rsvlm.data.multitask.datamodule import InstructDataModule
from rsvlm.data.multitask.predict import PredictInputError

PRESETS = {"optical": "optical_dn8", "sar": "sentinel1_db"}
QUESTION = "What is the category of <Region 1>?"


@pytest.fixture
def sar_tif(tmp_path):
    """A 2-band (VV, VH) float32 GeoTIFF in dB, 64 × 64 (the square: no resize), some values past the clip."""
    rng = np.random.default_rng(0)
    db = rng.uniform(-40.0, 5.0, size=(2, 64, 64)).astype(np.float32)
    path = tmp_path / "s1.tif"
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=2, dtype="float32") as dst:
        dst.write(db)
    return path, db


def datamodule(path, **kwargs) -> InstructDataModule:
    return InstructDataModule(
        sources=["/nonexistent/records.jsonl"],  # prediction reads no records
        image_size=64,
        modality_presets=PRESETS,
        predict_paths=[str(path)],
        question=QUESTION,
        **kwargs,
    )


def test_a_sar_image_is_normalised_by_the_sar_preset(sar_tif):
    path, db = sar_tif
    dm = datamodule(path, modality="sar")
    dm.setup("predict")
    sample = dm.datasets["predict"][0]
    # Reference: the preset's formula written out: clip each band to its dB range, EarthDial's z-score.
    (vv_lo, vv_hi), (vh_lo, vh_hi) = S1_CLIP_DB["vv"], S1_CLIP_DB["vh"]
    clipped = np.stack([np.clip(db[0], vv_lo, vv_hi), np.clip(db[1], vh_lo, vh_hi)])
    expected = (clipped - EARTHDIAL_S1_MEAN) / EARTHDIAL_S1_STD
    np.testing.assert_allclose(sample["image"][:2].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert not sample["image"][2].any() and sample["band_valid"].tolist() == [True, True, False]
    assert sample["modality"] == MODALITY_IDS["sar"]


def test_a_modality_the_model_cannot_read_is_one_line_naming_the_field(sar_tif):
    path, _ = sar_tif
    with pytest.raises(PredictInputError, match=r"InstructDataModule\.modality: unknown modality 'radar'"):
        datamodule(path, modality="radar").setup("predict")
    with pytest.raises(PredictInputError, match=r"InstructDataModule\.modality: modality 'infrared' has no entry"):
        datamodule(path, modality="infrared").setup("predict")
    dm = datamodule(path)  # optical by default: a 2-band file is not an RGB image
    dm.setup("predict")
    with pytest.raises(ValueError, match="s1.tif"):
        dm.datasets["predict"][0]

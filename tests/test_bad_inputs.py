"""What users feed rsvlm by mistake: each gets a clear error naming the file and the field.

Rasters with the wrong band count, corrupt or truncated TIFFs, all-nodata images, NaN/inf
pixels, masks of another size, labels outside {0, 1}, empty dataset folders, recipes with a
misspelt key, missing weight files and pickled checkpoints with unexpected objects. Where the
library falls back instead of failing (NaN/inf pixels, nodata tiles inside a large scene), the
test checks the documented fallback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import from_origin

BANDS = ["blue", "green", "red", "nir"]
TRANSFORM = from_origin(300000.0, 5000000.0, 10.0, 10.0)


def _tif(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs="EPSG:32632",
        transform=TRANSFORM,
        nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


def _image(bands: int = 4, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.01, 0.5, size=(bands, size, size)).astype(np.float32)


def _mask(size: int = 16, values=(0, 1)) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.uint8)
    m[: size // 2] = values[1]
    m[-1, -1] = values[-1]
    return m


def _record(tmp_path: Path, image: Path, mask: Path, bands=BANDS, split: str = "train") -> dict:
    return {
        "image": str(image),
        "mask": str(mask),
        "category": "water",
        "bands": list(bands),
        "spectral_prompt": "[]",
        "instruction": "Describe the water regions.",
        "response": "Some water.",
        "split": split,
        "source": "test",
    }


def _dataset(records: list[dict]):
    from rsvlm.data.spie.dataset import SpieDataset
    from rsvlm.data.spie.records import SpieRecord

    recs = [SpieRecord.from_dict(r) for r in records]
    return SpieDataset(recs, BANDS, mean=np.full(4, 0.25, np.float32), std=np.full(4, 0.1, np.float32), image_size=16)


# ---------------------------------------------------------------------------- rasters
def test_wrong_band_count_for_the_recipe(tmp_path):
    from rsvlm.data.bands import BandError
    from rsvlm.data.raster import read_raster

    three = _tif(tmp_path / "rgb_only.tif", _image(bands=3))
    with pytest.raises(BandError, match=r"rgb_only\.tif.*(3 bands|found 3)|(3 bands|found 3).*rgb_only\.tif"):
        read_raster(three, bands=BANDS)
    mask = _tif(tmp_path / "m.tif", _mask())
    with pytest.raises(Exception, match=r"rgb_only\.tif.*3 bands.*field 'bands'"):
        _dataset([_record(tmp_path, three, mask)])[0]


def test_wrong_band_count_reaching_the_model_names_both_sides():
    from conftest import contract_batch, tiny_spex_components

    from rsvlm.contracts import ContractError
    from rsvlm.models.vlm import VisionLanguageModel

    model = VisionLanguageModel(**tiny_spex_components())
    with pytest.raises(ContractError, match=r"'image' has 3 bands.*in_bands=4"):
        model(contract_batch(model.llm.formatter, bands=3, size=32))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_or_truncated_tiff(tmp_path, damage):
    from rsvlm.data.raster import RasterError, read_raster

    good = _tif(tmp_path / "good.tif", _image(size=64))
    bad = tmp_path / f"{damage}.tif"
    raw = good.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3] if damage == "truncated" else b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(RasterError, match=rf"{damage}\.tif"):
        read_raster(bad, bands=BANDS)


def test_all_nodata_image_is_refused_in_training(tmp_path):
    image = _tif(tmp_path / "empty.tif", np.zeros((4, 16, 16), np.float32), nodata=0.0)
    mask = _tif(tmp_path / "m.tif", _mask())
    with pytest.raises(ValueError, match=r"empty\.tif: every pixel is invalid"):
        _dataset([_record(tmp_path, image, mask)])[0]


def test_all_nodata_tiles_in_a_large_scene_are_a_documented_fallback(tmp_path):
    from rsvlm.data.spie.predict_dataset import TiledPredictDataset

    data = _image(size=40)
    data[:, :20, :20] = 0  # one whole tile outside the footprint
    scene = _tif(tmp_path / "scene.tif", data, nodata=0.0)
    ds = TiledPredictDataset([str(scene)], BANDS, [0.25] * 4, [0.1] * 4, tile=20, overlap=0, categories=["water"])
    first = ds[0]
    assert not first["valid"].any() and torch.equal(first["image"], torch.zeros_like(first["image"]))
    assert "water" in first["instruction"]
    blank = _tif(tmp_path / "blank.tif", np.zeros((4, 40, 40), np.float32), nodata=0.0)
    with pytest.raises(ValueError, match=r"blank\.tif: every pixel is invalid"):
        TiledPredictDataset([str(blank)], BANDS, [0.25] * 4, [0.1] * 4, tile=20, overlap=0)[0]


def test_nan_and_inf_pixels_become_invalid_never_nan_in_a_batch(tmp_path):
    data = _image()
    data[0, 2, 3] = np.nan
    data[2, 5, 5] = np.inf
    data[3, 7, 1] = -np.inf
    image = _tif(tmp_path / "nan.tif", data)
    mask = _tif(tmp_path / "m.tif", _mask())
    sample = _dataset([_record(tmp_path, image, mask)])[0]
    assert torch.isfinite(sample["image"]).all()
    valid = sample["valid"][0]
    assert not valid[2, 3] and not valid[5, 5] and not valid[7, 1]
    assert int((~valid).sum()) == 3


def test_mask_of_another_size(tmp_path):
    image = _tif(tmp_path / "img.tif", _image(size=16))
    mask = _tif(tmp_path / "small_mask.tif", _mask(size=12))
    with pytest.raises(ValueError, match=r"field 'mask'.*small_mask\.tif.*12×12.*16×16"):
        _dataset([_record(tmp_path, image, mask)])[0]


def test_labels_outside_zero_one(tmp_path):
    image = _tif(tmp_path / "img.tif", _image())
    mask = _tif(tmp_path / "three_classes.tif", _mask(values=(0, 1, 2)))
    with pytest.raises(ValueError, match=r"three_classes\.tif: field 'mask'.*binary 0/1.*\[2\]"):
        _dataset([_record(tmp_path, image, mask)])[0]


def test_labels_outside_zero_one_reaching_the_metrics():
    from rsvlm.training.metrics import BinarySegmentationMetrics

    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 2
    with pytest.raises(ValueError, match="target must hold only 0/1"):
        BinarySegmentationMetrics().update(torch.zeros(1, 1, 4, 4), target)


# ---------------------------------------------------------------------------- datasets
def test_empty_dataset_folder(tmp_path):
    from rsvlm.data.spie.sources import SourceSpec, list_scenes

    empty = tmp_path / "my_dataset"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"my_dataset.*images folder"):
        list_scenes(SourceSpec("binary", str(empty), split="train", category="water"))


def test_empty_images_folder_is_an_error(tmp_path):
    from rsvlm.data.spie.builder import build_spie
    from rsvlm.data.spie.sources import SourceSpec

    root = tmp_path / "my_dataset"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match=r"my_dataset.*(no|empty)"):
        build_spie(
            [SourceSpec("binary", str(root), split="train", category="water", bands=BANDS)],
            tmp_path / "out",
            progress=False,
        )


def test_records_file_without_training_records(tmp_path):
    from rsvlm.data.spie.datamodule import SpieDataModule

    image = _tif(tmp_path / "img.tif", _image())
    mask = _tif(tmp_path / "m.tif", _mask())
    records = tmp_path / "spie.jsonl"
    records.write_text(json.dumps(_record(tmp_path, image, mask, split="test")) + "\n")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": {b: {"mean": 0.25, "std": 0.1} for b in BANDS}}))
    dm = SpieDataModule(records=str(records), stats=str(stats), bands=BANDS, image_size=16)
    with pytest.raises(ValueError, match=r"spie\.jsonl: no training records"):
        dm.setup("fit")


def test_datamodule_without_band_statistics(tmp_path):
    from rsvlm.data.spie.datamodule import SpieDataModule
    from rsvlm.data.stats import MissingStatsError

    image = _tif(tmp_path / "img.tif", _image())
    mask = _tif(tmp_path / "m.tif", _mask())
    records = tmp_path / "spie.jsonl"
    records.write_text(json.dumps(_record(tmp_path, image, mask)) + "\n")
    dm = SpieDataModule(records=str(records), stats=str(tmp_path / "no_stats.json"), bands=BANDS, image_size=16)
    with pytest.raises(MissingStatsError, match=r"no_stats\.json.*rsvlm data stats"):
        dm.setup("fit")


def test_predict_without_inputs():
    from rsvlm.data.spie.predict_dataset import TiledPredictDataset

    with pytest.raises(ValueError, match="predict_paths"):
        TiledPredictDataset([], BANDS, [0.0] * 4, [1.0] * 4)


# ---------------------------------------------------------------------------- recipes
RECIPE = {
    "trainer": {"accelerator": "cpu", "max_epochs": 1},
    "model": {
        "class_path": "rsvlm.models.vlm.VisionLanguageModel",
        "init_args": {
            "encoder": {
                "class_path": "rsvlm.encoders.timm_encoder.TimmEncoder",
                "init_args": {"model_name": "resnet18", "in_bands": 4},
            },
            "fusion": {
                "class_path": "rsvlm.fusion.msam.MSAM",
                "init_args": {"in_channels": [64, 128, 256, 512], "out_channels": 32},
            },
            "projector": {
                "class_path": "rsvlm.fusion.projector.MLPProjector",
                "init_args": {"in_dim": 32, "out_dim": 32},
            },
            "llm": {
                "class_path": "rsvlm.llm.causal_lm.CausalLM",
                "init_args": {
                    "config": {"base": "qwen2.5-0.5b", "hidden_size": 32},
                    "tokenizer": {"class_path": "rsvlm.data.spie.corpus.SpieDemoTokenizer"},
                },
            },
            "bridge": {
                "class_path": "rsvlm.bridges.tcp.TokenCompressionProjector",
                "init_args": {"in_dim": 32, "out_dim": 32, "num_tokens": 2},
            },
            "decoder": {
                "class_path": "rsvlm.heads.sam_decoder.SamMaskDecoderHead",
                "init_args": {"in_channels": 32, "prompt_dim": 32},
            },
        },
    },
    "data": {
        "class_path": "rsvlm.data.spie.datamodule.SpieDataModule",
        "init_args": {"records": "data/spie.jsonl", "bands": BANDS, "image_size": 32},
    },
}


def _parse(tmp_path: Path, recipe: dict) -> Path:
    """Write ``recipe`` to bad.yaml and parse it as ``rsvlm fit --config bad.yaml --print_config``."""
    from rsvlm.cli.lightning import run_lightning_cli

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_lightning_cli(["fit", "--config", str(path), "--print_config"])
    return path


def test_the_recipe_itself_parses(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(tmp_path, RECIPE)
    assert exit_info.value.code == 0 and "TokenCompressionProjector" in capsys.readouterr().out


@pytest.mark.parametrize(
    "where,key,reason",
    [
        (("data", "init_args"), "batch_sise", "not an argument of rsvlm.data.spie.datamodule.SpieDataModule"),
        (
            ("model", "init_args", "bridge", "init_args"),
            "num_tokenz",
            "not an argument of rsvlm.bridges.tcp.TokenCompressionProjector",
        ),
        (("trainer",), "max_epoch", "not an accepted option"),
    ],
)
def test_a_misspelt_recipe_key_is_one_line_naming_the_file_and_field(tmp_path, where, key, reason):
    import copy

    from rsvlm.io.recipe_errors import RecipeError

    recipe = copy.deepcopy(RECIPE)
    node = recipe
    for part in where:
        node = node[part]
    node[key] = 4
    field = ".".join([*where, key])
    with pytest.raises(RecipeError) as error:
        _parse(tmp_path, recipe)
    assert str(error.value) == f"{tmp_path / 'bad.yaml'}: {field}: {reason}"
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------- weights
def test_missing_sam_checkpoint(tmp_path):
    from rsvlm.heads.sam_decoder import SamMaskDecoderHead

    with pytest.raises(FileNotFoundError, match=r"sam_vit_h_missing\.pth"):
        SamMaskDecoderHead(in_channels=32, prompt_dim=32, checkpoint=str(tmp_path / "sam_vit_h_missing.pth"))


def test_missing_llm_folder(tmp_path):
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.llm.causal_lm import CausalLM

    with pytest.raises(FileNotFoundError, match=r"no_such_llm"):
        CausalLM(model=str(tmp_path / "no_such_llm"), tokenizer=SpieDemoTokenizer())


def test_missing_encoder_weights(tmp_path):
    from rsvlm.encoders.timm_encoder import TimmEncoder

    with pytest.raises(FileNotFoundError, match=r"resnet18_missing\.safetensors"):
        TimmEncoder(model_name="resnet18", in_bands=4, checkpoint_path=str(tmp_path / "resnet18_missing.safetensors"))


def test_missing_encoder_init_checkpoint(tmp_path):
    from conftest import tiny_spex_components

    from rsvlm.models.vlm import VisionLanguageModel

    with pytest.raises(FileNotFoundError, match=r"encoder_init.*mvpnet_missing\.ckpt"):
        VisionLanguageModel(**tiny_spex_components(), encoder_init=str(tmp_path / "mvpnet_missing.ckpt"))


def test_missing_resume_checkpoint(tmp_path):
    from rsvlm.training.checkpoints import AtomicCheckpointIO

    with pytest.raises(FileNotFoundError, match=r"gone\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "gone.ckpt")


def test_a_missing_checkpoint_given_to_rsvlm_is_one_line(tmp_path, capsys, monkeypatch):
    from conftest import REPO

    from rsvlm.cli.main import main

    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    gone = tmp_path / "gone.ckpt"
    recipe = REPO / "recipes" / "spex-demo-rgbn.yaml"
    assert main(["evaluate", "--config", str(recipe), "--ckpt", str(gone), "--real-data", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"rsvlm: error: checkpoint file not found: {gone}\n"


# ---------------------------------------------------------------------------- pickles
def _evil(path: Path, payload: dict) -> Path:
    torch.save({**payload, "surprise": argparse.Namespace(run="rm -rf /")}, path)
    return path


def test_pickled_training_checkpoint_is_refused(tmp_path):
    from rsvlm.training.checkpoints import AtomicCheckpointIO, CheckpointError

    evil = _evil(tmp_path / "downloaded.ckpt", {"state_dict": {}})
    with pytest.raises(CheckpointError, match=r"refused to load checkpoint .*downloaded\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(evil)


def test_pickled_sam_checkpoint_is_refused(tmp_path):
    from rsvlm.heads.sam_decoder import SamMaskDecoderHead

    evil = _evil(tmp_path / "sam_vit_b_evil.pth", {"mask_decoder.x": torch.zeros(1)})
    with pytest.raises(Exception, match=r"sam_vit_b_evil\.pth") as caught:
        SamMaskDecoderHead(in_channels=32, prompt_dim=256, checkpoint=str(evil))
    assert "\x1b" not in str(caught.value)  # torch's refusal prints its advice in bold on a terminal


def test_pickled_encoder_init_is_refused(tmp_path):
    from conftest import tiny_spex_components

    from rsvlm.models.vlm import VisionLanguageModel

    evil = _evil(tmp_path / "encoder_evil.ckpt", {"state_dict": {"encoder.x": torch.zeros(1)}})
    with pytest.raises(Exception, match=r"encoder_evil\.ckpt"):
        VisionLanguageModel(**tiny_spex_components(), encoder_init=str(evil))


def test_training_checkpoint_of_another_model_names_the_component(tmp_path):
    from conftest import TINY_LLM_CONFIG, tiny_spex_components

    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.llm.causal_lm import CausalLM, LoraSettings
    from rsvlm.models.vlm import VisionLanguageModel
    from rsvlm.training.checkpoints import CheckpointError
    from rsvlm.training.trained_only import keep_trained_only, restore_frozen

    trained = VisionLanguageModel(**tiny_spex_components(lora=True))
    checkpoint = {"state_dict": trained.state_dict()}
    keep_trained_only(trained, checkpoint)
    parts = tiny_spex_components(lora=True)
    parts["llm"] = CausalLM(
        config={**TINY_LLM_CONFIG, "intermediate_size": 48},
        tokenizer=SpieDemoTokenizer(),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    with pytest.raises(CheckpointError, match=r"component 'llm'"):
        restore_frozen(VisionLanguageModel(**parts), checkpoint)

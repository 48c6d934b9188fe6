"""``rsvlm predict`` of a whole-image model (GeoMag / EarthGPT-X: ``InstructDataModule``): a free-text
question about a GeoTIFF gives the answer JSON and, for pixel questions, a georeferenced mask and an
overlay PNG, the same files as ``rsvlm.load(...).predict(...).save(...)``.

The model is the GeoMag demo recipe with random weights. Its answer is forced to ``A ship [SEG0][SEG1]``
(the generation of the Hugging Face model is replaced; the hidden states that the mask decoder reads
still come from the model's own forward over the answer), so the mask depends on the image instead
of being the empty union of no target.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import REPO, predict_args
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsvlm.cli.main import main
from rsvlm.contracts import RsvlmError
from rsvlm.data.multitask.datamodule import InstructDataModule
from rsvlm.data.multitask.predict import PredictInputError
from rsvlm.data.raster import RasterError

QUESTION = "Can you segment the red ship at the top left in this image?"


@pytest.fixture(scope="module")
def geomag_run(tmp_path_factory, _offline_cache) -> Path:
    """A run folder of the GeoMag demo recipe: config.yaml + logs/version_0/checkpoints/last.ckpt (random weights)."""
    import lightning as L

    from rsvlm.inference.evaluate import build_from_config

    root = tmp_path_factory.mktemp("geomag-run")
    config = yaml.safe_load((REPO / "recipes" / "geomag-demo.yaml").read_text())
    config["data"]["init_args"]["generate"].update(n_train=4, n_val=2, n_test=2)
    config["model"]["init_args"]["generation"] = {"max_new_tokens": 4}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    model, _ = build_from_config(config)
    ckpt = root / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": L.__version__}, ckpt)
    return root


@pytest.fixture(scope="module")
def predictor(geomag_run):
    """``rsvlm.load`` of the run."""
    import rsvlm

    return rsvlm.load(geomag_run)


@pytest.fixture
def seg_answers(predictor, monkeypatch) -> None:
    """Every generation answers ``A ship [SEG0][SEG1]`` and stops (see the module docstring)."""
    llm = predictor.model.llm
    words = llm.tokenizer("A ship", add_special_tokens=False)["input_ids"]
    ids = [*words, *(llm.tokenizer.convert_tokens_to_ids(t) for t in ("[SEG0]", "[SEG1]")), llm.end_token_id]

    def generate(self, inputs_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.tensor([ids] * inputs_embeds.shape[0], device=inputs_embeds.device)

    monkeypatch.setattr(type(llm.model), "generate", generate)


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory) -> Path:
    """A 3-band uint8 GeoTIFF of 48×80 pixels in UTM 33N (not square: the pad is exercised)."""
    path = tmp_path_factory.mktemp("scene") / "harbour.tif"
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", height=48, width=80, count=3, dtype="uint8", crs=CRS.from_epsg(32633))
    with rasterio.open(path, "w", transform=from_origin(400000.0, 4500000.0, 0.5, 0.5), **profile) as dst:
        dst.write(rng.integers(0, 255, size=(3, 48, 80), dtype=np.uint8))
    return path


def test_predict_writes_what_the_api_saves(geomag_run, predictor, geotiff, seg_answers, tmp_path, monkeypatch, capsys):
    model = predictor
    probabilities = model.predict(str(geotiff), instruction=QUESTION).probabilities
    threshold = float(np.median(probabilities))  # a mask of about half the pixels: one the two must agree on
    result = model.predict(str(geotiff), instruction=QUESTION, granularity="pixel", threshold=threshold)
    assert 0.1 < result.mask.mean() < 0.9 and "ship" in result.text
    api = result.save(tmp_path / "api")

    question = f"--data.init_args.question={QUESTION}"
    args = [f"--data.init_args.predict_paths=[{geotiff}]", question, f"--trainer.callbacks.threshold={threshold}"]
    from rsvlm.data.multitask.generated import GeneratedInstructData

    def no_training_data(self):  # prediction must not build the demo's training data
        raise AssertionError("rsvlm predict generated training scenes")

    with monkeypatch.context() as patch:
        patch.setattr(GeneratedInstructData, "prepare", no_training_data)
        assert main(predict_args(geomag_run, tmp_path / "cli", tmp_path / "root", *args)) == 0

    cli = {kind: tmp_path / "cli" / path.name for kind, path in api.items()}
    with rasterio.open(cli["mask"]) as src, rasterio.open(api["mask"]) as ref, rasterio.open(geotiff) as scene:
        np.testing.assert_array_equal(src.read(1), ref.read(1))
        assert src.crs == ref.crs == scene.crs and src.transform == ref.transform == scene.transform
        np.testing.assert_array_equal(src.read(1) > 0, result.mask)
    assert cli["mask"].read_bytes() == api["mask"].read_bytes()
    assert cli["overlay"].read_bytes() == api["overlay"].read_bytes()
    answers = [json.loads(cli["json"].read_text()), json.loads(api["json"].read_text())]
    assert answers[0]["tiles"][0]["description"] == answers[1]["tiles"][0]["description"] == result.text
    assert answers[0]["instruction"] == QUESTION and answers[0]["granularity"] == "pixel"
    assert {k: v for k, v in answers[0].items() if k != "outputs"} == {
        k: v for k, v in answers[1].items() if k != "outputs"
    }

    # Nothing already written is replaced: a second run refuses before predicting, in one line.
    before = cli["mask"].read_bytes()
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    capsys.readouterr()
    assert main(predict_args(geomag_run, tmp_path / "cli", tmp_path / "root2", *args)) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rsvlm: error: ")]
    assert len(error) == 1 and "already exists; pass overwrite=True" in error[0], error
    assert cli["mask"].read_bytes() == before


@pytest.mark.parametrize("case", ["no question", "unreadable file"])
def test_bad_predict_inputs_are_one_line_errors(geomag_run, geotiff, tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    if case == "no question":
        extra, named = [f"--data.init_args.predict_paths=[{geotiff}]"], "InstructDataModule.question"
    else:
        extra, named = (
            [f"--data.init_args.predict_paths=[{broken}]", f"--data.init_args.question={QUESTION}"],
            "broken.tif",
        )
    assert main(predict_args(geomag_run, tmp_path / "out", tmp_path / "root", *extra)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if named in line]
    assert len(lines) == 1 and lines[0].startswith("rsvlm: error: ") and "Traceback" not in err, err
    assert not list((tmp_path / "out").glob("*"))


def _datamodule(**predict) -> InstructDataModule:
    """The demo recipe's data settings; sources that do not exist (prediction reads none)."""
    return InstructDataModule(
        sources=["/nonexistent/records.jsonl"], image_size=64, pad="center", seg_text="[SEG0][SEG1]", **predict
    )


def test_the_predict_batch_is_the_api_batch(predictor, geotiff):
    from rsvlm.data.multitask.predict import PredictCollate, WholeImagePredictDataset

    dm = _datamodule(predict_paths=[str(geotiff)], question=QUESTION, granularity="region")
    dm.set_text_formatter(predictor.formatter)
    dm.setup("predict")  # reads no records
    batch = next(iter(dm.predict_dataloader()))
    sample = WholeImagePredictDataset.of_datamodule(predictor.datamodule, [geotiff], QUESTION, "region")[0]
    api = PredictCollate(predictor.formatter)([sample])
    assert "masks" not in batch and batch["image"].shape == (1, 3, 64, 64)
    for key in ("image", "valid", "prompt_ids", "prompt_attention_mask"):
        assert torch.equal(batch[key], api[key]), key
    assert batch["granularity"] == ["region"] and batch["task"] == ["vqa"] and batch["instruction"] == [QUESTION]
    meta = batch["meta"][0]
    assert meta["bands"] == ["red", "green", "blue"] and meta["instruction"] == QUESTION
    assert meta["original_size"] == [48, 80] and meta["resize"] == sample["meta"]["resize"]
    assert dm.datasets["predict"].outputs() == [(str(geotiff), None, False)]


def test_predict_arguments_are_checked(geotiff, tmp_path):
    with pytest.raises(PredictInputError, match=r"InstructDataModule\.granularity: .*got 'object'"):
        _datamodule(predict_paths=[str(geotiff)], question=QUESTION, granularity="object")
    with pytest.raises(PredictInputError, match=r"InstructDataModule\.question"):
        _datamodule(predict_paths=[str(geotiff)], question="  ").setup("predict")
    missing = tmp_path / "missing.tif"
    with pytest.raises(PredictInputError, match=r"InstructDataModule\.predict_paths: .*missing\.tif: no such file"):
        _datamodule(predict_paths=[str(missing)], question=QUESTION).setup("predict")
    with pytest.raises(PredictInputError, match=r"InstructDataModule\.predict_paths: no images"):
        _datamodule(question=QUESTION).setup("predict")
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    with pytest.raises(RasterError, match="broken.tif"):
        _datamodule(predict_paths=[str(broken)], question=QUESTION).setup("predict")
    assert issubclass(PredictInputError, RsvlmError) and issubclass(RasterError, RsvlmError)
    # prediction alone needs no records
    assert InstructDataModule(predict_paths=[str(geotiff)], question=QUESTION).predict_paths == [str(geotiff)]

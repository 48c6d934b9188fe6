"""The Python API (rsvlm.load → Predictor.predict → Prediction) against `rsvlm predict` on the
same inputs: same files, same bytes; arrays, instructions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import REPO, predict_args, spy_instructions

import rsvlm
from rsvlm.data.bands import band_spec
from rsvlm.inference.api import LoadError, PredictError, resolve_run
from rsvlm.inference.writer import overlay_picture

DEMO_BANDS = list(band_spec("demo").names)


@pytest.fixture(scope="module")
def model(run_folder):
    return rsvlm.load(run_folder)


def test_load_finds_the_config_and_checkpoint_of_a_run(run_folder, tmp_path):
    config, ckpt = resolve_run(run_folder)
    assert config == run_folder / "config.yaml"
    assert ckpt.name == "last.ckpt"
    assert resolve_run(ckpt) == (config, ckpt)
    with pytest.raises(LoadError, match="none found"):
        resolve_run(tmp_path)
    with pytest.raises(LoadError, match="no such run folder"):
        resolve_run(tmp_path / "missing")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(LoadError, match="not a checkpoint"):
        resolve_run(tmp_path / "weights.pt")


def test_predict_saves_the_same_files_as_rsvlm_predict(run_folder, scene, model, tmp_path):
    from rsvlm.cli.main import main

    cli_out = tmp_path / "cli"
    inputs = [f"--data.init_args.predict_paths=[{scene}]", "--data.init_args.categories=[water]"]
    inputs.append("--trainer.callbacks.probabilities=true")
    code = main(predict_args(run_folder, cli_out, tmp_path / "predict-run", *inputs))
    assert code in (0, None)
    result = model.predict(str(scene), category="water")
    paths = result.save(tmp_path / "api", probabilities=True)
    for kind in ("mask", "overlay", "probabilities"):
        assert paths[kind].read_bytes() == (cli_out / paths[kind].name).read_bytes(), kind
    api_json, cli_json = (json.loads(p.read_text()) for p in (paths["json"], cli_out / paths["json"].name))
    api_json.pop("outputs"), cli_json.pop("outputs")
    assert api_json == cli_json
    with rasterio.open(paths["mask"]) as src:
        np.testing.assert_array_equal(src.read(1).astype(bool), result.mask)
        assert src.crs == result.crs and src.transform == result.transform
    with rasterio.open(paths["probabilities"]) as src:
        saved = src.read(1)
    np.testing.assert_array_equal(np.where(result.valid, saved, 0.0), result.probabilities)
    assert np.isnan(saved[~result.valid]).all()
    assert [t["description"] for t in cli_json["tiles"]] == result.texts
    with pytest.raises(FileExistsError, match="already exists"):
        result.save(tmp_path / "api")
    assert result.save(tmp_path / "api", overwrite=True)["mask"] == paths["mask"]


def test_an_array_gives_the_file_prediction_and_bands_pick_by_name(scene, model):
    from_file = model.predict(str(scene), category="water")
    with rasterio.open(scene) as src:
        pixels = src.read()
    from_array = model.predict(pixels, category="water")
    np.testing.assert_array_equal(from_array.mask, from_file.mask)
    np.testing.assert_allclose(from_array.probabilities, from_file.probabilities, atol=1e-6)
    assert from_array.texts == from_file.texts and from_array.crs is None
    shuffled = pixels[::-1]
    by_name = model.predict(torch.from_numpy(shuffled.copy()), category="water", bands=DEMO_BANDS[::-1])
    np.testing.assert_array_equal(by_name.mask, from_file.mask)
    np.testing.assert_array_equal(from_file.show(), overlay_picture(str(scene), from_file.mask, DEMO_BANDS))
    assert from_array.show().shape == (80, 100, 3)
    several = model.predict([pixels, str(scene)], category="water")
    assert len(several) == 2 and np.array_equal(several[1].mask, from_file.mask)


def test_an_array_is_saved_without_georeferencing(scene, model, tmp_path):
    with rasterio.open(scene) as src:
        pixels = src.read()
    pixels[:, :4, :4] = np.nan  # nodata: invalid, never in the mask
    result = model.predict(pixels, category="water")
    assert not result.valid[:4, :4].any() and not result.mask[:4, :4].any()
    paths = result.save(tmp_path, probabilities=True)
    with rasterio.open(paths["mask"]) as src:
        np.testing.assert_array_equal(src.read(1).astype(bool), result.mask)
    with rasterio.open(paths["probabilities"]) as src:
        assert src.crs is None
        np.testing.assert_array_equal(src.read(1)[result.valid], result.probabilities[result.valid])
        assert np.isnan(src.read(1)[:4, :4]).all()
    assert json.loads(paths["json"].read_text())["category"] == "water"


def test_own_instruction_reaches_the_model(scene, model, monkeypatch):
    seen = spy_instructions(monkeypatch, model.model)
    result = model.predict(str(scene), instruction="Where is the water?")
    assert seen and set(seen) == {"Where is the water?"} and result.instruction == "Where is the water?"


def test_bad_calls_are_one_line_errors(scene, model):
    with pytest.raises(PredictError, match="reads no visual prompts"):
        model.predict(str(scene), category="water", points=[[10, 10]])
    with pytest.raises(PredictError, match="category="):
        model.predict(str(scene))
    with pytest.raises(PredictError, match="4 bands but the model takes 6"):
        model.predict(np.zeros((4, 32, 32), np.float32), category="water")
    with pytest.raises(PredictError, match="no band 'swir1'"):
        model.predict(np.zeros((4, 32, 32), np.float32), category="water", bands=["blue", "green", "red", "nir"])
    with pytest.raises(PredictError, match="no such file"):
        model.predict("missing.tif", category="water")
    with pytest.raises(ValueError, match="unknown land-cover category"):
        model.predict(str(scene), category="clouds")


# ----------------------------------------------------------------------- exported model folders
def test_export_then_load_in_a_fresh_process_gives_the_same_mask(run_folder, scene, model, tmp_path):
    import subprocess
    import sys

    from rsvlm.cli.main import main

    (run_folder / "metrics.json").write_text(json.dumps({"test/F1": 0.5, "test/IoU": 0.25, "metric_average": "image"}))
    folder = tmp_path / "model"
    assert main(["export", str(run_folder), "--to", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} >= {"README.md", "model.safetensors", "rsvlm.json", "recipe.yaml"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: rsvlm") and "| test | 0.500 |" in card and "averaging: image" in card
    assert "Generated multispectral scenes" not in card  # the fixture's data are statistics only
    marker = json.loads((folder / "rsvlm.json").read_text())
    assert marker["bands"] == DEMO_BANDS and marker["metrics"]["test/F1"] == 0.5

    expected = model.predict(str(scene), category="water").save(tmp_path / "in-process")
    script = (
        "import sys, rsvlm; "
        "r = rsvlm.load(sys.argv[1]).predict(sys.argv[2], category='water'); "
        "print(r.save(sys.argv[3])['mask'])"
    )
    out = tmp_path / "fresh-process"
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(scene), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip().splitlines()[-1]).read_bytes() == expected["mask"].read_bytes()


def test_export_refuses_to_replace_and_a_broken_folder_names_the_missing_file(run_folder, tmp_path):
    from rsvlm.inference.export import ExportError, export, load_folder

    folder = export(run_folder, tmp_path / "model")
    with pytest.raises(ExportError, match="already exists"):
        export(run_folder, folder)
    assert export(run_folder, folder, overwrite=True) == folder
    (folder / "stats.json").unlink()
    with pytest.raises(ExportError, match="stats.json is missing"):
        load_folder(folder)


def test_exported_weights_are_the_checkpoints(run_folder, tmp_path):
    from safetensors.torch import load_file

    from rsvlm.inference.export import export

    folder = export(run_folder, tmp_path / "model")
    saved = load_file(str(folder / "model.safetensors"))
    original = torch.load(run_folder / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved.keys() == original["state_dict"].keys()
    for key, value in original["state_dict"].items():
        assert torch.equal(saved[key], value), key


def test_a_list_shares_batches_and_gives_each_image_its_own_prediction(scene, model, tmp_path):
    with rasterio.open(scene) as src:
        profile, data = src.profile, src.read()
    other = tmp_path / "other.tif"
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(data[:, ::-1].copy())  # flipped upside down: another answer
    alone = [model.predict(str(p), category="water") for p in (scene, other)]
    together = model.predict([str(scene), str(other), str(scene)], category="water")
    assert [r.image for r in together] == [str(scene), str(other), str(scene)]
    for single, batched in zip(alone + alone[:1], together):
        assert batched.texts == single.texts
        np.testing.assert_allclose(batched.probabilities, single.probabilities, atol=1e-5)
    assert together[0].probabilities.shape == (80, 100) and not np.array_equal(
        together[0].probabilities, together[1].probabilities
    )

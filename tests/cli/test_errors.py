"""rsvlm's own errors reach the user as one line and exit status 2; ``--debug`` shows the traceback.

Every case runs the real ``rsvlm`` entry point on a real bad input (a 1-band GeoTIFF where the
records or the recipe expect 4 or 6 bands): in-process through ``main([...])``, and from a shell
through ``python -m rsvlm.cli``, where LightningCLI reads ``sys.argv`` itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import REPO
from rasterio.transform import from_origin

from rsvlm.cli.main import main
from rsvlm.contracts import ContractError, RsvlmError
from rsvlm.data.bands import BandError, band_spec

RECORD_BANDS = ["blue", "green", "red", "nir"]


def _one_band_tif(folder: Path) -> Path:
    path = folder / "one_band.tif"
    pixels = np.random.default_rng(0).uniform(0.01, 0.5, size=(1, 32, 32)).astype(np.float32)
    profile = dict(driver="GTiff", height=32, width=32, count=1, dtype="float32", crs="EPSG:32632")
    with rasterio.open(path, "w", transform=from_origin(300000.0, 5000000.0, 10.0, 10.0), **profile) as dst:
        dst.write(pixels)
    return path


@pytest.fixture
def bad_records(tmp_path) -> Path:
    """A SPIE records file whose one record claims 4 bands for a 1-band GeoTIFF."""
    image = _one_band_tif(tmp_path)
    record = {
        "image": str(image),
        "mask": str(image),
        "category": "water",
        "bands": RECORD_BANDS,
        "spectral_prompt": "[]",
        "instruction": "Describe the water regions.",
        "response": "Some water.",
        "split": "train",
        "source": "test",
    }
    path = tmp_path / "spie.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def _stats_args(records: Path) -> list[str]:
    return ["data", "stats", "--records", str(records), "--out", str(records.parent / "stats.json"), "--no-progress"]


def _predict_args(tmp_path: Path) -> list[str]:
    """``rsvlm predict`` of the 6-band demo recipe on a 1-band GeoTIFF (statistics only, no data build)."""
    image = _one_band_tif(tmp_path)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": {n: {"mean": 0.2, "std": 0.1} for n in band_spec("demo").names}}))
    return [
        "predict",
        "--config",
        str(REPO / "recipes" / "spex-demo.yaml"),
        "--data.init_args.generate=null",
        f"--data.init_args.stats={stats}",
        f"--data.init_args.predict_paths=[{image}]",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]


def _run_rsvlm(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "rsvlm.cli", *args], capture_output=True, text=True, cwd=REPO, env=environment
    )


def _assert_one_error_line(stderr: str, named: str) -> None:
    assert "Traceback" not in stderr
    naming = [line for line in stderr.splitlines() if named in line]
    assert len(naming) == 1, stderr
    assert naming[0].startswith("rsvlm: error: ")


# ----------------------------------------------------------------------- rsvlm's own subcommands
def test_band_count_error_is_one_line_and_status_2(bad_records, capsys, monkeypatch):
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    assert main(_stats_args(bad_records)) == 2
    err = capsys.readouterr().err
    _assert_one_error_line(err, "one_band.tif")
    assert len(err.splitlines()) == 1, err  # nothing else on stderr
    assert re.search(r"one_band\.tif.*\b4 bands\b.*\b1\b", err), err  # names the file and both counts


def test_debug_flag_anywhere_shows_the_exception(bad_records, monkeypatch):
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    args = _stats_args(bad_records)
    with pytest.raises(BandError, match=r"one_band\.tif"):
        main([*args[:2], "--debug", *args[2:]])  # removed before `data stats` parses its arguments


@pytest.mark.parametrize("value, shown", [("1", True), ("true", True), ("0", False), ("", False)])
def test_debug_environment_variable(bad_records, monkeypatch, capsys, value, shown):
    monkeypatch.setenv("RSVLM_DEBUG", value)
    if shown:
        with pytest.raises(BandError):
            main(_stats_args(bad_records))
    else:
        assert main(_stats_args(bad_records)) == 2
        _assert_one_error_line(capsys.readouterr().err, "one_band.tif")


def test_multi_line_message_is_folded_into_one_line(monkeypatch, capsys):
    import rsvlm.experiments.summarize as summarize

    def fail(argv):
        raise ContractError("fusion: in_channels [64, 128]\n   but the encoder gives\n\n [32, 64]")

    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    monkeypatch.setattr(summarize, "summarize_main", fail)
    assert main(["summarize", "--config", "x.yaml"]) == 2
    expected = "fusion: in_channels [64, 128] but the encoder gives [32, 64]"
    assert capsys.readouterr().err == f"rsvlm: error: {expected}\n"


def test_other_exceptions_keep_their_traceback(monkeypatch):
    import rsvlm.experiments.summarize as summarize

    def fail(argv):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(summarize, "summarize_main", fail)
    assert not issubclass(RuntimeError, RsvlmError)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["summarize", "--config", "x.yaml"])


def test_from_the_shell_one_line_then_traceback_with_debug(bad_records):
    plain = _run_rsvlm(_stats_args(bad_records), RSVLM_DEBUG="")
    assert plain.returncode == 2
    _assert_one_error_line(plain.stderr, "one_band.tif")
    assert len(plain.stderr.splitlines()) == 1, plain.stderr

    debug = _run_rsvlm([*_stats_args(bad_records), "--debug"], RSVLM_DEBUG="")
    assert debug.returncode not in (0, 2)
    assert "Traceback" in debug.stderr
    assert "BandError" in debug.stderr and "one_band.tif" in debug.stderr


def test_evaluate_with_images_and_masks_that_do_not_pair_is_a_usage_error(tmp_path, capsys):
    args = ["evaluate", "--images", "a.tif", "b.tif", "--masks", "a_mask.tif", "--category", "water"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--bands", "naip"])
    assert exit_info.value.code == 2
    assert "--images gives 2 file(s) but --masks gives 1" in capsys.readouterr().err.splitlines()[-1]


def test_predict_without_images_and_convert_of_nothing_are_one_line(tmp_path, capsys, monkeypatch):
    """Tracebacks before: a ValueError from the data module, an OSError from convert, a ValueError
    for an unknown category."""
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    predict = [arg for arg in _predict_args(tmp_path) if not arg.startswith("--data.init_args.predict_paths")]
    assert main(predict) == 2
    _assert_one_error_line(capsys.readouterr().err, "SpieDataModule.predict_paths")
    assert main(["convert", "llava", "--from", str(tmp_path / "no_llava"), "--out", str(tmp_path / "out")]) == 2
    _assert_one_error_line(capsys.readouterr().err, "no_llava")
    assert not (tmp_path / "out").exists()
    assert main(["data", "generate", "--out", str(tmp_path / "scenes"), "--n", "0"]) == 2
    assert "n (scenes) and size (pixels) must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "scenes").exists()
    unknown = ["evaluate", "--images", "a.tif", "--masks", "m.tif", "--category", "lava", "--bands", "naip"]
    assert main(unknown) == 2
    _assert_one_error_line(capsys.readouterr().err, "unknown land-cover category 'lava'")


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--images", "{missing}", "--masks", "{missing}", "--category", "water", "--bands", "naip"],
        ["data", "stats", "--records", "{missing}"],
        ["data", "stack", "{missing}", "--bands", "nir", "--out", "{folder}/out.tif"],
    ],
    ids=["evaluate", "data stats", "data stack"],
)
def test_a_file_that_is_not_there_is_one_line_naming_it(tmp_path, capsys, monkeypatch, command):
    """Before, a missing raster or records file was a plain FileNotFoundError: a traceback."""
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    missing = tmp_path / "not_there.tif"
    args = [arg.format(missing=missing, folder=tmp_path) for arg in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    _assert_one_error_line(err, "not_there.tif")
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["summarize", "--config", "{bad}"],
        ["evaluate", "--config", "{bad}", "--ckpt", "{ckpt}", "--real-data", "{folder}"],
        ["sweep", "{bad}"],
        ["table", "{bad}"],
    ],
    ids=["summarize", "evaluate", "sweep", "table"],
)
def test_a_recipe_or_sweep_that_is_not_yaml_is_one_line_with_its_position(tmp_path, capsys, monkeypatch, command):
    """Before, summarize and evaluate gave PyYAML's traceback and sweep its five-line report."""
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    args = [arg.format(bad=bad, ckpt=ckpt, folder=tmp_path) for arg in command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "broken.yaml" in err and "not valid YAML: expected ',' or ']'" in err and "(line 2, column 1)" in err


def test_a_checkpoint_that_is_not_one_is_named_as_such(tmp_path, capsys, monkeypatch):
    """Before, an image given as --ckpt was 'refused ... pickled objects other than tensors'."""
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    image = _one_band_tif(tmp_path)
    recipe = str(REPO / "recipes" / "spex-demo-rgbn.yaml")
    assert main(["evaluate", "--config", recipe, "--ckpt", str(image), "--real-data", str(tmp_path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, f"cannot read checkpoint {image}: not a file torch.save wrote")


# ----------------------------------------------------------------------- LightningCLI subcommands
def test_predict_with_a_one_band_geotiff_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    assert main(_predict_args(tmp_path)) == 2
    err = capsys.readouterr().err
    _assert_one_error_line(err, "one_band.tif")
    assert re.search(r"one_band\.tif.*\b1 bands?\b.*\b6\b", err), err  # names the file and both counts


def test_predict_from_the_shell_with_debug_shows_the_traceback(tmp_path):
    # From the shell LightningCLI parses sys.argv itself: had --debug stayed there, jsonargparse
    # would refuse it as an unknown option instead of reaching the band-count error.
    result = _run_rsvlm(["--debug", *_predict_args(tmp_path)], RSVLM_DEBUG="")
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr
    assert "BandError" in result.stderr and "one_band.tif" in result.stderr

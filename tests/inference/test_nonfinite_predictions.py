"""A checkpoint whose mask logits come out NaN: `rsvlm predict` and the Python API stop with one line
naming the file, instead of writing an all-background mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import predict_args

import rsvlm
from rsvlm.models.output_checks import NonFiniteOutputError

CKPT = Path("logs") / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def nan_run(run_folder, tmp_path_factory) -> Path:
    """The demo run folder with NaN in the mask decoder's output hypernetworks (as a diverged or
    corrupted training run leaves them)."""
    root = tmp_path_factory.mktemp("nan-run")
    shutil.copy(run_folder / "config.yaml", root / "config.yaml")
    checkpoint = torch.load(run_folder / CKPT, weights_only=False)
    poisoned = [k for k in checkpoint["state_dict"] if "output_hypernetworks_mlps" in k and k.endswith("2.bias")]
    assert poisoned, "the demo decoder's hypernetwork biases moved; poison another output weight"
    for key in poisoned:
        checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))
    (root / CKPT).parent.mkdir(parents=True)
    torch.save(checkpoint, root / CKPT)
    return root


def test_the_api_refuses_nan_mask_logits_and_names_the_image(nan_run, scene):
    model = rsvlm.load(nan_run)
    with pytest.raises(NonFiniteOutputError, match=rf"mask logits are NaN or infinite .*\({scene} window \[0, 0,"):
        model.predict(str(scene), category="water")


def test_rsvlm_predict_stops_with_one_line_and_writes_no_mask(nan_run, scene, tmp_path, capsys, monkeypatch):
    from rsvlm.cli.main import main

    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    out = tmp_path / "out"
    inputs = [f"--data.init_args.predict_paths=[{scene}]", "--data.init_args.categories=[water]"]
    code = main(predict_args(nan_run, out, tmp_path / "run", *inputs, "--trainer.enable_progress_bar=false"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("rsvlm: error: mask logits are NaN or infinite at ") and str(scene) in err[-1]
    assert not list(out.rglob("*.tif"))  # rglob of a folder never made is empty too

"""The GeoMag / EarthGPT-X benchmark scripts run on the CPU at their smallest settings and print
their tables: one row per granularity, one training-step row (two for EarthGPT-X: without and with
activation checkpointing), and the GPU scripts refuse a missing GPU with a message saying what to do."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import earthgptx_gpu
import geomag
import geomag_gpu

pytestmark = pytest.mark.timeout(300)

GRANULARITY_HEADER = "| granularity | tasks | batch | MagCrop (ms/sample) |"


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # after the header and the alignment row
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def check_granularity_rows(rows: list[list[str]]) -> None:
    assert [r[0] for r in rows] == ["image", "region", "pixel"]
    for r in rows:
        assert float(r[3]) >= 0 and float(r[4]) > 0  # MagCrop, answer ms/sample
    assert rows[2][1] == "referring_segmentation" and rows[0][1] == "scene_classification"


def test_geomag_demo_prints_a_row_per_granularity_and_a_training_step(capsys, tmp_path):
    argv = ["--scenes", "3", "--per-batch", "1", "--batch-size", "2", "--new-tokens", "2"]
    argv += ["--steps", "1", "--warmup", "0", "--repeats", "1", "--device", "cpu", "--root", str(tmp_path)]
    assert geomag.main(argv) == 0
    out = capsys.readouterr().out
    check_granularity_rows(table_rows(out, GRANULARITY_HEADER))
    (train,) = table_rows(out, "| recipe | precision |")
    assert train[0] == "geomag-demo.yaml" and train[1] == "32-true" and train[2] == "2"
    assert float(train[6]) > 0 and math.isfinite(float(train[9]))  # step time, loss


def test_paper_geomag_tiny_runs_the_paper_wiring_in_bf16_with_the_classifier(capsys):
    assert geomag_gpu.main(["--dry-run", "--new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "geomag.yaml (tiny shapes, random weights)" in out
    rows = table_rows(out, GRANULARITY_HEADER)
    check_granularity_rows(rows)
    assert all(r[6] != "" and float(r[6]) > 0 for r in rows)  # the BERT classifier's routing time
    assert all(r[-1] == "bf16-mixed" for r in rows)
    (train,) = table_rows(out, "| recipe | precision |")
    assert train[1] == "bf16-mixed" and float(train[5].removesuffix(" M")) < float(train[4].removesuffix(" M"))


def test_paper_earthgptx_tiny_trains_without_and_with_activation_checkpointing(capsys):
    assert earthgptx_gpu.main(["--dry-run", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "earthgptx.yaml (tiny shapes, random weights)" in out
    rows = table_rows(out, "| activation checkpointing |")
    assert [r[0] for r in rows] == ["off", "on"]
    assert all(r[1] == "bf16-mixed" and r[2] == "2" and r[3] == "0 image, 0 region, 2 pixel" for r in rows)


def test_checkpointing_switch_reaches_the_llm_and_the_tiny_shapes_keep_the_recipe_wiring():
    import yaml

    config = yaml.safe_load((REPO / "recipes" / "earthgptx.yaml").read_text())
    model_config = geomag_gpu.random_weight_config(config["model"])
    llm = model_config["init_args"]["llm"]["init_args"]
    assert "model" not in llm and llm["config"] == "llama-2-13b"  # no hub download, the shipped architecture
    earthgptx_gpu.tiny_earthgptx(model_config)
    model = geomag_gpu.build_on_device(model_config, torch.device("cpu"))
    assert model.llm.trainable_mode == "attention"
    base = model.llm.base_model
    flag = (
        "is_activation_checkpointing"
        if hasattr(type(base), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    earthgptx_gpu.set_activation_checkpointing(model, True)
    assert getattr(base, flag)
    earthgptx_gpu.set_activation_checkpointing(model, False)
    assert not getattr(base, flag)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
@pytest.mark.parametrize("script", [geomag_gpu, earthgptx_gpu])
def test_gpu_scripts_say_they_need_a_gpu(script):
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*--dry-run"):
        script.main([])

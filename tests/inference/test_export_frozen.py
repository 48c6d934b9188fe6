"""Exporting a run whose LLM is a frozen base loaded from a folder (with LoRA): the folder holds
the trained weights and the tokenizer but not the base, loads back to the same outputs, and says
which base it cannot find when the base's folder is gone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_LLM_CONFIG, contract_batch
from jsonargparse import ArgumentParser

from rsvlm.inference.export import ExportError, export, load_folder
from rsvlm.training.trained_only import keep_trained_only

BANDS = ["blue", "green", "red", "nir"]


def _recipe(llm_folder: Path, stats: Path) -> dict:
    return {
        "seed_everything": 3,
        "model": {
            "class_path": "rsvlm.models.vlm.VisionLanguageModel",
            "init_args": {
                "encoder": {
                    "class_path": "rsvlm.encoders.timm_encoder.TimmEncoder",
                    "init_args": {"model_name": "resnet18", "in_bands": 4},
                },
                "fusion": {
                    "class_path": "rsvlm.fusion.msam.MSAM",
                    "init_args": {"in_channels": [64, 128, 256, 512], "out_channels": 32, "form": "paper"},
                },
                "projector": {
                    "class_path": "rsvlm.fusion.projector.MLPProjector",
                    "init_args": {"in_dim": 32, "out_dim": 32},
                },
                "llm": {
                    "class_path": "rsvlm.llm.causal_lm.CausalLM",
                    "init_args": {
                        "model": str(llm_folder),
                        "freeze": True,
                        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                    },
                },
                "bridge": {
                    "class_path": "rsvlm.bridges.tcp.TokenCompressionProjector",
                    "init_args": {"in_dim": 32, "out_dim": 32, "num_tokens": 2},
                },
                "decoder": {
                    "class_path": "rsvlm.heads.sam_decoder.SamMaskDecoderHead",
                    "init_args": {
                        "in_channels": 32,
                        "prompt_dim": 32,
                        "decoder_depth": 1,
                        "decoder_mlp_dim": 64,
                        "decoder_heads": 2,
                    },
                },
                "stage": "joint",
                "generation": {"max_new_tokens": 4},
            },
        },
        "data": {
            "class_path": "rsvlm.data.spie.datamodule.SpieDataModule",
            "init_args": {"stats": str(stats), "bands": BANDS, "image_size": 32},
        },
    }


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """A run folder (config.yaml + a trained-only checkpoint) whose LLM base and tokenizer come
    from a local folder; LoRA trained one step."""
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.llm.causal_lm import CausalLM

    root = tmp_path_factory.mktemp("frozen-run")
    torch.manual_seed(5)
    base = CausalLM(config=TINY_LLM_CONFIG, tokenizer=SpieDemoTokenizer())
    base.base_model.save_pretrained(root / "llm")
    base.tokenizer.save_pretrained(root / "llm")
    stats = root / "stats.json"
    stats.write_text(json.dumps({"bands": {b: {"mean": 0.2, "std": 0.1} for b in BANDS}}))
    config = _recipe(root / "llm", stats)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    L.seed_everything(3)  # no verbose= before Lightning 2.4 (the lower bound is 2.3)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    model = parser.instantiate_classes(parser.parse_object({"model": config["model"]})).model
    batch = contract_batch(model.llm.formatter, size=32)
    model.losses(model(batch), batch, with_mask=True)["total"].backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    checkpoint = {"state_dict": model.state_dict(), "pytorch-lightning_version": L.__version__}
    keep_trained_only(model, checkpoint)
    ckpt = root / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save(checkpoint, ckpt)
    return root, ckpt, model


def _outputs(model) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(contract_batch(model.llm.formatter, size=32))
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def test_the_folder_keeps_trained_weights_and_the_tokenizer_not_the_base(frozen_run, tmp_path):
    from safetensors.torch import load_file

    root, ckpt, model = frozen_run
    folder = export(ckpt, tmp_path / "model")
    saved = load_file(str(folder / "model.safetensors"))
    assert not any(k.startswith("llm.") and "lora" not in k and "embed" not in k for k in saved)
    assert any("lora_A" in k for k in saved)
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    assert (
        yaml.safe_load((folder / "recipe.yaml").read_text())["model"]["init_args"]["llm"]["init_args"]["tokenizer"]
        == "tokenizer"
    )
    marker = json.loads((folder / "rsvlm.json").read_text())
    assert marker["trained_only"]["frozen_bases"]["llm"]["source"] == str(root / "llm")
    assert "llm" in (folder / "README.md").read_text()
    loaded, _ = load_folder(folder)
    for key, value in _outputs(model).items():
        torch.testing.assert_close(_outputs(loaded)[key], value, msg=key)


def test_a_missing_base_is_named(frozen_run, tmp_path):
    root, ckpt, _ = frozen_run
    folder = export(ckpt, tmp_path / "model")
    moved = root.parent / "moved-llm"
    shutil.move(root / "llm", moved)
    try:
        with pytest.raises(ExportError, match=r"frozen base of 'llm' from .*llm, which does not exist"):
            load_folder(folder)
    finally:
        shutil.move(moved, root / "llm")

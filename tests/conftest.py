"""Shared fixtures: tiny SPEX components and a batch in the datamodule's contract."""

from __future__ import annotations

import os
from pathlib import Path

import lightning  # noqa: F401  (see below)
import pytest
import torch

# Lightning's first import gives its loggers a StreamHandler bound to the sys.stderr of that
# moment. Imported here, at collection, that is the real stderr; first imported inside a test that
# captures stderr, it was that test's capture, closed afterwards, and a later test's "Seed set to"
# line became a logging traceback in its captured stderr (test_evaluate after test_errors).

# One thread: with other processes on a 2-core machine, two OpenMP threads per process
# oversubscribe the cores and run many times slower.
torch.set_num_threads(1)
# Under pytest-xdist (the README runs two workers) the other worker keeps the second core busy, so
# the rsvlm commands that tests start as subprocesses get one thread too (two ran 2x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def declared_requirements(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """rsvlm's requirements as pyproject.toml declares them: ``[project] dependencies`` plus the
    named optional-dependency groups (read from the file: an editable install's metadata can be
    older than it)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [text for extra in extras for text in project["optional-dependencies"][extra]]


def quiet_trainer(**kwargs):
    """A CPU Lightning Trainer without logger, checkpoints, progress bar, summary or validation
    (what a unit test that trains a few steps wants); ``kwargs`` add to or override these."""
    import lightning.pytorch as pl

    settings = dict(
        accelerator="cpu",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**settings, **kwargs})


def recipe_cli(monkeypatch, recipe: str):
    """rsvlm's CLI with ``recipes/<recipe>`` parsed and its model and datamodule built, as
    ``rsvlm fit`` builds them, but not run."""
    import sys

    import lightning as L

    from rsvlm.cli.lightning import RsvlmCLI

    monkeypatch.setattr(sys, "argv", ["rsvlm"])  # pytest's own arguments are not the CLI's
    return RsvlmCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(REPO / "recipes" / recipe)],
    )


@pytest.fixture(autouse=True, scope="session")
def _offline_cache(tmp_path_factory):
    """Keep every cache (demo tokenizer, generated data) inside the test session and offline."""
    cache = tmp_path_factory.mktemp("rsvlm-cache")
    old = {k: os.environ.get(k) for k in ("RSVLM_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["RSVLM_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield cache
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


TINY_LLM_CONFIG = {
    "base": "qwen2.5-0.5b",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


#: A tiny Qwen2 architecture for CausalLM tests that build from a plain transformers config.
TINY_QWEN2_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def chatml(messages: list[dict], generation_prompt: bool) -> str:
    """Qwen2's ChatML written out by hand (default system turn when none is given)."""
    text = ""
    if messages[0]["role"] != "system":
        text += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def tiny_spex_components(bands: int = 4, lora: bool = False, special_tokens: tuple[str, ...] = ("<image>",)) -> dict:
    """The SPEX wiring at toy widths (built in Python with the recipes' arguments)."""
    from rsvlm.bridges.tcp import TokenCompressionProjector
    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.encoders.timm_encoder import TimmEncoder
    from rsvlm.fusion.msam import MSAM
    from rsvlm.fusion.projector import MLPProjector
    from rsvlm.heads.sam_decoder import SamMaskDecoderHead
    from rsvlm.llm.causal_lm import CausalLM, LoraSettings

    torch.manual_seed(0)
    encoder = TimmEncoder(model_name="resnet18", in_bands=bands)
    return dict(
        encoder=encoder,
        fusion=MSAM(in_channels=encoder.channels, out_channels=32, form="paper"),
        projector=MLPProjector(in_dim=32, out_dim=32),
        llm=CausalLM(
            config=TINY_LLM_CONFIG,
            tokenizer=SpieDemoTokenizer(),
            freeze=lora,
            special_tokens=list(special_tokens),
            lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None,
        ),
        bridge=TokenCompressionProjector(in_dim=32, out_dim=32, num_tokens=2),
        decoder=SamMaskDecoderHead(in_channels=32, prompt_dim=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2),
    )


def randomize_lora(module: torch.nn.Module, seed: int = 3, scale: float = 0.5) -> None:
    """Give every LoRA ``lora_B`` random values (``scale`` × N(0, 1), from its own generator seeded
    ``seed``): ``lora_B`` is 0 at initialisation, so the adapters would not change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def contract_batch(formatter, bands: int = 4, size: int = 64, batch: int = 2) -> dict:
    """A batch in the SpieDataModule contract, with random pixels and fixed text."""
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    instructions = ["Based on the provided image, describe the water regions."] * batch
    responses = ["There is one small water region at the top left.", "Water: one region, top left, small."][:batch]
    return {
        "image": torch.randn(batch, bands, size, size, generator=g),
        "mask": mask,
        "valid": torch.ones(batch, 1, size, size, dtype=torch.bool),
        "category": ["water"] * batch,
        "instruction": instructions,
        "response": responses,
        "meta": [{} for _ in range(batch)],
        **formatter(instructions, responses),
    }


# ---------------------------------------------------------------- a trained-looking run to use
DEMO_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory) -> Path:
    """A run folder as `rsvlm fit` leaves it: config.yaml + logs/version_0/checkpoints/last.ckpt
    of the demo recipe (random weights, 8 generated tokens, band statistics, no data build)."""
    import json

    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    root = tmp_path_factory.mktemp("run")
    config = yaml.safe_load((REPO / "recipes" / "spex-demo.yaml").read_text())
    stats = root / "stats.json"
    stats.write_text(json.dumps({"bands": {n: {"mean": 0.2, "std": 0.1} for n in DEMO_BANDS}}))
    config["data"]["init_args"].update(generate=None, stats=str(stats))
    config["model"]["init_args"]["generation"] = {"max_new_tokens": 8}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    L.seed_everything(0)  # no verbose= before Lightning 2.4 (the lower bound is 2.3)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    model = parser.instantiate_classes(parser.parse_object({"model": config["model"]})).model
    ckpt = root / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": L.__version__}, ckpt)
    return root


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """A 6-band float32 GeoTIFF of 80×100 pixels (two tiles of 64 with overlap each way)."""
    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    rng = np.random.default_rng(0)
    data = rng.uniform(0.0, 0.5, size=(6, 80, 100)).astype(np.float32)
    data[:, :20, 40:70] = np.array([0.07, 0.06, 0.03, 0.01, 0.005, 0.003], np.float32)[:, None, None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=80,
        width=100,
        count=6,
        dtype="float32",
        crs=CRS.from_epsg(32632),
        transform=from_origin(500000.0, 5300000.0, 10.0, 10.0),
    ) as dst:
        dst.write(data)
    return path


def predict_args(run: Path, out: Path, root: Path, *extra: str) -> list[str]:
    """``rsvlm predict`` of the run's recipe and checkpoint with the writer into ``out``."""
    return [
        "predict",
        "--config",
        str(run / "config.yaml"),
        f"--ckpt_path={run / 'logs' / 'version_0' / 'checkpoints' / 'last.ckpt'}",
        "--trainer.callbacks+=rsvlm.inference.writer.PredictionWriter",
        f"--trainer.callbacks.output_dir={out}",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        "--return_predictions=false",
        *extra,
    ]


def spy_instructions(monkeypatch, model) -> list[str]:
    """The instructions every later ``model.predict_masks`` call receives, in order (the call still runs)."""
    seen: list[str] = []
    original = model.predict_masks

    def spy(batch):
        seen.extend(batch["instruction"])
        return original(batch)

    monkeypatch.setattr(model, "predict_masks", spy)
    return seen


def tiny_sam2_config(image_size: int = 128, width: int = 32) -> dict:
    """A tiny random SAM 2 (transformers' tiny-random-Sam2Model geometry) for ``image_size``² input
    with FPN / prompt / decoder width ``width``; deterministic single-mask output (no stability swap)."""
    sizes = [[image_size // r, image_size // r] for r in (4, 8, 16)]
    return {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 12,
                "num_attention_heads": 1,
                "image_size": [image_size, image_size],
                "blocks_per_stage": [1, 2, 7, 2],
                "embed_dim_per_stage": [12, 24, 48, 96],
                "num_attention_heads_per_stage": [1, 2, 4, 8],
                "window_size_per_stage": [8, 4, 14, 7],
                "global_attention_blocks": [5, 7, 9],
            },
            "backbone_channel_list": [96, 48, 24, 12],
            "backbone_feature_sizes": sizes,
            "fpn_hidden_size": width,
        },
        "prompt_encoder_config": {
            "hidden_size": width,
            "image_size": image_size,
            "patch_size": 16,
            "mask_input_channels": 8,
        },
        "mask_decoder_config": {
            "hidden_size": width,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 32,
            "dynamic_multimask_via_stability": False,
        },
    }


@pytest.fixture(scope="session")
def sam_checkpoint(tmp_path_factory):
    """A random-weight SAM ViT-B and a checkpoint file with its decoder/prompt-encoder keys.

    The image-encoder weights are left out of the file (except one key, to check it is
    ignored) to keep the file small; the head never reads them.
    """
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)
    state = {k: v for k, v in sam.state_dict().items() if not k.startswith("image_encoder.")}
    state["image_encoder.neck.0.weight"] = sam.state_dict()["image_encoder.neck.0.weight"]
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return sam, path


def coco_runs(mask) -> list[int]:
    """Uncompressed COCO RLE of an ``H×W`` mask, by hand: column-major run lengths, starting with a
    run of zeros (what the converters' RLE decoding is tested against)."""
    flat = mask.T.ravel().astype(int)
    out, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            out.append(length)
            current, length = v, 1
    return [*out, length]


def labelled_scene(tmp_path: Path, name: str, bands: int = 4, seed: int = 0):
    """A 40×48 reflectance GeoTIFF ``name.tif`` (red, green, blue, nir, ...) with a water strip
    (rows 10-21: green up, NIR down) and its mask GeoTIFF ``name_mask.tif`` (1 water, 0 not,
    255 = nodata in the top-left 4×5 corner).

    Returns:
        ``(image path, mask path, image bands×40×48 float32, label 40×48 uint8)``.
    """
    import numpy as np
    import rasterio

    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.3, size=(bands, 40, 48)).astype(np.float32)
    water = np.zeros((40, 48), bool)
    water[10:22, :] = True
    image[1][water] += 0.1  # green up
    image[3][water] = rng.uniform(0.01, 0.03, size=int(water.sum()))  # nir down
    label = water.astype(np.uint8)
    label[:4, :5] = 255
    paths = tmp_path / f"{name}.tif", tmp_path / f"{name}_mask.tif"
    for path, data, nodata in ((paths[0], image, None), (paths[1], label[None], 255)):
        with rasterio.open(
            path, "w", driver="GTiff", height=40, width=48, count=data.shape[0], dtype=data.dtype, nodata=nodata
        ) as dst:
            dst.write(data)
    return *paths, image, label

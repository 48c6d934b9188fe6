"""MVPNet: shapes, loss and metrics against independent references, the multi-class
datamodule, a short Lightning fit, and MVPNet → SPEX encoder transfer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from conftest import REPO, recipe_cli
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from rsvlm.contracts import ContractError
from rsvlm.data.scenes import CLASS_NAMES, generate_scene, write_scene_folder
from rsvlm.data.segmentation import (
    IGNORE_INDEX,
    SceneSegmentationDataModule,
    SegmentationDataError,
    SegmentationSource,
)
from rsvlm.encoders.timm_encoder import TimmEncoder
from rsvlm.heads.upernet import UperNetSegHead
from rsvlm.models.mvpnet import MVPNet, class_map_grid, default_target_categories, palette
from rsvlm.models.transfer import load_encoder_weights

NAMES = list(CLASS_NAMES.values())  # bare soil, vegetation, water, building
BANDS = 6  # the "demo" preset
# timm's toy ResNet (0.4 M parameters, BatchNorm buffers included): keeps the module fast
ENCODER = "test_resnet"


def tiny_mvpnet(seed: int = 0, bands: int = BANDS, **kwargs) -> MVPNet:
    torch.manual_seed(seed)
    encoder = TimmEncoder(model_name=ENCODER, in_bands=bands)
    head = UperNetSegHead(encoder.channels, num_classes=4, hidden_size=16, pool_scales=[1, 2])
    return MVPNet(encoder, head, num_classes=4, class_names=NAMES, **kwargs)


# --------------------------------------------------------------------------- model


def test_forward_backward_shapes():
    model = tiny_mvpnet()
    image = torch.randn(2, BANDS, 64, 48)
    logits = model(image)
    assert logits.shape == (2, 4, 64, 48)
    classes = torch.randint(0, 4, (2, 64, 48))
    model.loss(logits, classes).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
    assert model.encoder.model.conv1[0].weight.grad.abs().sum() > 0
    assert model.head.head.classifier.weight.grad.abs().sum() > 0


def test_loss_is_cross_entropy_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    classes = torch.randint(0, 4, (3, 8, 8))
    classes[0, :2] = IGNORE_INDEX  # unlabelled
    valid = torch.rand(3, 1, 8, 8) > 0.3  # e.g. nodata pixels
    loss = MVPNet.loss(tiny_mvpnet(), logits, classes, valid)

    # reference: mean of -log p(class) over pixels that are labelled and valid
    keep = (classes != IGNORE_INDEX) & valid[:, 0]
    logp = torch.log_softmax(logits.detach().double(), dim=1)
    picked = logp.gather(1, classes.clamp(max=3)[:, None])[:, 0]
    reference = -picked[keep].mean()
    torch.testing.assert_close(loss.detach().double(), reference, rtol=1e-6, atol=1e-6)
    target = torch.where(keep, classes, torch.full_like(classes, IGNORE_INDEX))
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX))


def test_loss_without_valid_pixels_is_zero_not_nan():
    logits = torch.randn(1, 4, 4, 4, requires_grad=True)
    loss = MVPNet.loss(tiny_mvpnet(), logits, torch.full((1, 4, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_nan_class_logits_are_refused_in_test_and_predict_not_argmaxed():
    from rsvlm.models.output_checks import NonFiniteOutputError

    model = tiny_mvpnet().eval()
    model.log = lambda *args, **kw: None  # no trainer in a unit test
    batch = {
        "image": torch.randn(2, BANDS, 32, 32),
        "classes": torch.randint(0, 4, (2, 32, 32)),
        "meta": [{"image": "a.tif"}, {"image": "b.tif"}],
    }
    assert model.predict_step(batch, 0)["logits"].isfinite().all()
    batch["image"][1, :, 5, 5] = float("nan")  # one pixel spreads through the convolutions
    with torch.no_grad():
        with pytest.raises(NonFiniteOutputError, match=r"^class logits are NaN or infinite .* \(b\.tif\)"):
            model.predict_step(batch, 0)
        with pytest.raises(NonFiniteOutputError, match=r"\(b\.tif\)"):
            model.test_step(batch, 0)
    assert not any(m.update_called for m in model.metrics["test"].values())


def test_assembly_errors_name_the_components():
    encoder = TimmEncoder(model_name=ENCODER, in_bands=BANDS)
    with pytest.raises(ContractError, match="UperNetSegHead"):
        MVPNet(encoder, UperNetSegHead([32, 64, 128, 256], num_classes=4, hidden_size=16), num_classes=4)
    with pytest.raises(ContractError, match="num_classes"):
        MVPNet(encoder, UperNetSegHead(encoder.channels, num_classes=5, hidden_size=16), num_classes=4)
    with pytest.raises(ValueError, match="class_names"):
        MVPNet(encoder, UperNetSegHead(encoder.channels, num_classes=4, hidden_size=16), 4, class_names=["a", "b"])
    with pytest.raises(ValueError, match="target_categories"):
        MVPNet(encoder, UperNetSegHead(encoder.channels, 4, hidden_size=16), 4, target_categories={"water": [7]})
    with pytest.raises(ContractError, match="in_bands=6"):
        tiny_mvpnet()(torch.randn(1, 4, 32, 32))


def test_default_target_categories():
    assert default_target_categories(NAMES) == {"vegetation": [1], "water": [2], "building": [3]}
    assert default_target_categories(["Water", "other"]) == {"water": [0]}
    assert default_target_categories(None) == {}


def test_class_map_grid_colours():
    preds = torch.tensor([[[0, 1], [2, 3]]])
    target = torch.tensor([[[0, IGNORE_INDEX], [2, 1]]])
    grid = class_map_grid(
        torch.randn(1, BANDS, 2, 2), preds, target, 4, ["blue", "green", "red", "nir", "swir1", "swir2"], 1
    )
    colours = palette(4)
    assert grid.shape == (2, 6, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:, 2:4], colours[preds[0].numpy()])
    np.testing.assert_array_equal(grid[0, 5], [0, 0, 0])  # invalid target pixel is black
    np.testing.assert_array_equal(grid[1, 5], colours[1])


# --------------------------------------------------------------------------- datamodule


def test_generated_batches_and_train_statistics():
    dm = SceneSegmentationDataModule(n_train=5, n_val=2, n_test=2, size=32, seed=3, batch_size=2, augment=False)
    dm.setup("fit")
    # independent statistics: every train scene regenerated from its documented seed
    train = np.stack([generate_scene(32, "demo", np.random.default_rng([3, 0, i]))[0] for i in range(5)])
    np.testing.assert_allclose(dm.mean, train.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(dm.std, train.std(axis=(0, 2, 3), dtype=np.float64), rtol=1e-4)

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, BANDS, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["classes"].shape == (2, 32, 32) and batch["classes"].dtype == torch.long
    assert batch["valid"].shape == (2, 1, 32, 32) and batch["valid"].dtype == torch.bool
    # each batch sample is one of the train scenes, normalised with the train statistics
    scene = batch["image"][0].numpy() * dm.std[:, None, None] + dm.mean[:, None, None]
    i = int(np.argmin([np.abs(scene - t).max() for t in train]))
    np.testing.assert_allclose(scene, train[i], atol=1e-5)
    expected = generate_scene(32, "demo", np.random.default_rng([3, 0, i]))[1]
    np.testing.assert_array_equal(batch["classes"][0].numpy(), expected)
    # five train scenes in batches of two: the last batch of one is dropped (BatchNorm)
    assert len(dm.train_dataloader()) == 2


def test_flips_are_shared_by_image_and_labels():
    dm = SceneSegmentationDataModule(n_train=4, n_val=1, n_test=1, size=32, batch_size=2, augment=True)
    dm.setup("fit")
    ds = dm.datasets["train"]
    plain = {k: v for k, v in zip(("image", "classes"), _plain(ds, 1))}
    seen = set()
    for seed in range(12):
        s = ds[(1, seed)]
        for lr in (False, True):
            for ud in (False, True):
                dims = [d for d, on in ((-1, lr), (-2, ud)) if on]
                image = torch.flip(plain["image"], dims) if dims else plain["image"]
                classes = torch.flip(plain["classes"], dims) if dims else plain["classes"]
                if torch.equal(s["image"], image):
                    assert torch.equal(s["classes"], classes)
                    seen.add((lr, ud))
    assert len(seen) == 4, f"only flips {seen} were drawn"


def _plain(ds, index):
    ds.augment = False
    try:
        s = ds[index]
    finally:
        ds.augment = True
    return s["image"], s["classes"]


def test_folder_source_label_map_nodata_and_statistics(tmp_path):
    root = tmp_path / "scenes"
    write_scene_folder(root, n=6, size=32, bands="demo", seed=1, split_fractions={"train": 4, "val": 1, "test": 1})
    # one train image gets a nodata pixel (NaN), one label an unmapped code
    manifest = __import__("json").loads((root / "manifest.json").read_text())
    first = next(s for s in manifest["scenes"] if s["split"] == "train")
    with rasterio.open(root / first["image"], "r+") as dst:
        data = dst.read()
        data[:, 0, 0] = np.nan
        dst.write(data)
    # merge water (2) and building (3) into one class; bare soil unmapped → invalid
    source = SegmentationSource(root=str(root), label_map={1: 0, 2: 1, 3: 1})
    dm = SceneSegmentationDataModule(
        sources=[source],
        bands=["nir", "red", "green"],
        class_names=["vegetation", "water or building"],
        batch_size=2,
        augment=False,
    )
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 4, "val": 1, "test": 1}

    # statistics from the train files, read directly
    pixels = []
    for s in manifest["scenes"]:
        if s["split"] == "train":
            with rasterio.open(root / s["image"]) as src:
                x = src.read()[[3, 2, 1]].reshape(3, -1).astype(np.float64)
            pixels.append(x[:, np.isfinite(x).all(axis=0)])
    pixels = np.concatenate(pixels, axis=1)
    np.testing.assert_allclose(dm.mean, pixels.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(dm.std, pixels.std(axis=1), rtol=1e-4)

    ds = dm.datasets["train"]
    idx = [i for i, it in enumerate(ds.items) if Path(it.image).name == Path(first["image"]).name][0]
    sample = ds[idx]
    with rasterio.open(root / first["label"]) as src:
        codes = src.read(1)
    lut = np.array([IGNORE_INDEX, 0, 1, 1])
    expected = lut[codes]
    expected[0, 0] = IGNORE_INDEX  # the NaN pixel
    np.testing.assert_array_equal(sample["classes"].numpy(), expected)
    np.testing.assert_array_equal(sample["valid"][0].numpy(), expected != IGNORE_INDEX)
    assert sample["image"][:, 0, 0].eq(0).all() and torch.isfinite(sample["image"]).all()


def test_folder_errors(tmp_path):
    root = tmp_path / "scenes"
    write_scene_folder(root, n=3, size=16, bands="demo", seed=0, split_fractions={"train": 3})
    with pytest.raises(ValueError, match="class_names"):
        SceneSegmentationDataModule(sources=[SegmentationSource(root=str(root))])
    # codes 0..3 as class indices, but only two classes declared
    dm = SceneSegmentationDataModule(sources=[SegmentationSource(root=str(root))], class_names=["a", "b"])
    with pytest.raises(SegmentationDataError, match="label_map"):
        dm.setup("fit")
    dm = SceneSegmentationDataModule(
        sources=[SegmentationSource(root=str(root), bands=["red", "green"])], class_names=NAMES
    )
    with pytest.raises(KeyError, match="expected 2 bands"):
        dm.setup("fit")
    with pytest.raises(SegmentationDataError, match="split"):
        (tmp_path / "plain" / "images").mkdir(parents=True)
        SceneSegmentationDataModule(
            sources=[SegmentationSource(root=str(tmp_path / "plain"), bands="demo")], class_names=NAMES
        ).setup("fit")


# --------------------------------------------------------------------------- fit, metrics, transfer


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import lightning as L

    root = tmp_path_factory.mktemp("mvpnet")
    dm = SceneSegmentationDataModule(n_train=12, n_val=4, n_test=6, size=32, seed=0, batch_size=4)
    model = tiny_mvpnet(seed=1, lr=1e-3)
    initial = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=True,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    fit_metrics = dict(trainer.callback_metrics)
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    results = trainer.test(model, dm, verbose=False)[0]
    return model, dm, Path(ckpt), results, initial, fit_metrics


def test_fit_trains_and_logs(fitted):
    model, _, ckpt, results, initial, fit_metrics = fitted
    assert ckpt.is_file()
    assert model.trainer.global_step == 3
    changed = [k for k, v in model.encoder.state_dict().items() if not torch.equal(v, initial[k])]
    assert changed, "three optimisation steps left the encoder unchanged"
    for key in ("test/mIoU", "test/accuracy", "test/F1", "test/Recall", "test/Precision", "test/OA", "test/IoU"):
        assert key in results
    for key in ("train/loss", "val/loss", "val/mIoU", "val/F1", "val/water/IoU"):
        assert key in fit_metrics


def test_test_metrics_match_sklearn(fitted):
    model, dm, _, results, _, _ = fitted
    model.eval()
    y_true, y_pred = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            pred = model(batch["image"]).argmax(dim=1)
            keep = batch["valid"][:, 0]
            y_true.append(batch["classes"][keep].numpy())
            y_pred.append(pred[keep].numpy())
    y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)

    present = sorted(set(y_true) | set(y_pred))
    miou = jaccard_score(y_true, y_pred, labels=present, average="macro")
    assert results["test/mIoU"] == pytest.approx(miou, abs=1e-5)
    assert results["test/accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-5)
    per_class = jaccard_score(y_true, y_pred, labels=range(4), average=None, zero_division=0)
    for name, iou in zip(NAMES, per_class):
        assert results[f"test/class_IoU/{name.replace(' ', '_')}"] == pytest.approx(iou, abs=1e-5)

    # SPEX's binary scores, one-vs-rest per category, averaged over the categories
    scores = {"F1": f1_score, "Recall": recall_score, "Precision": precision_score, "IoU": jaccard_score}
    for metric in ("F1", "Recall", "Precision", "OA", "IoU"):
        per_category = []
        for code, category in ((1, "vegetation"), (2, "water"), (3, "building")):
            t, p = y_true == code, y_pred == code
            value = accuracy_score(t, p) if metric == "OA" else scores[metric](t, p, zero_division=0)
            assert results[f"test/{category}/{metric}"] == pytest.approx(value, abs=1e-5)
            per_category.append(value)
        assert results[f"test/{metric}"] == pytest.approx(np.mean(per_category), abs=1e-5)


def test_checkpoint_encoder_initialises_a_fresh_encoder(fitted):
    model, _, ckpt, _, _, _ = fitted
    torch.manual_seed(123)
    fresh = TimmEncoder(model_name=ENCODER, in_bands=BANDS)
    trained = model.encoder.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())
    load_encoder_weights(fresh, ckpt)
    loaded = fresh.state_dict()
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key
    # and exactly the checkpoint's encoder.* tensors
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in loaded.items():
        assert torch.equal(state[f"encoder.{key}"], value), key


def test_spex_encoder_init_takes_mvpnet_encoder(fitted):
    from conftest import tiny_spex_components

    from rsvlm.fusion.msam import MSAM
    from rsvlm.models.vlm import VisionLanguageModel

    model, _, ckpt, _, _, _ = fitted
    components = tiny_spex_components(bands=BANDS)
    # SPEX built with the same encoder arguments as the MVPNet run (what the recipes must do)
    components["encoder"] = TimmEncoder(model_name=ENCODER, in_bands=BANDS)
    components["fusion"] = MSAM(in_channels=components["encoder"].channels, out_channels=32, form="paper")
    spex = VisionLanguageModel(**components, encoder_init=str(ckpt))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(spex.encoder.state_dict()[key], value), key


def test_checkpoint_of_another_encoder_shape_is_refused(fitted):
    _, _, ckpt, _, _, _ = fitted
    with pytest.raises(
        ValueError, match=r"model\.conv1\.0\.weight: checkpoint \(\d+, 6, 3, 3\) vs encoder \(\d+, 4, 3, 3\)"
    ):
        load_encoder_weights(TimmEncoder(model_name=ENCODER, in_bands=4), ckpt)
    with pytest.raises(ValueError) as err:
        load_encoder_weights(TimmEncoder(model_name="test_convnext", in_bands=BANDS), ckpt)
    message = str(err.value)
    assert "missing keys: ['model.stages_0.blocks.0.conv_dw.bias'" in message
    assert "unexpected keys: ['model.bn1.bias'" in message and "'model.conv1.0.weight'" in message


def test_recipes_wire_up(monkeypatch):
    """The demo recipe builds (encoder widths = head widths) and the paper recipe parses."""
    import contextlib
    import io

    import lightning as L

    from rsvlm.cli.lightning import RsvlmCLI

    cli = recipe_cli(monkeypatch, "mvpnet-demo.yaml")
    assert isinstance(cli.model, MVPNet) and cli.model.encoder.in_bands == cli.datamodule.num_bands
    assert cli.model.class_names == cli.datamodule.class_names
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        RsvlmCLI(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=["fit", "--config", str(REPO / "recipes" / "mvpnet.yaml"), "--print_config"],
        )
    assert "InternImageEncoder" in out.getvalue() and "hidden_size: 512" in out.getvalue()


def test_datamodule_that_does_not_fit_the_model_is_refused_at_setup(tmp_path):
    import lightning as L

    dm = SceneSegmentationDataModule(n_train=2, n_val=1, n_test=1, size=16, batch_size=2)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ContractError, match="in_bands=4"):
        trainer.fit(tiny_mvpnet(bands=4), dm)

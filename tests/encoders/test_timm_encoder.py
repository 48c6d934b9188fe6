"""TimmEncoder: pyramid shapes, RGB weights into multi-band stems, checkpoint errors, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from rsvlm.contracts import ContractError
from rsvlm.encoders._stem import expand_stem_weight
from rsvlm.encoders.timm_encoder import TimmEncoder

# Small members of the two families: stem key in the saved model, and in timm's feature
# wrapper (which flattens the first Sequential level, so 'stem.0' becomes 'stem_0').
MODELS = {"convnext_atto": "stem.0.weight", "resnet18": "conv1.weight"}
FEATURE_STEMS = {"convnext_atto": "stem_0.weight", "resnet18": "conv1.weight"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A random 3-band timm model per family, saved as .safetensors and .pth."""
    out = {}
    root = tmp_path_factory.mktemp("timm")
    for name in MODELS:
        torch.manual_seed(0)
        # A 7-class head: the encoder must ignore classifier keys whatever their shape.
        state = timm.create_model(name, num_classes=7).state_dict()
        save_file(state, str(root / f"{name}.safetensors"))
        torch.save(state, root / f"{name}.pth")
        out[name] = {"state": state, "safetensors": root / f"{name}.safetensors", "pth": root / f"{name}.pth"}
    return out


def _saved_key(key: str, state: dict) -> str:
    # timm's feature wrapper flattens the first Sequential level: 'stem_0.weight' <- 'stem.0.weight'.
    return key if key in state else key.replace("_", ".", 1)


def _stem(encoder: TimmEncoder, name: str) -> torch.Tensor:
    return encoder.model.state_dict()[FEATURE_STEMS[name]]


@pytest.mark.parametrize("name", list(MODELS))
def test_pyramid_shapes(name: str) -> None:
    torch.manual_seed(0)
    enc = TimmEncoder(name, in_bands=5)
    x = torch.randn(2, 5, 64, 96)
    feats = enc(x)
    assert enc.reductions == [4, 8, 16, 32]
    assert enc.in_bands == 5
    ref = timm.create_model(name, features_only=True)
    info = zip(ref.feature_info.channels(), ref.feature_info.reduction())
    assert enc.channels == [c for c, r in info if r >= 4]
    expected = [(2, c, 64 // r, 96 // r) for c, r in zip(enc.channels, enc.reductions)]
    assert [tuple(f.shape) for f in feats] == expected
    sum(f.mean() for f in feats).backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(
    ("fmt", "in_bands", "rgb_bands", "init"),
    [("safetensors", 4, [2, 1, 0], "mean"), ("pth", 6, [3, 1, 0], "zeros"), ("pth", 6, [2, 1, 0], "mean")],
)
def test_rgb_weights_into_multiband_stem(saved, name, fmt, in_bands, rgb_bands, init) -> None:
    state = saved[name]["state"]
    enc = TimmEncoder(
        name, in_bands=in_bands, checkpoint_path=str(saved[name][fmt]), rgb_bands=rgb_bands, extra_band_init=init
    )
    rgb = state[MODELS[name]]
    stem = _stem(enc, name)
    assert stem.shape == (rgb.shape[0], in_bands, *rgb.shape[2:])
    for j, band in enumerate(rgb_bands):
        assert torch.equal(stem[:, band], rgb[:, j]), f"pretrained filter {'RGB'[j]} not copied to band {band}"
    extra = [b for b in range(in_bands) if b not in rgb_bands]
    expected = (rgb[:, 0] + rgb[:, 1] + rgb[:, 2]) / 3 if init == "mean" else torch.zeros_like(rgb[:, 0])
    for band in extra:
        torch.testing.assert_close(stem[:, band], expected)
    # every other tensor is the saved one, bit for bit
    for key, value in enc.model.state_dict().items():
        if key != FEATURE_STEMS[name]:
            assert torch.equal(value, state[_saved_key(key, state)]), key


@pytest.mark.parametrize("name", list(MODELS))
def test_three_bands_equals_saved_model(saved, name) -> None:
    state = saved[name]["state"]
    enc = TimmEncoder(name, in_bands=3, checkpoint_path=str(saved[name]["safetensors"]), rgb_bands=[0, 1, 2])
    loaded = enc.model.state_dict()
    assert len(loaded) > 10
    for key, value in loaded.items():
        assert torch.equal(value, state[_saved_key(key, state)]), key
    # A B,G,R stack with the default rgb_bands gets the same filters, reversed.
    bgr = TimmEncoder(name, in_bands=3, checkpoint_path=str(saved[name]["safetensors"]))
    assert torch.equal(_stem(bgr, name), state[MODELS[name]].flip(1))


def test_zeros_rule_ignores_extra_bands(saved) -> None:
    path = str(saved["convnext_atto"]["pth"])
    four = TimmEncoder("convnext_atto", in_bands=4, checkpoint_path=path, extra_band_init="zeros").eval()
    three = TimmEncoder("convnext_atto", in_bands=3, checkpoint_path=path, rgb_bands=[0, 1, 2]).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        for a, b in zip(four(x), three(x[:, [2, 1, 0]])):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mean_rule_flat_response(saved) -> None:
    # Documented rule: a flat input on all C bands gives C/3 times the RGB stem's response.
    path = str(saved["convnext_atto"]["safetensors"])
    rgb = saved["convnext_atto"]["state"]["stem.0.weight"]
    for bands in (4, 7):
        enc = TimmEncoder("convnext_atto", in_bands=bands, checkpoint_path=path)
        stem = _stem(enc, "convnext_atto")
        torch.testing.assert_close(stem.sum(dim=1), rgb.sum(dim=1) * bands / 3)


def test_expand_stem_weight_without_rgb() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3)
    out = expand_stem_weight(w, 2, None, "mean")
    torch.testing.assert_close(out, w.mean(1, keepdim=True).expand(8, 2, 3, 3))
    with pytest.raises(ValueError, match="zeros"):
        expand_stem_weight(w, 2, None, "zeros")


def test_missing_checkpoint_names_download(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "convnext_atto.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        TimmEncoder("convnext_atto", checkpoint_path=str(missing))
    message = str(info.value)
    assert str(missing) in message and "'convnext_atto'" in message and "timm/convnext_atto" in message


def test_wrong_checkpoint_rejected(saved) -> None:
    with pytest.raises(ValueError, match="is not a state dict of the 3-band timm model 'resnet18'"):
        TimmEncoder("resnet18", checkpoint_path=str(saved["convnext_atto"]["safetensors"]))


def test_freeze(saved) -> None:
    enc = TimmEncoder("resnet18", in_bands=4, checkpoint_path=str(saved["resnet18"]["pth"]), freeze=True)
    enc.train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert not any(m.training for m in enc.model.modules())
    bn = enc.model.bn1
    before = bn.running_mean.clone()
    x = torch.randn(2, 4, 32, 32, requires_grad=True)
    sum(f.sum() for f in enc(x)).backward()
    assert x.grad is not None
    assert all(p.grad is None for p in enc.parameters())
    assert torch.equal(bn.running_mean, before)
    # without freeze, train() puts BatchNorm in training mode
    live = TimmEncoder("resnet18", in_bands=4).train()
    assert live.model.bn1.training


def test_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="rgb_bands"):
        TimmEncoder("resnet18", in_bands=2)
    with pytest.raises(ValueError, match="rgb_bands"):
        TimmEncoder("resnet18", in_bands=4, rgb_bands=[0, 0, 1])
    enc = TimmEncoder("resnet18", in_bands=4)
    with pytest.raises(ContractError, match="B×4×H×W"):
        enc(torch.zeros(1, 3, 32, 32))

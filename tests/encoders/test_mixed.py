"""MixedExpertEncoder (SPHINX's mixed experts) and TimmViTEncoder (a ViT's patch grid as a map).

References are computed independently: timm's own ``forward_features`` and block hooks for the
ViT grid, explicit arithmetic for the re-normalisation, slicing / ``repeat_interleave`` /
hand-written bilinear weights for the resizing to the g×g grid.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from jsonargparse import ArgumentParser
from safetensors.torch import save_file

from rsvlm.contracts import ContractError
from rsvlm.encoders.mixed import MixedExpertEncoder
from rsvlm.encoders.timm_encoder import TimmEncoder
from rsvlm.encoders.timm_vit import TimmViTEncoder
from rsvlm.io.state_dicts import StateDictError

DINO = "vit_small_patch14_dinov2"
TINY = dict(depth=2, embed_dim=32, num_heads=2)
CLIP_MEAN_STD = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def reference_grid(model: torch.nn.Module, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``B×(prefix+h·w)×D`` tokens → ``B×D×h×w`` patch map, prefix tokens dropped (plain reshape)."""
    patches = tokens[:, model.num_prefix_tokens :]
    return patches.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random tiny DINOv2 ViT (56² position grid, a 7-class head) saved as .safetensors and .pth."""
    torch.manual_seed(0)
    model = timm.create_model(DINO, img_size=56, num_classes=7, **TINY)
    root = tmp_path_factory.mktemp("vit")
    state = model.state_dict()
    save_file(state, str(root / "vit.safetensors"))
    torch.save(state, root / "vit.pth")
    return {"model": model.eval(), "state": state, "safetensors": root / "vit.safetensors", "pth": root / "vit.pth"}


# ------------------------------------------------------------------------------- TimmViTEncoder
@pytest.mark.parametrize("name", [DINO, "vit_small_patch14_reg4_dinov2"])
def test_vit_last_level_is_forward_features_patch_grid(name: str) -> None:
    torch.manual_seed(0)
    enc = TimmViTEncoder(name, img_size=28, **TINY).eval()
    x = torch.randn(2, 3, 56, 42)  # not the built size, not square
    (grid,) = enc(x)
    assert enc.channels == [32] and enc.reductions == [14]
    with torch.no_grad():
        expected = reference_grid(enc.model, enc.model.forward_features(x), 4, 3)
    torch.testing.assert_close(grid, expected)


def test_vit_intermediate_block_without_norm() -> None:
    torch.manual_seed(0)
    enc = TimmViTEncoder("vit_small_patch14_reg4_dinov2", img_size=28, out_indices=[0, 1], norm=False, **TINY).eval()
    seen = []
    enc.model.blocks[0].register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(1, 3, 28, 56)
    first, last = enc(x)
    torch.testing.assert_close(first, reference_grid(enc.model, seen[0], 2, 4))
    assert first.shape == last.shape == (1, 32, 2, 4)
    assert not torch.allclose(first, last)


def test_vit_drops_blocks_it_never_reads() -> None:
    enc = TimmViTEncoder(DINO, out_indices=[0], norm=False, patch_size=8, depth=3, embed_dim=32, num_heads=2)
    assert len(enc.model.blocks) == 1
    enc(torch.randn(1, 3, 16, 16))[0].square().sum().backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not unused, unused


def test_vit_multiband_input_and_bad_sizes() -> None:
    enc = TimmViTEncoder(DINO, in_bands=5, rgb_bands=None, patch_size=8, **TINY)
    assert [tuple(f.shape) for f in enc(torch.randn(1, 5, 32, 16))] == [(1, 32, 4, 2)]
    with pytest.raises(ContractError, match="multiples of the patch 8"):
        enc(torch.randn(1, 5, 30, 32))
    with pytest.raises(ContractError, match="B×5×H×W"):
        enc(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="out_indices"):
        TimmViTEncoder(DINO, out_indices=[-1, 0], **TINY)
    with pytest.raises(ValueError, match="out_indices"):
        TimmViTEncoder(DINO, out_indices=[1, -1], **TINY)
    with pytest.raises(ValueError, match="out_indices"):
        TimmViTEncoder(DINO, out_indices=[2], **TINY)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_vit_checkpoint_loads_every_weight(saved_vit: dict, fmt: str) -> None:
    enc = TimmViTEncoder(DINO, img_size=56, checkpoint_path=str(saved_vit[fmt]), **TINY).eval()
    state, loaded = saved_vit["state"], enc.model.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("head.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 56, 56)  # the saved model is fixed-size
    with torch.no_grad():
        expected = reference_grid(saved_vit["model"], saved_vit["model"].forward_features(x), 4, 4)
    torch.testing.assert_close(enc(x)[0], expected)
    assert enc.model.pretrained_cfg.get("state_dict") is None  # no second copy of the weights kept


def test_vit_checkpoint_resamples_position_embedding_and_widens_patches(saved_vit: dict) -> None:
    state = saved_vit["state"]
    enc = TimmViTEncoder(
        DINO, img_size=28, in_bands=4, rgb_bands=[2, 1, 0], checkpoint_path=str(saved_vit["pth"]), **TINY
    )
    assert enc.model.pos_embed.shape == (1, 1 + 2 * 2, 32)  # 4×4 grid resampled to 2×2, CLS kept
    torch.testing.assert_close(enc.model.pos_embed[:, 0], state["pos_embed"][:, 0])
    rgb = state["patch_embed.proj.weight"]
    stem = enc.model.patch_embed.proj.weight
    assert stem.shape == (32, 4, 14, 14)
    for j, band in enumerate([2, 1, 0]):
        assert torch.equal(stem[:, band], rgb[:, j])
    torch.testing.assert_close(stem[:, 3], rgb.mean(dim=1))
    assert torch.equal(enc.model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_vit_checkpoint_errors(tmp_path: Path, saved_vit: dict) -> None:
    missing = tmp_path / "dinov2.safetensors"
    with pytest.raises(FileNotFoundError, match="timm/vit_small_patch14_dinov2.lvd142m"):
        TimmViTEncoder(DINO, checkpoint_path=str(missing), **TINY)
    with pytest.raises(StateDictError, match="TimmViTEncoder.checkpoint_path: .* does not fit"):
        TimmViTEncoder(DINO, checkpoint_path=str(saved_vit["pth"]), depth=1, embed_dim=32, num_heads=2)
    wrong = tmp_path / "wrong.pth"
    torch.save({"stem.0.weight": torch.zeros(8, 3, 4, 4)}, wrong)
    with pytest.raises(StateDictError, match="does not fit"):
        TimmViTEncoder(DINO, checkpoint_path=str(wrong), **TINY)


def test_vit_freeze(saved_vit: dict) -> None:
    enc = TimmViTEncoder(DINO, img_size=56, checkpoint_path=str(saved_vit["pth"]), freeze=True, **TINY).train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert not any(m.training for m in enc.model.modules())
    x = torch.randn(1, 3, 28, 28, requires_grad=True)
    enc(x)[0].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in enc.parameters())


# ------------------------------------------------------------------------------- MixedExpertEncoder
def convnext(bands: int = 3, **kwargs) -> TimmEncoder:
    return TimmEncoder("convnext_atto", in_bands=bands, rgb_bands=[0, 1, 2] if bands == 3 else [2, 1, 0], **kwargs)


def vit(bands: int = 3, **kwargs) -> TimmViTEncoder:
    return TimmViTEncoder(DINO, in_bands=bands, patch_size=8, **{**TINY, **kwargs})


def test_mixed_map_is_the_equation_with_nearest_resizing() -> None:
    torch.manual_seed(0)
    experts = [convnext(), vit()]
    mixed = MixedExpertEncoder(
        experts,
        levels=[-1, 0],  # ConvNeXt stride 32: 2×2 on 64²; ViT patch 8: 8×8
        grid=4,
        image_size=64,
        input_mean_std=CLIP_MEAN_STD,
        expert_mean_std=[None, IMAGENET_MEAN_STD],
    ).eval()
    assert mixed.channels == [320 + 32] and mixed.reductions == [16] and mixed.in_bands == 3
    x = torch.randn(2, 3, 64, 64)
    (out,) = mixed(x)
    mean_in, std_in = (torch.tensor(v).view(1, 3, 1, 1) for v in CLIP_MEAN_STD)
    mean_i, std_i = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_MEAN_STD)
    with torch.no_grad():
        conv = experts[0](x)[-1].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 2×2 → 4×4
        grid = experts[1](((x * std_in + mean_in) - mean_i) / std_i)[0][:, :, 1::2, 1::2]  # 8×8 → 4×4, centred
    assert out.shape == (2, 352, 4, 4)
    torch.testing.assert_close(out[:, :320], conv)
    torch.testing.assert_close(out[:, 320:], grid, atol=1e-5, rtol=1e-5)


def test_bilinear_upsampling_matches_hand_weights() -> None:
    torch.manual_seed(0)
    expert = convnext()
    mixed = MixedExpertEncoder([expert], levels=[3], grid=4, image_size=64, interpolation="bilinear").eval()
    x = torch.randn(1, 3, 64, 64)
    # align_corners=False, ×2: outputs sit at source positions -0.25, 0.25, 0.75, 1.25 (edges clamp)
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    with torch.no_grad():
        small = expert(x)[3]
        expected = torch.einsum("oh,bchw,pw->bcop", weights, small, weights)
    torch.testing.assert_close(mixed(x)[0], expected)


def test_renormalisation_turns_clip_inputs_into_imagenet_inputs() -> None:
    mixed = MixedExpertEncoder(
        [vit(), vit()],
        levels=[0, 0],
        grid=2,
        image_size=16,
        input_mean_std=CLIP_MEAN_STD,
        expert_mean_std=[IMAGENET_MEAN_STD, None],
    )
    raw = torch.rand(2, 3, 16, 16)  # pixels in [0, 1]
    clip = (raw - torch.tensor(CLIP_MEAN_STD[0]).view(1, 3, 1, 1)) / torch.tensor(CLIP_MEAN_STD[1]).view(1, 3, 1, 1)
    imagenet = (raw - torch.tensor(IMAGENET_MEAN_STD[0]).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_MEAN_STD[1]).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(mixed.expert_input(clip, 0), imagenet)
    torch.testing.assert_close(mixed.expert_input(clip, 1), clip)
    assert "scale_0" not in mixed.state_dict()  # derived from the arguments, not saved


def test_expert_sizes_resize_the_view_for_one_expert() -> None:
    sizes = []
    dino = TimmViTEncoder(DINO, img_size=56, **TINY)  # patch 14: 64² is not a multiple, 56² is
    dino.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    mixed = MixedExpertEncoder([convnext(), dino], levels=[-1, 0], grid=4, image_size=64, expert_sizes=[None, 56])
    assert mixed(torch.randn(1, 3, 64, 64))[0].shape == (1, 352, 4, 4)
    assert sizes == [(56, 56)]


def test_frozen_experts_stay_frozen_and_pass_gradients() -> None:
    mixed = MixedExpertEncoder([convnext(freeze=True), vit(freeze=True)], levels=[0, 0], grid=4, image_size=32)
    mixed.train()
    assert not any(p.requires_grad for p in mixed.parameters())
    assert not any(m.training for e in mixed.experts for m in e.modules() if m is not e)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    mixed(x)[0].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="share in_bands"):
        MixedExpertEncoder([convnext(3), vit(4)], levels=[0, 0], grid=4, image_size=32)
    with pytest.raises(ValueError, match="levels has 1 entries for 2 experts"):
        MixedExpertEncoder([convnext(), vit()], levels=[0], grid=4, image_size=32)
    with pytest.raises(ValueError, match=r"levels\[0\]=4"):
        MixedExpertEncoder([convnext()], levels=[4], grid=4, image_size=32)
    with pytest.raises(ValueError, match="grid=5 must divide image_size=32"):
        MixedExpertEncoder([convnext()], levels=[0], grid=5, image_size=32)
    with pytest.raises(ValueError, match=r"expert_mean_std\[0\]"):
        MixedExpertEncoder([convnext()], levels=[0], grid=4, image_size=32, expert_mean_std=[([0.5] * 2, [1.0] * 2)])
    with pytest.raises(ValueError, match="input_mean_std"):
        MixedExpertEncoder([convnext()], levels=[0], grid=4, image_size=32, input_mean_std=([0.0] * 3, [1, 0, 1]))
    with pytest.raises(ValueError, match="expert_sizes has 2 entries"):
        MixedExpertEncoder([convnext()], levels=[0], grid=4, image_size=32, expert_sizes=[None, 8])
    with pytest.raises(ValueError, match="interpolation"):
        MixedExpertEncoder([convnext()], levels=[0], grid=4, image_size=32, interpolation="bicubic")
    mixed = MixedExpertEncoder([convnext()], levels=[0], grid=4, image_size=32)
    with pytest.raises(ContractError, match="image_size=32"):
        mixed(torch.randn(1, 3, 64, 64))


def recipe(convnext_args: dict) -> dict:
    """A recipe's ``encoder`` section: a DINOv2-style ViT ‖ a ConvNeXt, nested class_path/init_args."""
    return {
        "encoder": {
            "experts": [
                {"class_path": "rsvlm.encoders.timm_vit.TimmViTEncoder", "init_args": {"patch_size": 8, **TINY}},
                {"class_path": "rsvlm.encoders.timm_encoder.TimmEncoder", "init_args": convnext_args},
            ],
            "levels": [-1, 3],
            "grid": 2,
            "image_size": 64,
            "expert_mean_std": [list(IMAGENET_MEAN_STD), list(CLIP_MEAN_STD)],
        }
    }


def test_builds_from_a_nested_recipe_config() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MixedExpertEncoder, "encoder")
    # TimmEncoder's default is 4 bands: refused against the ViT's 3
    with pytest.raises(ValueError, match="share in_bands"):
        parser.instantiate_classes(parser.parse_object(recipe({"model_name": "convnext_atto"})))
    args = {"model_name": "convnext_atto", "in_bands": 3, "rgb_bands": [0, 1, 2]}
    built = parser.instantiate_classes(parser.parse_object(recipe(args))).encoder
    assert isinstance(built, MixedExpertEncoder) and built.channels == [32 + 320]
    assert built(torch.randn(1, 3, 64, 64))[0].shape == (1, 352, 2, 2)


def test_paper_experts_exist_in_timm_and_give_2560_channels_at_grid_16() -> None:
    dino, clip = "vit_large_patch14_dinov2.lvd142m", "convnext_large_mlp.clip_laion2b_ft_soup_320"
    assert {dino, clip} <= set(timm.list_pretrained("*large*"))
    with torch.device("meta"):  # the real architectures, nothing allocated or downloaded
        mixed = MixedExpertEncoder(
            [TimmViTEncoder(dino, img_size=224), TimmEncoder(clip, in_bands=3, rgb_bands=[0, 1, 2])],
            levels=[-1, -1],
            grid=16,
            image_size=224,
            expert_mean_std=[IMAGENET_MEAN_STD, CLIP_MEAN_STD],
            expert_sizes=[None, 256],  # SPHINX: ConvNeXt at 256 px, 8×8 doubled exactly to 16×16
        )
        (out,) = mixed(torch.zeros(2, 3, 224, 224))
    assert mixed.channels == [1024 + 1536] and mixed.reductions == [14]
    assert out.shape == (2, 2560, 16, 16)

"""InternImage encoder (DCNv3 backbone), pure PyTorch, any band count.

Architecture and parameter names follow the official implementation
(``OpenGVLab/InternImage``, ``classification/models/intern_image.py``), so an official
checkpoint loads through ``checkpoint_path``:

* ``patch_embed.conv1`` / ``norm1.1`` / ``conv2`` / ``norm2.1`` — the stride-4 stem;
* ``levels.N.blocks.M.{norm1.0, dcn.*, norm2.0, mlp.fc1, mlp.fc2, gamma1, gamma2}``;
* ``levels.N.norm.0`` (pre-norm variants), ``levels.N.downsample.{conv, norm.1}``;
* InternImage-H also ``levels.2.post_norms.*``, ``res_post_norm{1,2}.0`` and
  ``dcn.center_feature_scale_proj_*``.

The classification head of the official checkpoints (``conv_head``, ``head``, and for H the
CLIP projector) is not part of the encoder and its keys are ignored on loading. Checkpoints
may be a bare state dict or wrapped in ``model`` (classification releases) or ``state_dict``
(mmseg/mmdet releases, whose ``backbone.`` prefix is stripped).

Any band count: the stem's first conv (``patch_embed.conv1``) is built for ``in_bands``;
when an RGB checkpoint is loaded, the bands listed in ``rgb_bands`` receive the checkpoint's
R, G, B filters bit for bit and every other band the mean of the three RGB filters
(``extra_band_init="mean"``) or zeros (``"zeros"``) — every encoder's rule,
:func:`rsvlm.encoders._stem.expand_stem_weight`.

Outputs: 4 maps ``B×[C, 2C, 4C, 8C]×H/r×W/r`` at strides 4, 8, 16, 32, each taken after its
level's blocks (and level norm) and before the downsampling, as the official
segmentation/detection backbones do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from rsvlm.contracts import check_image_bands
from rsvlm.encoders._stem import (
    ExtraBandInit,
    FreezableEncoder,
    check_band_arguments,
    expand_stem_weight,
    needs_widening,
)
from rsvlm.encoders.dcnv3 import DCNv3, channels_first_norm, channels_first_to_last_norm, channels_last_norm
from rsvlm.io.state_dicts import check_state_dict, read_state_dict


@dataclass(frozen=True)
class InternImageConfig:
    """Hyper-parameters of one InternImage size (official ``configs/*.yaml``)."""

    channels: int
    depths: tuple[int, ...]
    groups: tuple[int, ...]
    offset_scale: float = 1.0
    layer_scale: float | None = None
    post_norm: bool = False
    mlp_ratio: float = 4.0
    dw_kernel_size: int | None = None
    res_post_norm: bool = False
    level2_post_norm_block_ids: tuple[int, ...] | None = None
    center_feature_scale: bool = False


#: Official sizes, from ``classification/configs/*/internimage_{t,s,b,l,xl,h}_*.yaml``.
VARIANTS: dict[str, InternImageConfig] = {
    "t": InternImageConfig(64, (4, 4, 18, 4), (4, 8, 16, 32)),
    "s": InternImageConfig(80, (4, 4, 21, 4), (5, 10, 20, 40), layer_scale=1e-5, post_norm=True),
    "b": InternImageConfig(112, (4, 4, 21, 4), (7, 14, 28, 56), layer_scale=1e-5, post_norm=True),
    "l": InternImageConfig(160, (5, 5, 22, 5), (10, 20, 40, 80), 2.0, 1e-5, post_norm=True),
    "xl": InternImageConfig(192, (5, 5, 24, 5), (12, 24, 48, 96), 2.0, 1e-5, post_norm=True),
    "h": InternImageConfig(
        320,
        (6, 6, 32, 6),
        (10, 20, 40, 80),
        dw_kernel_size=5,
        res_post_norm=True,
        level2_post_norm_block_ids=(5, 11, 17, 23, 29),
        center_feature_scale=True,
    ),
    # not an official size: L's code path (post-norm, layer scale, offset scale 2) at toy width
    "tiny-test": InternImageConfig(16, (1, 1, 2, 1), (2, 4, 8, 16), 2.0, 1e-5, post_norm=True),
}

#: Official checkpoint keys that belong to the classification head, not the encoder.
HEAD_PREFIXES = ("conv_head.", "head.", "dcnv3_head_x4.", "dcnv3_head_x3.", "clip_projector.", "fc_norm.")


class _Stem(nn.Module):
    """Two stride-2 3×3 convs: ``B×C_in×H×W`` → ``B×H/4×W/4×C`` (channels-last)."""

    def __init__(self, in_bands: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_bands, channels // 2, 3, stride=2, padding=1)
        self.norm1 = channels_first_norm(channels // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.norm2 = channels_first_to_last_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class _Downsample(nn.Module):
    """Stride-2 3×3 conv doubling the width: ``B×H×W×C`` → ``B×H/2×W/2×2C``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = channels_first_to_last_norm(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(rearrange(x, "b h w c -> b c h w")))


class _MLP(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """DCNv3 + MLP residual block on channels-last ``B×H×W×C`` (official ``InternImageLayer``)."""

    def __init__(self, channels: int, group: int, cfg: InternImageConfig, drop_path: float, with_cp: bool) -> None:
        super().__init__()
        self.post_norm = cfg.post_norm
        self.res_post_norm = cfg.res_post_norm
        self.with_cp = with_cp
        self.norm1 = channels_last_norm(channels)
        self.dcn = DCNv3(
            channels,
            kernel_size=3,
            dw_kernel_size=cfg.dw_kernel_size,
            stride=1,
            pad=1,
            dilation=1,
            group=group,
            offset_scale=cfg.offset_scale,
            center_feature_scale=cfg.center_feature_scale,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = channels_last_norm(channels)
        self.mlp = _MLP(channels, int(channels * cfg.mlp_ratio))
        self.layer_scale = cfg.layer_scale is not None
        if cfg.layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((channels,), cfg.layer_scale))
            self.gamma2 = nn.Parameter(torch.full((channels,), cfg.layer_scale))
        if cfg.res_post_norm:
            self.res_post_norm1 = channels_last_norm(channels)
            self.res_post_norm2 = channels_last_norm(channels)

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        # the four residual forms of the official InternImageLayer
        scale1 = self.gamma1 if self.layer_scale else 1.0
        scale2 = self.gamma2 if self.layer_scale else 1.0
        if self.post_norm:
            x = x + self.drop_path(scale1 * self.norm1(self.dcn(x)))
            return x + self.drop_path(scale2 * self.norm2(self.mlp(x)))
        if self.res_post_norm and not self.layer_scale:
            x = x + self.drop_path(self.res_post_norm1(self.dcn(self.norm1(x))))
            return x + self.drop_path(self.res_post_norm2(self.mlp(self.norm2(x))))
        x = x + self.drop_path(scale1 * self.dcn(self.norm1(x)))
        return x + self.drop_path(scale2 * self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return activation_checkpoint(self._branches, x, use_reentrant=False)
        return self._branches(x)


class _Level(nn.Module):
    """One resolution level (official ``InternImageBlock``): blocks, optional norm, downsample.

    ``forward`` returns ``(features before downsampling, input of the next level)``.
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        group: int,
        cfg: InternImageConfig,
        drop_paths: list[float],
        downsample: bool,
        level2: bool,
        with_cp: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(channels, group, cfg, drop_paths[i], with_cp) for i in range(depth))
        self.has_norm = not cfg.post_norm or cfg.center_feature_scale
        if self.has_norm:
            self.norm = channels_last_norm(channels)
        self.post_norm_block_ids = list(cfg.level2_post_norm_block_ids or ()) if level2 else []
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList(channels_last_norm(channels) for _ in self.post_norm_block_ids)
        self.downsample = _Downsample(channels) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(i)](x)
        if self.has_norm:
            x = self.norm(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class InternImageEncoder(FreezableEncoder):
    """InternImage backbone as a 4-level encoder: ``B×in_bands×H×W`` → maps
    ``B×[C, 2C, 4C, 8C]×H/r×W/r`` at r = 4, 8, 16, 32.

    Args:
        variant: official size (``"l"`` is the paper's InternImage-L: C=160, depths
            [5, 5, 22, 5], groups [10, 20, 40, 80], offset scale 2, layer scale 1e-5,
            post-norm) or ``"tiny-test"`` (toy size of L's code path, for tests and demos).
        in_bands: number of input bands.
        checkpoint_path: official InternImage checkpoint (``.pth`` loaded with
            ``weights_only=True``, or ``.safetensors``); head keys are ignored, an RGB stem is
            adapted to ``in_bands`` (see module docstring).
        drop_path_rate: stochastic depth, increasing linearly over all blocks to this value.
        freeze: no gradients for any parameter, and eval mode (drop-path off) even when
            ``train()`` is called.
        with_cp: activation checkpointing per block (memory for compute).
        channels, depths, groups: override the variant's C, blocks per level and DCN groups
            per level (``groups[i]`` must divide ``C·2^i``).
        rgb_bands: the input bands that receive the checkpoint's R, G, B filters, in that
            order; ``None`` when no band holds R, G, B (every band then gets the mean filter).
        extra_band_init: filters of the other bands: mean of the RGB filters, or zeros
            (:func:`rsvlm.encoders._stem.expand_stem_weight`).
    """

    def __init__(
        self,
        variant: Literal["t", "s", "b", "l", "xl", "h", "tiny-test"] = "l",
        in_bands: int = 3,
        checkpoint_path: str | None = None,
        drop_path_rate: float = 0.0,
        freeze: bool = False,
        with_cp: bool = False,
        channels: int | None = None,
        depths: list[int] | None = None,
        groups: list[int] | None = None,
        rgb_bands: list[int] | None = [0, 1, 2],
        extra_band_init: ExtraBandInit = "mean",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"InternImageEncoder.variant: unknown {variant!r}; choose one of {sorted(VARIANTS)}")
        base = VARIANTS[variant]
        cfg = InternImageConfig(
            **{
                **base.__dict__,
                "channels": channels if channels is not None else base.channels,
                "depths": tuple(depths) if depths is not None else base.depths,
                "groups": tuple(groups) if groups is not None else base.groups,
            }
        )
        if len(cfg.depths) != 4 or len(cfg.groups) != 4:
            raise ValueError(f"InternImageEncoder: depths and groups need 4 entries, got {cfg.depths}, {cfg.groups}")
        for i, g in enumerate(cfg.groups):
            if (cfg.channels * 2**i) % g:
                raise ValueError(
                    f"InternImageEncoder.groups[{i}]={g} must divide the level width {cfg.channels * 2**i}"
                )
        self.rgb_bands = check_band_arguments("InternImageEncoder", in_bands, rgb_bands, extra_band_init)
        self.extra_band_init = extra_band_init
        self.config = cfg
        self.in_bands = in_bands
        self.channels = [cfg.channels * 2**i for i in range(4)]
        self.reductions = [4, 8, 16, 32]

        self.patch_embed = _Stem(in_bands, cfg.channels)
        total = sum(cfg.depths)
        # plain floats: torch.linspace would fail under a meta-device context
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(cfg.depths[:i]) for i in range(4)]
        self.levels = nn.ModuleList(
            _Level(
                self.channels[i],
                cfg.depths[i],
                cfg.groups[i],
                cfg,
                rates[starts[i] : starts[i] + cfg.depths[i]],
                downsample=i < 3,
                level2=i == 2,
                with_cp=with_cp,
            )
            for i in range(4)
        )
        self.apply(self._init_weights)
        for module in self.modules():
            if isinstance(module, DCNv3):
                module.reset_parameters()

        if checkpoint_path is not None:
            self.load_checkpoint(checkpoint_path)
        if freeze:
            self.freeze_part()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official init: truncated-normal linears, unit LayerNorms; convs keep PyTorch's default
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``B×in_bands×H×W`` → 4 maps ``B×channels[i]×⌈H/r_i⌉×⌈W/r_i⌉``."""
        check_image_bands("InternImageEncoder", image, self.in_bands)
        x = self.patch_embed(image)
        outs = []
        for level in self.levels:
            features, x = level(x)
            outs.append(rearrange(features, "b h w c -> b c h w").contiguous())
        return outs

    def load_checkpoint(self, path: str) -> None:
        """Load an official InternImage checkpoint (see the module docstring for the formats)."""
        state = read_internimage_state_dict(path)
        key = "patch_embed.conv1.weight"
        if key in state and state[key].shape[1] == 3 and needs_widening(self.in_bands, self.rgb_bands):
            state[key] = expand_stem_weight(state[key], self.in_bands, self.rgb_bands, self.extra_band_init)
        header = f"InternImageEncoder.checkpoint_path={path}: does not fit variant/config {self.config}:"
        check_state_dict(self.state_dict(), state, header)
        self.load_state_dict(state)
        self.weights_source = str(path)  # trained-only checkpoints leave what this file restores out


def read_internimage_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an InternImage checkpoint into a flat state dict of encoder keys.

    Reads it safely and unwraps its containers (:func:`rsvlm.io.state_dicts.read_state_dict`),
    keeps only the ``backbone.`` part of a whole-detector checkpoint, and drops
    classification-head keys (:data:`HEAD_PREFIXES`).
    """
    state = read_state_dict(
        path,
        "InternImageEncoder.checkpoint_path",
        missing_hint="Download an official checkpoint (e.g. internimage_l_22k_192to384.pth from "
        "huggingface.co/OpenGVLab/InternImage) and give its path.",
    )
    # mmseg/mmdet checkpoints hold the whole detector: keep only its backbone
    if any(key.startswith("backbone.") for key in state):
        state = {key.removeprefix("backbone."): v for key, v in state.items() if key.startswith("backbone.")}
    return {key: value for key, value in state.items() if not key.startswith(HEAD_PREFIXES)}

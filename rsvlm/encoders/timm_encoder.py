"""A timm hierarchical backbone as a multi-band pyramid encoder.

Any timm model that supports ``features_only`` (ConvNeXt, ResNet, EfficientNet, RegNet, …)
gives maps at strides 4, 8, 16 and 32 for an image with any number of bands.

Pretrained weights are RGB. When they are loaded for a ``C != 3`` band input, the stem
convolution is rebuilt for C bands: the pretrained R, G and B filters are copied
bit-identically to the input positions named by ``rgb_bands`` and every other band's filter
is set by ``extra_band_init`` (see :func:`expand_stem_weight`). timm's own
``adapt_input_conv`` is not used because it rescales the RGB filters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import timm
import torch
from einops import rearrange
from torch import nn

from rsvlm.contracts import ContractError, Encoder
from rsvlm.io.state_dicts import compare_state_dicts

PYRAMID_REDUCTIONS = (4, 8, 16, 32)


def expand_stem_weight(
    rgb_weight: torch.Tensor,
    in_bands: int,
    rgb_bands: list[int] | None,
    extra_band_init: Literal["mean", "zeros"] = "mean",
) -> torch.Tensor:
    """Turn an RGB stem kernel ``O×3×k×k`` into a ``O×in_bands×k×k`` kernel.

    ``rgb_bands[j]`` is the input band that receives pretrained filter ``j`` (R, G, B in
    that order), copied bit-identically. Every other band gets:

    * ``"mean"`` — the mean of the R, G and B filters, unscaled. Each extra band then adds to
      the stem exactly what an average visible band adds, so for a flat image of value ``v``
      on all C bands the stem's pre-bias response is ``C/3`` times the RGB model's response
      to a flat RGB image of value ``v``, and a band that carries a grey copy of the visible
      bands looks to the network like one more visible band.
    * ``"zeros"`` — zero, so the extra bands start with no influence: the output equals the
      RGB model's output on the ``rgb_bands`` channels, whatever the extra bands hold.

    With ``rgb_bands=None`` (no band holds R, G, B) every band gets the mean filter;
    ``"zeros"`` is then refused since the stem would ignore the whole input.
    """
    if rgb_weight.ndim != 4 or rgb_weight.shape[1] != 3:
        raise ValueError(f"expand_stem_weight: expected an O×3×k×k RGB kernel, got shape {tuple(rgb_weight.shape)}")
    if extra_band_init not in ("mean", "zeros"):
        raise ValueError(f"extra_band_init must be 'mean' or 'zeros', got {extra_band_init!r}")
    if rgb_bands is None and extra_band_init == "zeros":
        raise ValueError(
            "extra_band_init='zeros' with rgb_bands=None would zero every band's stem filter; "
            "use extra_band_init='mean' or name the R, G, B bands in rgb_bands"
        )
    out_ch, _, kh, kw = rgb_weight.shape
    if extra_band_init == "mean":
        fill = rgb_weight.mean(dim=1, keepdim=True)
    else:
        fill = torch.zeros_like(rgb_weight[:, :1])
    weight = fill.expand(out_ch, in_bands, kh, kw).clone()
    for rgb_index, band in enumerate(rgb_bands or []):
        weight[:, band] = rgb_weight[:, rgb_index]
    return weight


def _check_rgb_bands(rgb_bands: list[int] | None, in_bands: int) -> list[int] | None:
    if rgb_bands is None:
        return None
    bands = list(rgb_bands)
    if len(bands) != 3 or len(set(bands)) != 3 or not all(0 <= b < in_bands for b in bands):
        raise ValueError(
            f"TimmEncoder: rgb_bands={bands} must be three distinct input-band indices in [0, {in_bands}) "
            f"giving the bands that hold R, G, B (in_bands={in_bands}); use rgb_bands=None when no band does"
        )
    return bands


class TimmEncoder(Encoder):
    """Image ``B×in_bands×H×W`` → maps ``[B×channels[i]×H/reductions[i]×W/reductions[i]]``.

    Args:
        model_name: a timm model name (optionally with a pretrained tag, e.g.
            ``"convnext_tiny.in12k_ft_in1k"``) that supports ``features_only``.
        in_bands: C, the number of input bands.
        pretrained: load timm's own pretrained RGB weights (fetched from the Hugging Face hub
            by timm). Ignored when ``checkpoint_path`` is given.
        checkpoint_path: a local ``.safetensors`` / ``.pth`` / ``.bin`` file holding the
            state dict of the same timm model with 3 input bands
            (``timm.create_model(model_name).state_dict()``, e.g. timm's ``model.safetensors``
            from the hub); classifier-head keys are ignored, any other missing or extra key is
            an error.
        rgb_bands: the input bands that hold R, G, B, in that order (``[2, 1, 0]`` for a
            B, G, R, NIR, … stack); ``None`` when no band does. Only used when RGB weights are
            loaded, but always checked.
        extra_band_init: how bands outside ``rgb_bands`` are initialised when RGB weights are
            loaded: ``"mean"`` or ``"zeros"`` (see :func:`expand_stem_weight`).
        out_indices: timm feature levels to return; ``None`` picks, from the model's
            ``feature_info``, the levels with reductions 4, 8, 16 and 32.
        freeze: no gradients for any parameter, and the backbone stays in eval mode (frozen
            BatchNorm statistics, no drop path) even when ``train()`` is called.
        drop_path_rate: stochastic depth rate passed to timm (0 = off).
    """

    def __init__(
        self,
        model_name: str = "convnext_tiny",
        in_bands: int = 4,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        rgb_bands: list[int] | None = [2, 1, 0],
        extra_band_init: Literal["mean", "zeros"] = "mean",
        out_indices: list[int] | None = None,
        freeze: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if in_bands < 1:
            raise ValueError(f"TimmEncoder: in_bands must be >= 1, got {in_bands}")
        if extra_band_init not in ("mean", "zeros"):
            raise ValueError(f"TimmEncoder: extra_band_init must be 'mean' or 'zeros', got {extra_band_init!r}")
        self.model_name = model_name
        self.in_bands = in_bands
        self.rgb_bands = _check_rgb_bands(rgb_bands, in_bands)
        self.extra_band_init = extra_band_init
        self.frozen = freeze

        # A structure-only copy on the meta device: level strides, stem name, classifier name,
        # Hub id and the state-dict layout, without allocating or initialising weights.
        with torch.device("meta"):
            probe = timm.create_model(model_name, pretrained=False)
        cfg = dict(probe.pretrained_cfg)
        if out_indices is None:
            out_indices = self._pyramid_indices(probe.feature_info)

        load_weights = pretrained or checkpoint_path is not None
        kwargs: dict = dict(features_only=True, out_indices=tuple(out_indices))
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            self._check_checkpoint(path, probe, cfg)
            # timm's file path runs the model's own checkpoint filter and feature wrapping.
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        elif pretrained:
            kwargs.update(pretrained=True)
        del probe

        if load_weights:
            # Build for 3 bands so timm loads the RGB stem untouched, then widen it ourselves.
            self.model = timm.create_model(model_name, in_chans=3, **kwargs)
            self._expand_stem(cfg.get("first_conv"))
        else:
            self.model = timm.create_model(model_name, in_chans=in_bands, **kwargs)

        self.channels = list(self.model.feature_info.channels())
        self.reductions = list(self.model.feature_info.reduction())
        # Some timm families (Swin, …) emit channels-last maps; the contract is B×D×h×w.
        self._channels_last = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def _pyramid_indices(self, feature_info: list[dict]) -> list[int]:
        reductions = [info["reduction"] for info in feature_info]
        indices = []
        for r in PYRAMID_REDUCTIONS:
            found = [i for i, red in enumerate(reductions) if red == r]
            if not found:
                raise ValueError(
                    f"TimmEncoder: timm model '{self.model_name}' has no feature level with reduction {r} "
                    f"(its levels have reductions {reductions}); pass out_indices explicitly"
                )
            indices.append(found[-1])  # the deepest level at that stride
        return indices

    def _check_checkpoint(self, path: Path, probe: nn.Module, cfg: dict) -> None:
        if not path.is_file():
            hub_id = cfg.get("hf_hub_id") or f"timm/{self.model_name}"
            raise FileNotFoundError(
                f"TimmEncoder: checkpoint_path '{path}' does not exist. Download the RGB weights of timm model "
                f"'{self.model_name}' (Hugging Face id '{hub_id}', file 'model.safetensors') and save them at "
                f"that path, or set pretrained=True to let timm fetch them."
            )
        state = timm.models.load_state_dict(str(path), weights_only=True)
        expected = probe.state_dict()
        classifiers = cfg.get("classifier") or ()
        if isinstance(classifiers, str):
            classifiers = (classifiers,)
        head = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
        diff = compare_state_dicts(expected, state, ignore=head)
        missing, unexpected = diff.missing, diff.unexpected
        mismatched = diff.mismatch_lines("file", "model")
        if not diff.ok:
            raise ValueError(
                f"TimmEncoder: checkpoint '{path}' is not a state dict of the 3-band timm model "
                f"'{self.model_name}': missing keys {missing[:8]}{'…' if len(missing) > 8 else ''}, "
                f"unexpected keys {unexpected[:8]}{'…' if len(unexpected) > 8 else ''}, "
                f"shape mismatches {mismatched[:8]}{'…' if len(mismatched) > 8 else ''}"
            )

    def _stem_convs(self, first_conv: str | list[str] | tuple[str, ...] | None) -> list[nn.Conv2d]:
        names = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])
        modules = dict(self.model.named_modules())
        convs = []
        for name in names:
            # Feature wrappers rename modules: a flattened Sequential's 'stem.0' becomes 'stem_0',
            # a getter wrapper nests the model under 'model.'.
            for candidate in (name, name.replace(".", "_", 1), f"model.{name}"):
                module = modules.get(candidate)
                if isinstance(module, nn.Conv2d):
                    convs.append(module)
                    break
        if not convs:
            convs = [m for m in self.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3]
        if not convs or any(c.in_channels != 3 or c.groups != 1 for c in convs):
            raise RuntimeError(
                f"TimmEncoder: cannot find the RGB stem convolution of timm model '{self.model_name}' "
                f"(pretrained_cfg first_conv={first_conv!r}) to widen it to {self.in_bands} bands"
            )
        return convs

    @torch.no_grad()
    def _expand_stem(self, first_conv: str | list[str] | None) -> None:
        if self.in_bands == 3 and self.rgb_bands == [0, 1, 2]:
            return
        for conv in self._stem_convs(first_conv):
            weight = expand_stem_weight(conv.weight.detach(), self.in_bands, self.rgb_bands, self.extra_band_init)
            conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
            conv.in_channels = self.in_bands

    def train(self, mode: bool = True) -> TimmEncoder:
        """Set train/eval mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``image`` ``B×in_bands×H×W`` → list of ``B×channels[i]×H/reductions[i]×W/reductions[i]``."""
        if image.ndim != 4 or image.shape[1] != self.in_bands:
            raise ContractError(
                f"TimmEncoder('{self.model_name}'): expected an image B×{self.in_bands}×H×W, "
                f"got shape {tuple(image.shape)}"
            )
        features = list(self.model(image))
        if self._channels_last:
            features = [rearrange(f, "b h w d -> b d h w") for f in features]
        return features

"""A timm hierarchical backbone as a multi-band pyramid encoder.

Any timm model that supports ``features_only`` (ConvNeXt, ResNet, EfficientNet, RegNet, …)
gives maps at strides 4, 8, 16 and 32 for an image with any number of bands.

Pretrained weights are RGB. When they are loaded for a ``C != 3`` band input, the stem
convolution is rebuilt for C bands: the pretrained R, G and B filters are copied
bit-identically to the input positions named by ``rgb_bands`` and every other band's filter
is set by ``extra_band_init`` (see :func:`rsvlm.encoders._stem.expand_stem_weight`).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from einops import rearrange
from torch import nn

from rsvlm.contracts import check_image_bands
from rsvlm.encoders._stem import (
    ExtraBandInit,
    FreezableEncoder,
    check_band_arguments,
    needs_widening,
    widen_stem_conv,
)
from rsvlm.io.state_dicts import check_state_dict, read_state_dict

PYRAMID_REDUCTIONS = (4, 8, 16, 32)


class TimmEncoder(FreezableEncoder):
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
            loaded: ``"mean"`` or ``"zeros"`` (see :func:`rsvlm.encoders._stem.expand_stem_weight`).
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
        extra_band_init: ExtraBandInit = "mean",
        out_indices: list[int] | None = None,
        freeze: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.in_bands = in_bands
        self.rgb_bands = check_band_arguments("TimmEncoder", in_bands, rgb_bands, extra_band_init)
        self.extra_band_init = extra_band_init

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
            # Rebuilt from this source, so trained-only checkpoints leave these weights out.
            hub = cfg.get("hf_hub_id") or f"timm:{model_name}"
            self.weights_source = str(checkpoint_path) if checkpoint_path is not None else hub
        else:
            self.model = timm.create_model(model_name, in_chans=in_bands, **kwargs)

        self.channels = list(self.model.feature_info.channels())
        self.reductions = list(self.model.feature_info.reduction())
        # Some timm families (Swin, …) emit channels-last maps; the contract is B×D×h×w.
        self._channels_last = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

        if freeze:
            self.freeze_part("model")

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
        hub_id = cfg.get("hf_hub_id") or f"timm/{self.model_name}"
        state = read_state_dict(
            path,
            "TimmEncoder.checkpoint_path",
            missing_hint=f"Download the RGB weights of timm model '{self.model_name}' (Hugging Face id "
            f"'{hub_id}', file 'model.safetensors') and save them at that path, or set pretrained=True "
            "to let timm fetch them.",
        )
        classifiers = cfg.get("classifier") or ()
        if isinstance(classifiers, str):
            classifiers = (classifiers,)
        head = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
        header = f"TimmEncoder: checkpoint '{path}' is not a state dict of the 3-band timm model '{self.model_name}':"
        check_state_dict(probe.state_dict(), state, header, ignore=head)

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

    def _expand_stem(self, first_conv: str | list[str] | None) -> None:
        if needs_widening(self.in_bands, self.rgb_bands):
            for conv in self._stem_convs(first_conv):
                widen_stem_conv(conv, self.in_bands, self.rgb_bands, self.extra_band_init)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``image`` ``B×in_bands×H×W`` → list of ``B×channels[i]×H/reductions[i]×W/reductions[i]``."""
        check_image_bands(f"TimmEncoder('{self.model_name}')", image, self.in_bands)
        features = list(self.model(image))
        if self._channels_last:
            features = [rearrange(f, "b h w d -> b d h w") for f in features]
        return features

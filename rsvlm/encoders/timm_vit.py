"""A timm Vision Transformer as an encoder of patch-grid maps.

:class:`~rsvlm.encoders.timm_encoder.TimmEncoder` reads timm's ``features_only`` pyramids at
strides 4–32 and builds the model at its own fixed image size; a ViT (DINOv2 ViT-L/14 is
trained at 518 px) has one stride, the patch, and must take other sizes (224 px views). This
encoder builds the ViT with ``dynamic_img_size=True`` (the position embedding is interpolated
to each input's grid), takes the patch tokens of the chosen blocks (CLS and register tokens
dropped) and lays them out as ``B×D×H/p×W/p`` maps.

Weights and bands follow :mod:`rsvlm.encoders._stem`: RGB weights load into a 3-band model and
the patch-embedding convolution is then widened to ``in_bands`` (R, G, B filters copied bit for
bit to ``rgb_bands``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from einops import rearrange
from timm.models import get_pretrained_cfg

from rsvlm.contracts import ContractError, check_image_bands
from rsvlm.encoders._stem import ExtraBandInit, FreezableEncoder, check_band_arguments, needs_widening, widen_stem_conv
from rsvlm.io.state_dicts import StateDictError, read_state_dict


def _classifier_keys(cfg: dict) -> set[str]:
    """The state-dict keys of the classifier(s) named in a timm ``pretrained_cfg``."""
    classifiers = cfg.get("classifier") or ()
    names = [classifiers] if isinstance(classifiers, str) else list(classifiers)
    return {f"{name}.{p}" for name in names for p in ("weight", "bias")}


class TimmViTEncoder(FreezableEncoder):
    """Image ``B×in_bands×H×W`` (H, W multiples of the patch p) → maps ``[B×D×H/p×W/p]``, one per
    entry of ``out_indices``.

    Args:
        model_name: a timm ViT name, optionally with a pretrained tag
            (``"vit_large_patch14_dinov2.lvd142m"``).
        img_size: the size the position embedding is built (and pretrained ones resampled) for;
            ``None`` keeps the model's own (518 for DINOv2). Other sizes are interpolated per input.
        in_bands: C, the number of input bands.
        out_indices: the blocks whose outputs are returned (negative counts from the last).
        norm: apply the ViT's final LayerNorm to every returned block (for the last block this is
            ``forward_features``, the features DINOv2 and SPHINX use).
        pretrained: load timm's own pretrained RGB weights from the Hugging Face hub. Ignored when
            ``checkpoint_path`` is given.
        checkpoint_path: a local ``.safetensors`` / ``.pth`` file with the 3-band state dict of
            the same ViT (timm's ``model.safetensors`` from the hub, or any layout timm's ViT
            checkpoint filter converts, e.g. the original DINOv2 release). Classifier keys are
            dropped; the position (and patch) embedding is resampled to ``img_size`` (patch size)
            by timm; any other difference is an error.
        rgb_bands: the input bands that hold R, G, B, in that order; ``None`` when none does.
        extra_band_init: the filter of the other bands when RGB weights load (``"mean"``/``"zeros"``).
        patch_size, depth, embed_dim, num_heads: overrides of the architecture (tiny test and demo
            models, e.g. ``vit_tiny_patch16_224`` with ``patch_size=8, depth=2``); ``None`` keeps it.
        freeze: no gradients and eval mode for the whole ViT.
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch14_dinov2",
        img_size: int | None = None,
        in_bands: int = 3,
        out_indices: list[int] = [-1],
        norm: bool = True,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        rgb_bands: list[int] | None = [0, 1, 2],
        extra_band_init: ExtraBandInit = "mean",
        patch_size: int | None = None,
        depth: int | None = None,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.in_bands = in_bands
        self.rgb_bands = check_band_arguments("TimmViTEncoder", in_bands, rgb_bands, extra_band_init)
        self.norm = norm
        overrides = dict(
            img_size=img_size, patch_size=patch_size, depth=depth, embed_dim=embed_dim, num_heads=num_heads
        )
        # num_classes=0: the classifier is never used, and no unused parameters reach the optimiser.
        kwargs = dict(num_classes=0, dynamic_img_size=True, **{k: v for k, v in overrides.items() if v is not None})
        if checkpoint_path is not None:
            self.model = self._load(model_name, checkpoint_path, kwargs)
            self.weights_source = str(checkpoint_path)
        elif pretrained:
            self.model = timm.create_model(model_name, pretrained=True, in_chans=3, **kwargs)
            self.weights_source = self.model.pretrained_cfg.get("hf_hub_id") or f"timm:{model_name}"
        else:
            self.model = timm.create_model(model_name, pretrained=False, in_chans=in_bands, **kwargs)
        if (pretrained or checkpoint_path is not None) and needs_widening(in_bands, self.rgb_bands):
            widen_stem_conv(self.model.patch_embed.proj, in_bands, self.rgb_bands, extra_band_init)

        self.out_indices = self._check_indices(out_indices, len(self.model.blocks))
        # Blocks after the deepest one read (and an unapplied final norm) would never run: drop them
        self.model.prune_intermediate_layers(self.out_indices, prune_norm=not norm, prune_head=True)
        self.patch = self._square_patch()
        self.channels = [self.model.embed_dim] * len(self.out_indices)
        self.reductions = [self.patch] * len(self.out_indices)
        if freeze:
            self.freeze_part("model")

    def _load(self, model_name: str, checkpoint_path: str, kwargs: dict) -> torch.nn.Module:
        """The 3-band ViT with the file's weights, loaded strictly through timm's checkpoint filter."""
        path = Path(checkpoint_path)
        # the registry's config, without building a model (timm 1.0.3 cannot build a ViT on meta)
        found = get_pretrained_cfg(model_name, allow_unregistered=True)
        cfg = found.to_dict() if found is not None else {}
        hub_id = cfg.get("hf_hub_id") or f"timm/{model_name}"
        state = read_state_dict(
            path,
            "TimmViTEncoder.checkpoint_path",
            missing_hint=f"Download the weights of timm model '{model_name}' (Hugging Face id '{hub_id}', "
            "file 'model.safetensors') and save them at that path.",
        )
        head = _classifier_keys(cfg)
        state = {k: v for k, v in state.items() if k not in head}
        try:
            # timm's own loading path (conversion filter, position-embedding resampling, strict
            # load) on the file as rsvlm's safe reader read it, head removed: timm would otherwise
            # drop the head itself and load with strict=False, hiding missing weights.
            model = timm.create_model(
                model_name, pretrained=True, in_chans=3, pretrained_cfg_overlay=dict(state_dict=state), **kwargs
            )
        except (RuntimeError, KeyError, ValueError) as err:
            reason = (str(err).strip().splitlines() or [""])[0]
            raise StateDictError(
                f"TimmViTEncoder.checkpoint_path: {path} does not fit the 3-band timm model '{model_name}' ({reason})"
            ) from err
        # Keep no reference to the loaded tensors: they now live in the model's parameters.
        model.pretrained_cfg = {**model.pretrained_cfg, "state_dict": None}
        return model

    @staticmethod
    def _check_indices(out_indices: list[int], depth: int) -> list[int]:
        blocks = [i % depth for i in out_indices if -depth <= i < depth]
        # timm returns the blocks once each, in depth order: the declared levels must match that
        if not blocks or len(blocks) != len(out_indices) or blocks != sorted(set(blocks)):
            raise ValueError(
                f"TimmViTEncoder: out_indices={list(out_indices)} must be distinct block indices in "
                f"[-{depth}, {depth}), in increasing depth order"
            )
        return blocks

    def _square_patch(self) -> int:
        ph, pw = self.model.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"TimmViTEncoder: patch_size must be square, '{self.model_name}' has {ph}×{pw}")
        return int(ph)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``image`` ``B×in_bands×H×W`` → ``[B×D×H/p×W/p]`` per ``out_indices``, no CLS/register tokens."""
        check_image_bands(f"TimmViTEncoder('{self.model_name}')", image, self.in_bands)
        height, width = image.shape[-2:]
        if height % self.patch or width % self.patch:
            raise ContractError(
                f"TimmViTEncoder('{self.model_name}') expects H and W multiples of the patch {self.patch}, "
                f"got {height}×{width}"
            )
        tokens = self.model.forward_intermediates(
            image, indices=self.out_indices, norm=self.norm, output_fmt="NLC", intermediates_only=True, stop_early=True
        )
        # NLC intermediates are the patch tokens only, row-major over the H/p × W/p grid
        return [rearrange(t, "b (h w) d -> b d h w", h=height // self.patch) for t in tokens]

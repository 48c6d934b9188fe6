"""Mixed visual experts (SPHINX / EarthGPT / EarthGPT-X): several frozen encoders side by side.

For each expert i (spec §1.3, "Mixed expert map"):

    F_i = resize_{g×g}(E_i(norm_i(x))[level_i]),   F = concat_c(F_1, …) ∈ ℝ^{ΣD_i × g × g}

**Normalisation.** The image arrives normalised once, with ``input_mean_std`` (μ_in, σ_in) per
band (``None``: it arrives unnormalised, e.g. pixels in [0, 1]). Expert i wants its own
(μ_i, σ_i) (CLIP 0.4815/0.4578/0.4082, 0.2686/0.2613/0.2758; DINOv2 = ImageNet 0.485/0.456/0.406,
0.229/0.224/0.225). Undoing the first and applying the second is one affine map per band:

    norm_i(x) = (x·σ_in + μ_in − μ_i) / σ_i

held as a scale and shift buffer, so re-normalising costs one multiply-add per expert.

**Fixed input size.** The output grid is g×g whatever the input, so the declared reduction
``image_size / g`` holds for one input size only: views of ``image_size`` × ``image_size``
(224 in the paper recipe). Other sizes are refused.

**Resizing.** ``"nearest"`` is torch's ``nearest-exact`` (centred sampling: an integer upsampling
repeats each cell, SPHINX's ``repeat_interleave``; a 7→16 one spreads cells evenly); ``"bilinear"``
uses ``align_corners=False`` and antialiases when shrinking.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.contracts import ContractError, Encoder, check_image_bands

Interpolation = Literal["nearest", "bilinear"]
MeanStd = tuple[list[float], list[float]]


class MixedExpertEncoder(Encoder):
    """Image ``B×in_bands×S×S`` (S = ``image_size``) → one map ``[B×ΣD_i×g×g]``.

    Args:
        experts: the encoders E_i, all with the same ``in_bands`` (built by jsonargparse from
            nested ``class_path``/``init_args``; each freezes itself if asked).
        levels: the pyramid level read from each expert (``experts[i].channels[levels[i]]`` wide;
            negative counts from the last).
        grid: g, the side of the output map.
        image_size: S, the square input size the declared reduction S/g is for.
        interpolation: how each expert's map is brought to g×g (see the module docstring).
        input_mean_std: (mean, std) per band the image was normalised with; ``None`` = (0, 1).
        expert_mean_std: (mean, std) per band each expert expects, one entry per expert (an
            entry ``None``: the image as it arrives); ``None``: every expert takes the image as is.
        expert_sizes: the side each expert sees; the view is resized to it (bicubic, antialiased)
            before the expert, e.g. 256 for SPHINX's ConvNeXt so that its 8×8 map doubles
            exactly to 16×16. ``None`` (or an entry ``None``): S.
    """

    def __init__(
        self,
        experts: list[Encoder],
        levels: list[int],
        grid: int = 16,
        image_size: int = 224,
        interpolation: Interpolation = "nearest",
        input_mean_std: MeanStd | None = None,
        expert_mean_std: list[MeanStd | None] | None = None,
        expert_sizes: list[int | None] | None = None,
    ) -> None:
        super().__init__()
        self._check_arguments(experts, levels, grid, image_size, interpolation)
        self.experts = nn.ModuleList(experts)
        self.in_bands = experts[0].in_bands
        self.levels = [level % len(e.channels) for e, level in zip(experts, levels)]
        self.grid = grid
        self.image_size = image_size
        self.interpolation = interpolation
        self.expert_sizes = self._per_expert("expert_sizes", expert_sizes, len(experts))
        self.channels = [sum(e.channels[level] for e, level in zip(experts, self.levels))]
        self.reductions = [image_size // grid]
        self._register_normalisation(input_mean_std, self._per_expert("expert_mean_std", expert_mean_std, len(experts)))

    def _register_normalisation(self, input_mean_std: MeanStd | None, expert_mean_std: list[MeanStd | None]) -> None:
        """Buffers ``scale_i``, ``shift_i`` (``1×C×1×1``) with ``norm_i(x) = x·scale_i + shift_i``."""
        base = self._mean_std("input_mean_std", input_mean_std)
        for i, target in enumerate(expert_mean_std):
            if target is None:  # this expert takes the image as it arrives
                scale, shift = torch.ones(1, self.in_bands, 1, 1), torch.zeros(1, self.in_bands, 1, 1)
            else:
                scale, shift = self._affine(base, self._mean_std(f"expert_mean_std[{i}]", target))
            # Derived from the constructor arguments, so kept out of checkpoints.
            self.register_buffer(f"scale_{i}", scale, persistent=False)
            self.register_buffer(f"shift_{i}", shift, persistent=False)

    @staticmethod
    def _check_arguments(
        experts: list[Encoder], levels: list[int], grid: int, image_size: int, interpolation: str
    ) -> None:
        if not experts:
            raise ValueError("MixedExpertEncoder: experts must name at least one encoder")
        if len(levels) != len(experts):
            raise ValueError(f"MixedExpertEncoder: levels has {len(levels)} entries for {len(experts)} experts")
        bands = [e.in_bands for e in experts]
        if len(set(bands)) != 1:
            raise ValueError(f"MixedExpertEncoder: experts must share in_bands, got {bands}")
        for i, (expert, level) in enumerate(zip(experts, levels)):
            n = len(expert.channels)
            if not -n <= level < n:
                raise ValueError(f"MixedExpertEncoder: levels[{i}]={level} but expert {i} has {n} levels")
        if grid < 1 or image_size % grid:
            raise ValueError(f"MixedExpertEncoder: grid={grid} must divide image_size={image_size}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(
                f"MixedExpertEncoder: interpolation must be 'nearest' or 'bilinear', got {interpolation!r}"
            )

    @staticmethod
    def _per_expert(field: str, values: list | None, count: int) -> list:
        if values is None:
            return [None] * count
        if len(values) != count:
            raise ValueError(f"MixedExpertEncoder: {field} has {len(values)} entries for {count} experts")
        return list(values)

    def _mean_std(self, field: str, value: MeanStd | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` as ``1×C×1×1`` tensors, ``(0, 1)`` for ``None``."""
        if value is None:
            return torch.zeros(1, self.in_bands, 1, 1), torch.ones(1, self.in_bands, 1, 1)
        mean, std = (list(v) for v in value)
        if len(mean) != self.in_bands or len(std) != self.in_bands or min(std) <= 0:
            raise ValueError(
                f"MixedExpertEncoder: {field} must be (mean, std) with {self.in_bands} values each and std > 0, "
                f"got {value}"
            )
        return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    @staticmethod
    def _affine(
        base: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift with ``norm(x) = x·scale + shift = (x·σ_in + μ_in − μ_i)/σ_i``."""
        (mean_in, std_in), (mean, std) = base, target
        return std_in / std, (mean_in - mean) / std

    def _resize(self, feature: torch.Tensor, size: int, mode: str) -> torch.Tensor:
        if tuple(feature.shape[-2:]) == (size, size):
            return feature
        if mode == "nearest":
            return F.interpolate(feature, size=(size, size), mode="nearest-exact")
        shrinking = size < max(feature.shape[-2:])
        return F.interpolate(feature, size=(size, size), mode=mode, align_corners=False, antialias=shrinking)

    def expert_input(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """``image`` ``B×C×S×S`` re-normalised and resized for expert ``index``."""
        x = image * getattr(self, f"scale_{index}") + getattr(self, f"shift_{index}")
        size = self.expert_sizes[index]
        return x if size is None else self._resize(x, size, "bicubic")

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``image`` ``B×in_bands×S×S`` → ``[B×ΣD_i×g×g]``, expert i's channels at offset ΣD_<i."""
        check_image_bands("MixedExpertEncoder", image, self.in_bands)
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ContractError(
                f"MixedExpertEncoder expects {self.image_size}×{self.image_size} views (image_size="
                f"{self.image_size}), got {tuple(image.shape[-2:])}"
            )
        maps = [
            self._resize(expert(self.expert_input(image, i))[level], self.grid, self.interpolation)
            for i, (expert, level) in enumerate(zip(self.experts, self.levels))
        ]
        return [torch.cat(maps, dim=1)]

"""Per-modality stems: optical / SAR / infrared images of different band counts → one
``B×out_bands×H×W`` tensor the shared encoders read (EarthGPT-X spec §1.2 row 1, §1.3, §3.3).

Each modality ``m`` has a :class:`StemSpec` and maps its ``C_m`` bands linearly,
``y = W_m x (+ b_m)`` with ``W_m ∈ ℝ^{out_bands×C_m}``:

* ``replicate``: one band → ``[x₁, x₁, x₁]``; two SAR bands → ``[VV, VH, VV − VH]``, the dual-pol
  false-colour composite (``VV − VH`` is the dB ratio scaled by the normalisation when both bands
  share one z-score, as the Sentinel-1 preset does). EarthGPT feeds 8-bit SAR / IR chips as RGB
  this way (``PIL.convert("RGB")``).
* ``select``: ``y = x[rgb_bands]``.
* ``conv1x1``: a trainable ``W_m``, ``b_m`` initialised to the replicate / select mapping (``b = 0``),
  so training starts from the paper-faithful input.

A batch may mix modalities: samples are grouped by their ``modality`` id
(:data:`rsvlm.data.modalities.MODALITY_IDS`), each group goes through its own map on its first
``C_m`` bands, and the result is written back at the group's batch indices. The maps are
per-pixel and have no batch statistics, so a mixed batch gives what each sample gives alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rsvlm.contracts import ContractError, check_image_bands
from rsvlm.data.modalities import MODALITY_IDS


@dataclass
class StemSpec:
    """How one modality's bands become the stem's ``out_bands`` channels.

    Attributes:
        bands: the modality's band names, in the order the dataset stacks them (``C_m`` of them).
        mode: ``replicate`` (1 or 2 bands), ``select`` (``rgb_bands``) or ``conv1x1`` (trainable).
        rgb_bands: for ``select`` (and a ``conv1x1`` initialised by selection): the ``out_bands``
            band indices that become output channels 0, 1, 2, …
    """

    bands: list[str]
    mode: Literal["replicate", "select", "conv1x1"] = "replicate"
    rgb_bands: list[int] | None = None


def replicate_matrix(channels: int, out_bands: int, where: str) -> torch.Tensor:
    """``out_bands×channels`` replicate mapping: one band copied to every output; two bands
    ``[b₀, b₁, b₀ − b₁]`` (only for 3 outputs)."""
    if channels == 1:
        return torch.ones(out_bands, 1)
    if channels == 2 and out_bands == 3:
        return torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    raise ContractError(
        f"{where}: mode 'replicate' takes 1 band, or 2 bands for 3 outputs; got {channels} bands, "
        f"out_bands={out_bands} (use mode 'select' with rgb_bands, or 'conv1x1')"
    )


def select_matrix(rgb_bands: list[int], channels: int, out_bands: int, where: str) -> torch.Tensor:
    """``out_bands×channels`` one-hot mapping: output ``j`` is band ``rgb_bands[j]``."""
    if len(rgb_bands) != out_bands or not all(0 <= b < channels for b in rgb_bands):
        raise ContractError(
            f"{where}: field 'rgb_bands'={rgb_bands} must be {out_bands} band indices in [0, {channels})"
        )
    matrix = torch.zeros(out_bands, channels)
    matrix[torch.arange(out_bands), torch.tensor(rgb_bands)] = 1.0
    return matrix


def initial_matrix(spec: StemSpec, out_bands: int, where: str) -> torch.Tensor:
    """The mapping a spec starts from: selection when it names ``rgb_bands``, else replication."""
    if spec.mode not in ("replicate", "select", "conv1x1"):
        raise ContractError(f"{where}: field 'mode' must be replicate, select or conv1x1, got {spec.mode!r}")
    if spec.mode == "select" and spec.rgb_bands is None:
        raise ContractError(f"{where}: mode 'select' needs field 'rgb_bands'")
    if spec.rgb_bands is not None and spec.mode != "replicate":
        return select_matrix(list(spec.rgb_bands), len(spec.bands), out_bands, where)
    return replicate_matrix(len(spec.bands), out_bands, where)


class _BandMap(nn.Module):
    """``y = W x (+ b)`` per pixel: ``B×C×H×W`` → ``B×O×H×W``; fixed (a buffer) or trainable."""

    def __init__(self, matrix: torch.Tensor, trainable: bool) -> None:
        super().__init__()
        if trainable:
            self.weight = nn.Parameter(matrix.clone())
            self.bias = nn.Parameter(torch.zeros(matrix.shape[0]))
        else:
            # derived from the spec, so not saved in checkpoints
            self.register_buffer("weight", matrix.clone(), persistent=False)
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("oc,bchw->bohw", self.weight.to(x.dtype), x)
        return y if self.bias is None else y + self.bias.to(x.dtype)[None, :, None, None]


class MultiSourceStem(nn.Module):
    """Mixed-modality images ``B×C_max×H×W`` → ``B×out_bands×H×W`` for the shared encoders.

    Args:
        modalities: modality name (``optical``, ``sar``, ``infrared``) → :class:`StemSpec`.
        out_bands: channels out (the encoder's ``in_bands``; 3 for RGB experts).

    Attributes:
        in_bands: ``C_max``, the most bands any modality has (images are zero-padded to it).
        out_bands: as given.
    """

    def __init__(self, modalities: dict[str, StemSpec], out_bands: int = 3) -> None:
        super().__init__()
        if not modalities or out_bands < 1:
            raise ContractError(f"MultiSourceStem: needs modalities and out_bands >= 1, got {modalities}, {out_bands}")
        unknown = sorted(set(modalities) - set(MODALITY_IDS))
        if unknown:
            raise ContractError(
                f"MultiSourceStem: field 'modalities' has unknown {unknown}; known: {list(MODALITY_IDS)}"
            )
        specs = {name: s if isinstance(s, StemSpec) else StemSpec(**s) for name, s in modalities.items()}
        self.specs = specs
        self.out_bands = out_bands
        self.in_bands = max(len(s.bands) for s in specs.values())
        self.maps = nn.ModuleDict(
            {
                name: _BandMap(
                    initial_matrix(s, out_bands, f"MultiSourceStem modalities[{name!r}]"), s.mode == "conv1x1"
                )
                for name, s in specs.items()
            }
        )

    def _check_bands(self, name: str, rows: torch.Tensor, band_valid: torch.Tensor | None) -> None:
        # the group's bands must be exactly its spec's: fewer means a band the map reads is padding
        if band_valid is None:
            return
        count = len(self.specs[name].bands)
        expected = torch.arange(self.in_bands, device=band_valid.device) < count
        wrong = (band_valid[rows] != expected).any(dim=1)
        if bool(wrong.any()):
            b = int(rows[wrong.nonzero()[0, 0]])
            raise ContractError(
                f"MultiSourceStem: field 'band_valid' of sample {b} ({name}) is {band_valid[b].tolist()}, "
                f"but StemSpec {name!r} has bands {self.specs[name].bands}"
            )

    def forward(
        self, image: torch.Tensor, modality: torch.Tensor, band_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map each sample with its modality's stem.

        Args:
            image: ``B×C_max×H×W``, each sample's ``C_m`` bands first, zero padding after.
            modality: ``B`` long ids (:data:`rsvlm.data.modalities.MODALITY_IDS`).
            band_valid: ``B×C_max`` bool (True on the sample's bands), checked against the specs.

        Returns:
            ``B×out_bands×H×W``.
        """
        check_image_bands("MultiSourceStem", image, self.in_bands)
        if modality.shape != image.shape[:1]:
            raise ContractError(
                f"MultiSourceStem: field 'modality' must be B={image.shape[0]} ids, got {modality.shape}"
            )
        names = {MODALITY_IDS[name]: name for name in self.specs}
        out = image.new_zeros(image.shape[0], self.out_bands, *image.shape[2:])
        for mid in torch.unique(modality).tolist():
            if mid not in names:
                raise ContractError(f"MultiSourceStem: field 'modality' holds id {mid}, which has no StemSpec {names}")
            rows = (modality == mid).nonzero().squeeze(1)
            self._check_bands(names[mid], rows, band_valid)
            group = image.index_select(0, rows)[:, : len(self.specs[names[mid]].bands)]
            out = out.index_copy(0, rows, self.maps[names[mid]](group))
        return out

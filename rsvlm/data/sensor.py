"""Sensor effects on generated reflectance: gain / offset, haze, noise and integer DNs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Reflectance → integer DN: × 10000 (as Sentinel-2 L1C) or × 400 (8-bit, saturates at 0.6375).
DN_SCALES: dict[str, float] = {"uint16": 10000.0, "uint8": 400.0}


@dataclass(frozen=True)
class SensorVariation:
    """Sensor effects drawn per scene and applied to its reflectance ``x`` (all off by default).

    ``y = g_b · (x + a · (490 / λ_b)⁴) + o_b + n``, then ``y`` clipped at 0 and, for integer
    ``dn``, ``round(y · DN_SCALES[dn])`` clipped to the dtype's range. Per scene: haze
    amplitude ``a ~ U(0, haze)`` (additive path radiance, Rayleigh-like λ⁻⁴, so strongest in
    blue; λ_b the band centre in nm), per band gain ``g_b ~ U(*gain)`` and offset
    ``o_b ~ U(*offset)``; per pixel noise ``n ~ N(0, noise²)``. Units: reflectance.

    Args:
        gain, offset: (low, high) of the per-band gain and offset.
        haze: largest haze amplitude (reflectance at 490 nm).
        noise: sensor noise σ.
        dn: ``"float"`` (float32) or integer DNs ``"uint16"`` / ``"uint8"`` (:data:`DN_SCALES`).
    """

    gain: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    haze: float = 0.0
    noise: float = 0.0
    dn: Literal["float", "uint16", "uint8"] = "float"

    def __post_init__(self) -> None:
        if self.dn not in ("float", *DN_SCALES):
            raise ValueError(f"SensorVariation.dn must be float, uint16 or uint8; got {self.dn!r}")
        ordered = 0 < self.gain[0] <= self.gain[1] and self.offset[0] <= self.offset[1]
        if not ordered or min(self.haze, self.noise) < 0:
            raise ValueError(f"SensorVariation: need 0 < gain low ≤ high, offset low ≤ high, haze, noise ≥ 0: {self}")

    @property
    def active(self) -> bool:  # the default changes nothing
        return self != SensorVariation()

    def apply(
        self, image: np.ndarray, centres_nm: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Apply to a C×H×W reflectance image; returns ``(image, drawn parameters)``.

        The image is float32, or uint16 / uint8 for integer ``dn``; the parameters are
        ``gain``, ``offset`` (lists of C floats) and ``haze`` (the amplitude ``a``).
        """
        c = image.shape[0]
        gain = rng.uniform(*self.gain, size=c)
        offset = rng.uniform(*self.offset, size=c)
        amplitude = float(rng.uniform(0.0, self.haze))
        haze = amplitude * (490.0 / np.asarray(centres_nm, dtype=np.float64)) ** 4
        y = gain[:, None, None] * (image.astype(np.float64) + haze[:, None, None]) + offset[:, None, None]
        if self.noise > 0:
            y = y + rng.normal(0.0, self.noise, size=y.shape)
        y = np.maximum(y, 0.0)
        if self.dn != "float":
            y = np.clip(np.round(y * DN_SCALES[self.dn]), 0, np.iinfo(self.dn).max)
        return y.astype(np.float32 if self.dn == "float" else self.dn), {
            "gain": gain.tolist(),
            "offset": offset.tolist(),
            "haze": amplitude,
        }

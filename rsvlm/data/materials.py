"""Material variability of generated scenes: real land cover is not four pure materials.

Off by default, :class:`MaterialVariation` replaces the one signature per class of
:func:`rsvlm.data.scenes.render` with the linear mixing model of spectral unmixing: a pixel's
reflectance is the abundance-weighted sum of endmember spectra. Per connected region of a class
(``scipy.ndimage.label``, 4-connectivity) it draws:

==========  ===========================================================================
class       pixel reflectance (``s_k`` the class signatures at the band centres)
==========  ===========================================================================
vegetation  ``b_v · (f · s_veg + (1 − f) · s_soil)``: canopy cover ``f ~ U(vegetation_cover)``,
            canopy brightness ``b_v ~ U(vegetation_brightness)`` (structure, shadow)
water       ``(1 − t) · s_water + t · s_sed``: turbidity ``t ~ U(turbidity)`` with the sediment-
            laden water spectrum ``s_sed(λ) = s_water + τ(λ) (s_soil − s_water)``,
            ``τ = 1`` below 700 nm and ``exp(−(λ − 700) / 250)`` beyond: suspended sediment
            brightens the visible and NIR, water's own absorption keeps the SWIR dark;
            near the shore the bottom shows: a fraction ``a · exp(−(d − 1) / shallow_width)`` of
            soil is mixed in, ``d`` the pixel's distance to land and ``a ~ U(shallow)`` per body
            (shallow margins and flooded fields: water whose index falls below the lake's)
building    ``b · s_concrete``: roof brightness ``b ~ U(brightness)``
bare soil   ``b · ((1 − g) · s_soil + g · s_veg)``: per scene soil brightness ``b ~ U(brightness)``
            and sparse plant cover ``g ~ U(soil_vegetation)``
==========  ===========================================================================

Every cover fraction (``f``, ``t``, ``g``) also varies inside its region by ``cover_noise`` times
smooth unit-variance noise (clipped to [0, 1]), and the image is finally blurred by a Gaussian
point-spread function of σ = ``point_spread`` pixels, so pixels on a boundary are mixtures of
their neighbours' materials as a real sensor records them. Labels stay the generated class map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, label

# Class codes of rsvlm.data.scenes (kept here so this module does not import it).
_SOIL, _VEGETATION, _WATER, _BUILDING = 0, 1, 2, 3
# Below this wavelength suspended sediment shows fully; beyond it water absorbs (nm, e-fold 250).
SEDIMENT_EDGE_NM = 700.0
SEDIMENT_EFOLD_NM = 250.0

Range = tuple[float, float]


def sediment_transmission(centres_nm: np.ndarray) -> np.ndarray:
    """``τ(λ)``: 1 up to 700 nm, ``exp(−(λ − 700) / 250)`` beyond; float64 (C,)."""
    lam = np.asarray(centres_nm, dtype=np.float64)
    return np.where(lam <= SEDIMENT_EDGE_NM, 1.0, np.exp(-(lam - SEDIMENT_EDGE_NM) / SEDIMENT_EFOLD_NM))


def sediment_signature(soil: np.ndarray, water: np.ndarray, centres_nm: np.ndarray) -> np.ndarray:
    """Sediment-laden water ``s_water + τ(λ) (s_soil − s_water)`` at the band centres, (C,)."""
    return water + sediment_transmission(centres_nm) * (soil - water)


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


@dataclass(frozen=True)
class MaterialVariation:
    """Per-region material mixtures of generated scenes (all off by default; see the module).

    Args:
        vegetation_cover: (low, high) canopy cover ``f`` of a vegetation region.
        vegetation_brightness: (low, high) brightness ``b_v`` of a vegetation region.
        turbidity: (low, high) sediment fraction ``t`` of a water body.
        brightness: (low, high) brightness of the scene's soil and of each building block.
        soil_vegetation: (low, high) sparse plant cover ``g`` of the scene's bare soil.
        cover_noise: amplitude of the within-region variation of the cover fractions.
        point_spread: σ in pixels of the Gaussian point-spread function (0: none).
        shallow: (low, high) soil fraction ``a`` a water body shows at its shore.
        shallow_width: e-fold width in pixels of the shallow margin (0: none).
    """

    vegetation_cover: Range = (1.0, 1.0)
    vegetation_brightness: Range = (1.0, 1.0)
    turbidity: Range = (0.0, 0.0)
    brightness: Range = (1.0, 1.0)
    soil_vegetation: Range = (0.0, 0.0)
    cover_noise: float = 0.0
    point_spread: float = 0.0
    shallow: Range = (0.0, 0.0)
    shallow_width: float = 0.0

    def __post_init__(self) -> None:
        fractions = {
            "vegetation_cover": self.vegetation_cover,
            "turbidity": self.turbidity,
            "soil_vegetation": self.soil_vegetation,
            "shallow": self.shallow,
        }
        for name, (lo, hi) in fractions.items():
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"MaterialVariation.{name} must satisfy 0 ≤ low ≤ high ≤ 1, got {(lo, hi)}")
        for name, (lo, hi) in {
            "brightness": self.brightness,
            "vegetation_brightness": self.vegetation_brightness,
        }.items():
            if not 0.0 < lo <= hi:
                raise ValueError(f"MaterialVariation.{name} must satisfy 0 < low ≤ high, got {(lo, hi)}")
        if self.cover_noise < 0 or self.point_spread < 0 or self.shallow_width < 0:
            raise ValueError(f"MaterialVariation: cover_noise, point_spread and shallow_width must be ≥ 0: {self}")

    @property
    def active(self) -> bool:  # the default changes nothing
        return self != MaterialVariation()

    def _cover(self, regions: np.ndarray, count: int, bounds: Range, rng: np.random.Generator) -> np.ndarray:
        """Cover fraction per pixel: one draw per region plus within-region noise, in [0, 1]."""
        per_region = np.concatenate([[0.0], rng.uniform(*bounds, size=count)])
        cover = per_region[regions]
        if self.cover_noise > 0:
            cover = cover + self.cover_noise * _unit_noise(rng, regions.shape, sigma=1.5)
        return np.clip(cover, 0.0, 1.0)

    def shallow_bottom(self, regions: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``H×W`` soil fraction of shallow water: ``a · exp(−(d − 1) / shallow_width)`` in a body.

        Args:
            regions: ``H×W`` labels of the water bodies (0 elsewhere), ``count`` of them.
        """
        shore = np.concatenate([[0.0], rng.uniform(*self.shallow, size=count)])[regions]
        distance = distance_transform_edt(regions > 0)  # 1 on the shore, 0 off the water
        return np.where(regions > 0, shore * np.exp(-(distance - 1.0) / self.shallow_width), 0.0)

    def reflectance(
        self, classes: np.ndarray, signatures: np.ndarray, centres_nm: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Mixed reflectance of a class map, before texture and sensor noise.

        Args:
            classes: ``H×W`` uint8 codes (0 soil, 1 vegetation, 2 water, 3 building).
            signatures: ``4×C`` class signatures at the band centres (rows follow the codes).
            centres_nm: ``(C,)`` band centres.
            rng: draws every region's parameters and the noise fields.

        Returns:
            ``C×H×W`` float64 reflectance.
        """
        sig = np.asarray(signatures, dtype=np.float64)
        soil, veg, water, concrete = sig[_SOIL], sig[_VEGETATION], sig[_WATER], sig[_BUILDING]
        sediment = sediment_signature(soil, water, centres_nm)
        image = np.zeros((sig.shape[1], *classes.shape), dtype=np.float64)

        def paint(where: np.ndarray, spectra: np.ndarray) -> None:  # spectra: C×n
            image[:, where] = spectra

        regions, n = label(classes == _VEGETATION)
        cover = self._cover(regions, n, self.vegetation_cover, rng)
        shade = np.concatenate([[1.0], rng.uniform(*self.vegetation_brightness, size=n)])[regions]
        at = regions > 0
        paint(at, shade[at] * (cover[at] * veg[:, None] + (1 - cover[at]) * soil[:, None]))

        regions, n = label(classes == _WATER)
        turbid = self._cover(regions, n, self.turbidity, rng)
        at = regions > 0
        spectra = (1 - turbid[at]) * water[:, None] + turbid[at] * sediment[:, None]
        if self.shallow_width > 0:  # drawn only when on, so other settings keep their scenes
            bottom = self.shallow_bottom(regions, n, rng)[at]
            spectra = (1 - bottom) * spectra + bottom * soil[:, None]
        paint(at, spectra)

        regions, n = label(classes == _BUILDING)
        roof = np.concatenate([[1.0], rng.uniform(*self.brightness, size=n)])[regions]
        at = regions > 0
        paint(at, roof[at] * concrete[:, None])

        at = classes == _SOIL
        plants = self._cover(at.astype(np.int64), 1, self.soil_vegetation, rng)
        soil_brightness = rng.uniform(*self.brightness)
        paint(at, soil_brightness * ((1 - plants[at]) * soil[:, None] + plants[at] * veg[:, None]))

        if self.point_spread > 0:
            image = gaussian_filter(image, sigma=(0, self.point_spread, self.point_spread), mode="nearest")
        return image

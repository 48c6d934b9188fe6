"""Named spectral bands.

Code that needs a band asks for it by name (``spec["nir"]``, ``spec.take(image, "nir")``),
never by a bare index, so that the same pipeline runs on Sentinel-2, Landsat, NAIP or a
user's own sensor once its :class:`BandSpec` is declared.

Canonical names (use these so that indices and prompts find the bands):

====================  ====================================================
optical               ``coastal``, ``blue``, ``green``, ``yellow``, ``red``,
                      ``rededge`` (single red-edge band, WorldView-3),
                      ``rededge1``, ``rededge2``, ``rededge3`` (Sentinel-2 B5-B7),
                      ``nir`` (broad NIR), ``nir08`` (Sentinel-2 B8A narrow NIR),
                      ``nir2`` (WorldView-3 NIR2), ``water_vapour``, ``cirrus``,
                      ``swir1``, ``swir2``, ``thermal``
SAR                   ``vv``, ``vh``, ``hh``, ``hv``
====================  ====================================================

Other names are accepted (a user's sensor may have bands we do not know), but band
lookups by the library only use the canonical ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsvlm.contracts import RsvlmError

CANONICAL_BANDS: tuple[str, ...] = (
    "coastal",
    "blue",
    "green",
    "yellow",
    "red",
    "rededge",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "nir2",
    "water_vapour",
    "cirrus",
    "swir1",
    "swir2",
    "thermal",
    "vv",
    "vh",
    "hh",
    "hv",
)


class BandError(RsvlmError, KeyError):
    """A band is missing from a spec, or an image's band count does not match its spec.

    A ``KeyError`` subclass so that ``except KeyError`` keeps working, but its message is
    printed plainly (``KeyError`` would otherwise print the repr of the message).

    Attributes:
        band: the band that was asked for (``None`` for a count mismatch).
        spec: the band spec involved, if any.
        path: the file the image came from, if known.
    """

    def __init__(
        self, message: str, *, band: str | None = None, spec: BandSpec | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.band = band
        self.spec = spec
        self.path = path

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class BandSpec:
    """Ordered band names of a C×H×W image.

    Args:
        names: one name per image channel, in channel order (unique, non-empty).
        source: the file these bands describe, if known; only used to make error messages
            name the file. Not part of equality or hashing.

    Examples:
        >>> spec = band_spec("naip")
        >>> spec["nir"], spec.has("swir1"), len(spec)
        (3, False, 4)
    """

    names: tuple[str, ...]
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.names, str):
            raise TypeError(
                f"BandSpec.names must be a sequence of band names, got the string "
                f"{self.names!r}; use band_spec({self.names!r}) for presets"
            )
        names = tuple(self.names)
        for n in names:
            if not isinstance(n, str) or not n.strip():
                raise ValueError(f"BandSpec.names: every band name must be a non-empty string, got {n!r} in {names!r}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"BandSpec.names: duplicate band names {dupes} in {names!r}")
        if not names:
            raise ValueError("BandSpec.names: at least one band is required")
        object.__setattr__(self, "names", names)

    # -- lookup -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def has(self, name: str) -> bool:
        """Whether the spec has a band called ``name``."""
        return name in self.names

    def index(self, name: str) -> int:
        """Channel index of band ``name``.

        Raises:
            BandError: the band is not in the spec (the message names the band, the spec
                and the source file when known).
        """
        try:
            return self.names.index(name)
        except ValueError:
            where = f" of file {self.source}" if self.source else ""
            raise BandError(
                f"band {name!r} is not in the band spec{where} ({', '.join(self.names)})",
                band=name,
                spec=self,
                path=self.source,
            ) from None

    def __getitem__(self, name: str) -> int:
        """``spec["nir"]`` is ``spec.index("nir")``."""
        return self.index(name)

    def take(self, image: Any, name: str) -> Any:
        """The H×W plane of band ``name`` from an image of shape (..., C, H, W).

        Works on NumPy arrays and torch tensors alike (plain indexing, no copy).

        Raises:
            BandError: the band is missing, or the image's channel count (dimension -3)
                differs from the spec's length.
        """
        self.check_count(image.shape[-3] if len(image.shape) >= 3 else -1)
        return image[..., self.index(name), :, :]

    def check_count(self, count: int, path: str | None = None, declared_by: str | None = None) -> None:
        """Raise :class:`BandError` unless ``count`` equals the number of bands.

        The one band-count check of rsvlm's data: every reader and dataset calls it.

        Args:
            count: the number of bands found (-1: the array is not C×H×W).
            path: the file the count comes from (default: the spec's ``source``).
            declared_by: what declares this spec, e.g. ``"field 'bands' of record 3"``; the
                message then reads "<file>: has N bands but <declared_by> lists M (...)".
        """
        if count == len(self.names):
            return
        p = path or self.source
        where = f"{p}: " if p else ""
        names = ", ".join(self.names)
        if declared_by is not None and count >= 0:
            message = f"{where}has {count} bands but {declared_by} lists {len(self.names)} ({names})"
        else:
            found = f"{count} bands" if count >= 0 else "an array that is not C×H×W"
            message = f"{where}expected {len(self.names)} bands ({names}), found {found}"
        raise BandError(message, spec=self, path=p)

    def with_source(self, path: str | None) -> BandSpec:
        """The same spec, with ``path`` named in its error messages."""
        return BandSpec(self.names, source=path)

    def __str__(self) -> str:
        return f"BandSpec({', '.join(self.names)})"


PRESETS: dict[str, BandSpec] = {
    # Sentinel-2 L1C/L2A, 13 bands B1..B12 in Sen1Floods11 S2Hand order
    # (B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12).
    "sentinel2": BandSpec(
        (
            "coastal",
            "blue",
            "green",
            "red",
            "rededge1",
            "rededge2",
            "rededge3",
            "nir",
            "nir08",
            "water_vapour",
            "cirrus",
            "swir1",
            "swir2",
        )
    ),
    # The 10 surface bands (B2-B8A, B11, B12) used by most land-cover models.
    "sentinel2-10band": BandSpec(
        ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir1", "swir2")
    ),
    # Sentinel-1 GRD as in Sen1Floods11 S1Hand.
    "sentinel1": BandSpec(("vv", "vh")),
    # Landsat 8/9 OLI reflective bands B1-B7 (+ TIRS B10).
    "landsat8": BandSpec(("coastal", "blue", "green", "red", "nir", "swir1", "swir2")),
    "landsat9": BandSpec(("coastal", "blue", "green", "red", "nir", "swir1", "swir2")),
    "landsat8-thermal": BandSpec(("coastal", "blue", "green", "red", "nir", "swir1", "swir2", "thermal")),
    "landsat9-thermal": BandSpec(("coastal", "blue", "green", "red", "nir", "swir1", "swir2", "thermal")),
    # Gaofen-2 PMS multispectral (GID-15 order).
    "gaofen2": BandSpec(("blue", "green", "red", "nir")),
    # NAIP / Chesapeake Land Cover: R, G, B, NIR.
    "naip": BandSpec(("red", "green", "blue", "nir")),
    "chesapeake": BandSpec(("red", "green", "blue", "nir")),
    # WorldView-3 8-band multispectral as in SpaceNet (MS): coastal, blue, green, yellow,
    # red, red edge, NIR1, NIR2.
    "worldview3": BandSpec(("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2")),
    "rgb": BandSpec(("red", "green", "blue")),
    # Generated demo scenes.
    "demo": BandSpec(("blue", "green", "red", "nir", "swir1", "swir2")),
}


def described_bands(descriptions: Sequence[str | None]) -> BandSpec | None:
    """The bands a raster's band descriptions name, when they name them all.

    GeoTIFFs rsvlm writes describe each band by its name, and so do many exports (``"Red"``,
    ``"NIR"``); names are matched case-insensitively against :data:`CANONICAL_BANDS`. A file
    with a band undescribed, a description that is not a band name (Sen1Floods11's ``"B8A"``)
    or a name given twice is not trusted: None.

    Args:
        descriptions: one entry per band, in file order (rasterio's ``src.descriptions``).
    """
    names = tuple((d or "").strip().lower() for d in descriptions)
    if not names or not all(n in CANONICAL_BANDS for n in names) or len(set(names)) != len(names):
        return None
    return BandSpec(names)


def band_spec(name_or_list: str | Sequence[str] | BandSpec) -> BandSpec:
    """Build a :class:`BandSpec` from a preset name, a list of band names or a spec.

    Args:
        name_or_list: a key of :data:`PRESETS` (case-insensitive), a comma-separated
            string of band names (``"red,green,blue,nir"``), one band name (``"nir"``), a
            list/tuple of band names, or a ``BandSpec`` (returned unchanged).

    Raises:
        BandError: an unknown preset name.
    """
    if isinstance(name_or_list, BandSpec):
        return name_or_list
    if isinstance(name_or_list, str):
        key = name_or_list.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        if "," in key:
            return BandSpec(tuple(n.strip() for n in key.split(",")))
        if key in CANONICAL_BANDS:  # one band: a SAR or thermal file, one file of a stack
            return BandSpec((key,))
        raise BandError(
            f"unknown band preset {name_or_list!r}; known presets: "
            f"{', '.join(sorted(PRESETS))} (or give a list of band names)",
            band=None,
        )
    return BandSpec(tuple(name_or_list))

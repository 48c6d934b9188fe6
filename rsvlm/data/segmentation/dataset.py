"""Multi-class segmentation samples from in-memory scenes or image/label GeoTIFF pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsvlm.data.bands import BandError, BandSpec
from rsvlm.data.segmentation.sources import IGNORE_INDEX, SegmentationDataError, SegmentationItem
from rsvlm.data.transforms import normalize, resize_pad


def _flip(x: Tensor, lr: bool, ud: bool) -> Tensor:
    if lr:
        x = torch.flip(x, dims=(-1,))
    if ud:
        x = torch.flip(x, dims=(-2,))
    return x


class SegmentationDataset(Dataset):
    """Samples ``{"image": C×H×W, "classes": H×W int64, "valid": 1×H×W bool}``.

    Holds either in-memory arrays (generated scenes) or file pairs (folders).

    Args:
        arrays: ``[(image C×H×W float32, classes H×W uint8)]`` (all pixels valid), or None.
        items, specs, luts, ignore: file pairs, each source's band spec, label table and
            "no data" codes (folders), or None.
        bands: the bands fed to the model, picked by name.
        mean, std: ``(C,)`` statistics of ``bands``.
        num_classes: class indices must lie in ``[0, num_classes)``.
        image_size: resize (aspect kept) and pad to this side; None keeps the size.
        augment: random flips.
        seed: flip seed when an index comes without one.
    """

    def __init__(
        self,
        bands: BandSpec,
        mean: np.ndarray,
        std: np.ndarray,
        num_classes: int,
        arrays: list[tuple[np.ndarray, np.ndarray]] | None = None,
        items: list[SegmentationItem] | None = None,
        specs: Sequence[BandSpec] = (),
        luts: Sequence[np.ndarray] = (),
        ignore: Sequence[Sequence[int]] = (),
        scales: Sequence[float] = (),
        image_size: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.bands = bands
        self.mean, self.std = mean, std
        self.num_classes = num_classes
        self.arrays = arrays
        self.items = items or []
        self.specs, self.luts, self.ignore, self.scales = list(specs), list(luts), list(ignore), list(scales)
        self.image_size = image_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.items)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image C×H×W float32 of ``bands``, classes H×W uint8 with 255 where the label is
        invalid, image validity H×W bool)."""
        if self.arrays is not None:
            image, classes = self.arrays[index]
            return image, classes, np.ones(classes.shape, dtype=bool)
        from rsvlm.data.raster import read_mask, read_raster

        item = self.items[index]
        spec = self.specs[item.source]
        raster = read_raster(item.image, bands=spec)
        missing = [b for b in self.bands.names if not spec.has(b)]
        if missing:
            raise BandError(
                f"{item.image}: band(s) {missing} requested by the datamodule are not among the "
                f"source's bands ({', '.join(spec.names)})",
                band=missing[0],
                path=item.image,
            )
        data = raster.data[[spec.index(b) for b in self.bands.names]]
        if self.scales[item.source] != 1.0:
            data = data * np.float32(self.scales[item.source])
        codes, label_valid = read_mask(item.label, like=raster, invalid_values=self.ignore[item.source])
        classes = self.luts[item.source][codes]
        labelled = label_valid & (classes != IGNORE_INDEX)
        bad = labelled & (classes >= self.num_classes)
        if bad.any():
            raise SegmentationDataError(
                f"{item.label}: label codes {sorted(np.unique(codes[bad]).tolist())[:10]} give class "
                f"indices ≥ num_classes={self.num_classes}; map them with the source's 'label_map'"
            )
        return data, np.where(labelled, classes, IGNORE_INDEX).astype(np.uint8), raster.valid

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Tensor]:
        index, flip_seed = item if isinstance(item, tuple) else (item, None)
        data, classes, image_valid = self.raw(index)
        v = torch.from_numpy(np.ascontiguousarray(image_valid))[None]
        # Unlabelled pixels keep their (normalised) values: the model still sees them as context.
        image = normalize(torch.from_numpy(np.ascontiguousarray(data)), v, self.mean, self.std)
        cls = torch.from_numpy(classes)
        # class index and "labelled" as a 2-channel map, so padding (0) marks pixels unlabelled
        labels = torch.stack([cls.float(), (cls != IGNORE_INDEX).float()])
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size,) * 2:
            image, labels, v, _ = resize_pad(image, labels, v, self.image_size)
        if self.augment:
            g = torch.Generator().manual_seed(flip_seed if flip_seed is not None else self.seed * 1_000_003 + index)
            lr, ud = (bool(b) for b in torch.randint(0, 2, (2,), generator=g))
            image, labels, v = _flip(image, lr, ud), _flip(labels, lr, ud), _flip(v, lr, ud)
        valid = v[0] & (labels[1] > 0.5)
        classes_t = torch.where(valid, labels[0].long(), torch.full_like(valid, IGNORE_INDEX, dtype=torch.long))
        return {"image": image.contiguous(), "classes": classes_t.contiguous(), "valid": valid[None].contiguous()}


def collate(samples: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples; tiles of different sizes are an error that says what to set."""
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        raise SegmentationDataError(
            f"samples of one batch have different shapes {sorted(sizes)}; set the datamodule's "
            f"'image_size' to resize and pad them to one size"
        )
    return {key: torch.stack([s[key] for s in samples]) for key in ("image", "classes", "valid")}

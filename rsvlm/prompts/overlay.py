"""ViP-LLaVA's visual prompts drawn onto the image itself: :class:`OverlayPrompts`.

Where the other encoders of :mod:`rsvlm.prompts` turn the prompts into LLM tokens (``tokens``,
``inline``) or into tokens added to the image's (``dense``), this one adds nothing: each sample's
prompts are painted on its pixels, so the vision encoder sees them and the text refers to them
("the object in the red rectangle", or "Region k" for slot k's colour). The model takes no
``prompt_encoder`` (the spec's ``NullPromptEncoder``); the drawing has no parameters.

Drawing (slot k of :class:`~rsvlm.contracts.VisualPromptBatch`, colour ``colours[k % len]``,
ViP-LLaVA's pool :data:`rsvlm.prompts.geometry.PALETTE`: red, lime, blue, yellow, ...):

* point: a filled disc, PIL's ``ImageDraw.ellipse([j − r, i − r, j + r, i + r])`` around the pixel
  ``(i, j)`` holding it (ViP-LLaVA's ``draw.ellipse``; 2r + 1 pixels across), ``r`` =
  ``point_radius`` (default :func:`~rsvlm.prompts.geometry.default_point_radius`, 3 at 336 px);
* box: its outline ``line_width`` pixels thick, inside its edges: for integer edges PIL's
  ``rectangle([x0, y0, x1 − 1, y1 − 1], width=line_width)`` (ViP-LLaVA's rectangle);
* scribble: the stroke, ``line_width`` wide (1: PIL's line); mask: the mask, filled.

Boxes, strokes and masks are :func:`rsvlm.prompts.geometry.slot_marks` (``box_style="outline"``),
the geometry every picture of the prompts uses. All marks go on one RGBA layer, later slots over
earlier ones (as ``ImageDraw`` replaces pixels of an RGBA layer), with opacity ``alpha`` (masks
``mask_alpha``: ViP-LLaVA draws masks fainter, U{48..128} against U{96..255}), and the layer is
alpha-composited over the image's ``rgb_bands``; other bands are left as they are. Empty slots
(beyond a sample's count) draw nothing; background prompts (label 0) are drawn like foreground ones.

Pixel space. ViP-LLaVA draws on the image file, before the vision encoder's normalisation. Here:

* a ``uint8`` image is raw pixels and is composited with PIL's integer arithmetic
  (:func:`rsvlm.prompts.geometry.alpha_composite`): the bytes equal ``PIL.Image.alpha_composite``'s;
* a float image is composited as ``x + (a / 255)·(v − x)``, colour channel ``c`` (0..255) being
  ``v = (c / 255 · white − mean_b) / std_b`` on band b: ``white`` is the value of full intensity
  before normalisation (1.0 for pixels divided by 255, as :class:`~rsvlm.data.multitask.dataset.InstructDataset`
  reads 8-bit images; 255 for raw 8-bit floats), ``mean`` / ``std`` the per-band statistics the
  image was normalised with (None: not normalised). Normalisation is affine per band, so drawing on
  the normalised image with the colours in normalised units equals normalising the image drawn in
  raw pixels (to float rounding): the transform can run after the dataset normalised. An image
  normalised with its own statistics (SPIE's ``image`` / ``robust_image``) has no fixed colours:
  draw it raw (``mean``, ``std`` None) before it is normalised.

Where it plugs in (no change to :class:`rsvlm.models.vlm.VisionLanguageModel`): on the data side,
as ViP-LLaVA draws on the image file. :class:`rsvlm.data.overlaid.OverlaidSamples` wraps a dataset
whose samples carry ``image`` ``C×H×W`` and ``visual_prompts`` (a list of
:class:`~rsvlm.data.visual_prompts.VisualPrompt` in the image's pixels:
:class:`~rsvlm.data.multitask.dataset.InstructDataset`, :class:`~rsvlm.data.prompted.PromptedSamples`)
and draws each sample's prompts on its image; the marks are drawn at the model's resolution, after
the resize and pad, on the normalised image (``mean`` / ``std`` of the dataset). The VLM then takes
no ``prompt_encoder``; the samples keep their ``visual_prompts`` (a SAM decoder may still read them).

Shapes: B batch, C bands, H×W image, M slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.prompts.geometry import PALETTE, alpha_composite, default_line_width, default_point_radius, slot_marks

_POINT, _MASK = PROMPT_KINDS["point"], PROMPT_KINDS["mask"]


def point_disc(size: tuple[int, int], x: float, y: float, radius: int) -> np.ndarray:
    """``H×W`` bool: PIL's filled ``ellipse([j − r, i − r, j + r, i + r])`` around the pixel
    ``(i, j) = (⌊y⌋, ⌊x⌋)`` that holds the point ``(x, y)`` (clipped to the canvas)."""
    h, w = size
    canvas = Image.new("L", (w, h), 0)
    i, j = int(np.floor(y)), int(np.floor(x))
    ImageDraw.Draw(canvas).ellipse([j - radius, i - radius, j + radius, i + radius], fill=1)
    return np.asarray(canvas, dtype=bool)


class OverlayPrompts:
    """Draw each sample's visual prompts onto its image (see the module docstring); no parameters.

    Args:
        rgb_bands: the indices of the image's red, green and blue bands (the ones drawn on).
        colours: slot k's colour is ``colours[k % len(colours)]`` (RGB, 0..255).
        alpha: the marks' opacity, 0..255.
        mask_alpha: the opacity of mask prompts (None: ``alpha``).
        point_radius, line_width: in the image's pixels; None: :func:`~rsvlm.prompts.geometry.default_point_radius`
            and :func:`~rsvlm.prompts.geometry.default_line_width` of its longer side.
        white: a float image's value of full intensity before normalisation (colour 255).
        mean, std: the per-band statistics (C each) a float image was normalised with, or None.
    """

    def __init__(
        self,
        rgb_bands: Sequence[int] = (0, 1, 2),
        colours: Sequence[Sequence[int]] = PALETTE,
        alpha: int = 160,
        mask_alpha: int | None = None,
        point_radius: int | None = None,
        line_width: int | None = None,
        white: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.rgb_bands = [int(b) for b in rgb_bands]
        if len(self.rgb_bands) != 3 or len(set(self.rgb_bands)) != 3 or min(self.rgb_bands) < 0:
            raise ValueError(f"OverlayPrompts.rgb_bands: needs 3 distinct band indices, got {list(rgb_bands)}")
        self.colours = [tuple(int(c) for c in colour) for colour in colours]
        if not self.colours or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.colours):
            raise ValueError(f"OverlayPrompts.colours: needs RGB triples in 0..255, got {list(colours)}")
        self.alpha = int(alpha)
        self.mask_alpha = self.alpha if mask_alpha is None else int(mask_alpha)
        for name, value in (("alpha", self.alpha), ("mask_alpha", self.mask_alpha)):
            if not 0 <= value <= 255:
                raise ValueError(f"OverlayPrompts.{name}: must be in 0..255, got {value}")
        for name, value in (("point_radius", point_radius), ("line_width", line_width)):
            if value is not None and value < 1:
                raise ValueError(f"OverlayPrompts.{name}: must be >= 1 pixel, got {value}")
        self.point_radius, self.line_width = point_radius, line_width
        if (mean is None) != (std is None):
            raise ValueError("OverlayPrompts.mean, std: give both (a normalised image) or neither (raw pixels)")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"OverlayPrompts.std: must be positive, got {list(std)}")
        self.white = float(white)
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    # ------------------------------------------------------------------ the layer
    def layer(self, prompts: VisualPromptBatch, size: tuple[int, int]) -> np.ndarray:
        """The prompts' RGBA layer, ``B×H×W×4`` uint8 on a canvas of ``size`` = ``(H, W)``
        (coordinates scaled from ``prompts.image_size``); unmarked pixels are ``(0, 0, 0, 0)``."""
        h, w = (int(s) for s in size)
        radius = default_point_radius(max(h, w)) if self.point_radius is None else self.point_radius
        width = default_line_width(max(h, w)) if self.line_width is None else self.line_width
        marks = slot_marks(prompts, (h, w), radius, width, box_style="outline")
        kind = prompts.kind.detach().cpu().numpy()
        points = prompts.points.detach().cpu().double().numpy()
        scale = np.array([w / prompts.image_size[1], h / prompts.image_size[0]])
        out = np.zeros((*marks.shape[:1], h, w, 4), dtype=np.uint8)
        for b, m in zip(*np.nonzero(kind)):
            if kind[b, m] == _POINT:  # ViP-LLaVA's PIL disc, not the centre rule of slot_marks
                marks[b, m] = point_disc((h, w), *(points[b, m, 0] * scale), radius)
            opacity = self.mask_alpha if kind[b, m] == _MASK else self.alpha
            out[b][marks[b, m]] = (*self.colours[m % len(self.colours)], opacity)
        return out

    # ------------------------------------------------------------------ drawing
    def draw(self, image: Tensor, prompts: VisualPromptBatch) -> Tensor:
        """``image`` (``B×C×H×W``, uint8 raw or float) with ``prompts`` (B samples) drawn on its
        ``rgb_bands``; same shape, dtype and device. See the module docstring for the pixel space."""
        if image.ndim != 4:
            raise ValueError(f"OverlayPrompts: image must be B×C×H×W, got shape {tuple(image.shape)}")
        if prompts.batch_size != image.shape[0]:
            raise ValueError(f"OverlayPrompts: {prompts.batch_size} prompt samples for {image.shape[0]} images")
        bands = image.shape[1]
        if max(self.rgb_bands) >= bands:
            raise ValueError(f"OverlayPrompts.rgb_bands: {self.rgb_bands} but the image has {bands} bands")
        if not bool(prompts.valid.any()):
            return image
        layer = self.layer(prompts, tuple(image.shape[-2:]))
        if image.dtype == torch.uint8:
            if self.mean is not None:
                raise ValueError("OverlayPrompts: a uint8 image holds raw pixels; mean/std are for float images")
            rgb = image[:, self.rgb_bands].permute(0, 2, 3, 1).cpu().numpy()
            drawn = np.stack([alpha_composite(np.ascontiguousarray(x), y) for x, y in zip(rgb, layer)])
            out = image.clone()
            out[:, self.rgb_bands] = torch.from_numpy(drawn).permute(0, 3, 1, 2).to(image.device)
            return out
        if not image.is_floating_point():
            raise ValueError(f"OverlayPrompts: image must be uint8 or float, got {image.dtype}")
        return self._blend(image, torch.from_numpy(layer).to(image.device))

    def _blend(self, image: Tensor, layer: Tensor) -> Tensor:
        """``x + (a / 255)·(v − x)`` on the rgb bands of a float ``image`` (``layer`` ``B×H×W×4`` uint8)."""
        if self.mean is not None and (len(self.mean) != image.shape[1] or len(self.std) != image.shape[1]):
            raise ValueError(
                f"OverlayPrompts.mean, std: {len(self.mean)} / {len(self.std)} values for {image.shape[1]} bands"
            )
        index = torch.tensor(self.rgb_bands, device=image.device)
        colour = layer[..., :3].permute(0, 3, 1, 2).double() / 255 * self.white  # B×3×H×W, raw units
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float64, device=image.device)[index].view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64, device=image.device)[index].view(1, 3, 1, 1)
            colour = (colour - mean) / std
        opacity = layer[..., 3].double()[:, None] / 255  # B×1×H×W
        rgb = image[:, self.rgb_bands].double()
        out = image.clone()
        out[:, self.rgb_bands] = (rgb + opacity * (colour - rgb)).to(image.dtype)
        return out

    def __call__(self, image: Tensor, prompts: VisualPromptBatch) -> Tensor:
        """:meth:`draw`."""
        return self.draw(image, prompts)


__all__ = ["OverlayPrompts", "point_disc"]

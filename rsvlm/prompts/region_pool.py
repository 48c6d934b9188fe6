"""Region pooling: each visual prompt becomes one LLM token pooled from the fused map inside its region.

Two ways to pool (GPT4RoI and Osprey), on the fused map ``visual.map`` (``B×D×h×w``, covering the
whole image, so its stride is ``image_size / (h, w)`` per axis):

* ``"roi_align"`` (GPT4RoI): ``torchvision.ops.roi_align`` of the slot's box (a point's is the
  point, a scribble's or mask's its bounding box) to ``output_size``×``output_size`` bins,
  ``aligned=True`` (rsvlm's coordinates are continuous pixels, as that mode expects), flattened
  and projected to ``out_dim``;
* ``"mask"`` (Osprey): the slot's region as a mask at image resolution (a point: its pixel; a box:
  the pixels whose centres it holds; a scribble: its vertices' pixels; a mask: itself), resized to
  ``h×w`` bilinearly and kept where ``> 0`` (a region too small to reach any cell centre takes the
  cell holding its box centre), averaged over the features inside and projected to ``out_dim``.

With ``box_position`` a box MLP (``4→256→ReLU→LN→out_dim→ReLU→LN``, GPT4RoI's) of the normalised
box ``(x0/W, y0/H, x1/W, y1/H)`` is added. The output is one ``1×out_dim`` group per valid slot, in
slot order, so that :mod:`rsvlm.llm.splice` puts the sample's k-th prompt at its k-th
``placeholder``.

Shapes: B batch, M slots, K valid slots in the batch, D = ``in_channels``, h×w map, H×W image,
t = ``output_size``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchvision.ops import roi_align

from rsvlm.contracts import PROMPT_KINDS, FusedFeatures, PromptEncoder, VisualPromptBatch
from rsvlm.prompts.sparse import check_prompt_batch

POSITION_HIDDEN = 256
POOLS = ("roi_align", "mask")


def rasterize_regions(prompts: VisualPromptBatch, slots: torch.Tensor) -> torch.Tensor:
    """``K×H×W`` bool regions of the slots ``slots`` (``K×2`` (sample, slot) indices) at image size.

    A point or scribble marks the pixels holding its vertices, a box the pixels whose centres lie in
    it, a mask is itself.
    """
    height, width = prompts.image_size
    b, m = slots.unbind(1)
    kind = prompts.kind[b, m]
    device = prompts.boxes.device

    x0, y0, x1, y1 = prompts.boxes[b, m].float().unbind(1)
    xs = torch.arange(width, device=device) + 0.5
    ys = torch.arange(height, device=device) + 0.5
    inside_x = (xs >= x0[:, None]) & (xs <= x1[:, None])
    inside_y = (ys >= y0[:, None]) & (ys <= y1[:, None])
    boxes = inside_y[:, :, None] & inside_x[:, None, :]

    vertices = prompts.points[b, m].float()
    col = vertices[..., 0].floor().long().clamp(0, width - 1)
    row = vertices[..., 1].floor().long().clamp(0, height - 1)
    used = torch.arange(vertices.shape[1], device=device) < prompts.npoints[b, m, None]
    # unused vertices go to a spare last cell, dropped below, so that no write can erase a mark
    flat = torch.where(used, row * width + col, height * width)
    marks = torch.zeros(len(flat), height * width + 1, dtype=torch.bool, device=device)
    marks.scatter_(1, flat, True)
    marks = rearrange(marks[:, :-1], "k (h w) -> k h w", h=height, w=width)

    is_mask = kind == PROMPT_KINDS["mask"]
    if prompts.masks is not None:
        given = prompts.masks[b, m].bool()
    elif bool(is_mask.any()):
        raise ValueError("RegionPoolPromptEncoder: prompts.masks is None but some slots are masks (kind 4)")
    else:
        given = boxes
    is_box = (kind == PROMPT_KINDS["box"])[:, None, None]
    regions = torch.where(is_box, boxes, marks)
    return torch.where(is_mask[:, None, None], given, regions)


def regions_on_map(prompts: VisualPromptBatch, size: tuple[int, int]) -> torch.Tensor:
    """``B×M×h×w`` float {0, 1}: each valid slot's region on the ``size`` map, at least one cell."""
    h, w = size
    height, width = prompts.image_size
    slots = torch.nonzero(prompts.valid)
    out = torch.zeros(*prompts.kind.shape, h, w, device=prompts.boxes.device)
    if not len(slots):  # interpolate refuses an empty batch
        return out
    raster = rasterize_regions(prompts, slots).float()
    cells = F.interpolate(raster[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0

    # a region that reaches no cell centre (a point, a thin stroke) takes the cell holding its box centre
    b, m = slots.unbind(1)
    x0, y0, x1, y1 = prompts.boxes[b, m].float().unbind(1)
    col = ((x0 + x1) / 2 * w / width).floor().long().clamp(0, w - 1)
    row = ((y0 + y1) / 2 * h / height).floor().long().clamp(0, h - 1)
    fallback = F.one_hot(row * w + col, h * w).bool()
    fallback = rearrange(fallback, "k (h w) -> k h w", h=h, w=w)
    empty = ~cells.flatten(1).any(1)
    cells = torch.where(empty[:, None, None], fallback, cells)
    out[b, m] = cells.float()
    return out


class RegionPoolPromptEncoder(PromptEncoder):
    """Visual prompts + fused map → per sample a ``c_i×1×out_dim`` tensor, one token per valid slot.

    Args:
        in_channels: D, the fused map's width.
        out_dim: the LLM width.
        pool: ``"roi_align"`` (GPT4RoI) or ``"mask"`` (Osprey mask pooling).
        output_size: t, RoIAlign bins per side (``"roi_align"`` only).
        max_prompts: M, slots per sample at most.
        box_position: add the box-position MLP's embedding to each token.
        placeholder: the token that each prompt's embedding replaces, the k-th for slot k.
        sampling_ratio: RoIAlign samples per bin and axis (GPT4RoI: 2).
        num_views: V, views the fused map stacks top to bottom (an encoder with 1 global + n×n
            views gives ``B×D×(V·h)×w``, global view first): regions are pooled from the global
            view, the one that covers the whole image.
    """

    mode: ClassVar[Literal["tokens", "inline"]] = "inline"

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        pool: Literal["roi_align", "mask"] = "roi_align",
        output_size: int = 7,
        max_prompts: int = 10,
        box_position: bool = True,
        placeholder: str = "<region>",
        sampling_ratio: int = 2,
        num_views: int = 1,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"RegionPoolPromptEncoder: pool must be one of {POOLS}, got {pool!r}")
        if num_views < 1:
            raise ValueError(f"RegionPoolPromptEncoder: num_views must be >= 1, got {num_views}")
        if output_size < 1 or sampling_ratio < 1:
            # roi_align's adaptive sampling (ratio <= 0) takes no sample at all in a point's empty box
            raise ValueError(
                f"RegionPoolPromptEncoder: output_size and sampling_ratio must be >= 1, "
                f"got output_size={output_size}, sampling_ratio={sampling_ratio}"
            )
        self.in_channels = in_channels
        self.out_dim = out_dim
        self.pool = pool
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.max_prompts = max_prompts
        self.placeholder = placeholder
        self.num_views = num_views

        bins = output_size**2 if pool == "roi_align" else 1
        self.proj = nn.Linear(in_channels * bins, out_dim)
        self.box_mlp = (
            nn.Sequential(
                nn.Linear(4, POSITION_HIDDEN),
                nn.ReLU(),
                nn.LayerNorm(POSITION_HIDDEN),
                nn.Linear(POSITION_HIDDEN, out_dim),
                nn.ReLU(),
                nn.LayerNorm(out_dim),
            )
            if box_position
            else None
        )

    def pool_regions(self, feature_map: torch.Tensor, prompts: VisualPromptBatch) -> torch.Tensor:
        """Region features before the projection, zero for empty slots: ``B×M×D×t×t`` for
        ``"roi_align"``, ``B×M×D×1×1`` for ``"mask"``."""
        if self.pool == "roi_align":
            return self._roi_align(feature_map, prompts)
        return self._mask_pool(feature_map, prompts)

    def _roi_align(self, feature_map: torch.Tensor, prompts: VisualPromptBatch) -> torch.Tensor:
        """``B×M×D×t×t`` RoIAlign of each valid slot's box."""
        (b, m), (h, w) = prompts.kind.shape, feature_map.shape[-2:]
        height, width = prompts.image_size
        slots = torch.nonzero(prompts.valid)
        # boxes go to map cells per axis here, as roi_align's spatial_scale is one number for both
        scale = torch.tensor([w / width, h / height, w / width, h / height], device=feature_map.device)
        boxes = prompts.boxes[slots[:, 0], slots[:, 1]].float() * scale
        rois = torch.cat([slots[:, :1].float(), boxes], dim=1)
        # in float32: half-precision boxes would move by pixels, and the CPU kernel has no bfloat16
        pooled = roi_align(
            feature_map.float(),
            rois,
            output_size=self.output_size,
            spatial_scale=1.0,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        ).to(feature_map.dtype)
        out = feature_map.new_zeros(b, m, *pooled.shape[1:])
        out[slots[:, 0], slots[:, 1]] = pooled
        return out

    def _mask_pool(self, feature_map: torch.Tensor, prompts: VisualPromptBatch) -> torch.Tensor:
        """``B×M×D×1×1`` mean of the features inside each valid slot's region (Osprey)."""
        regions = regions_on_map(prompts, tuple(feature_map.shape[-2:])).to(feature_map.dtype)
        total = torch.einsum("bmhw,bdhw->bmd", regions, feature_map)
        # empty slots have no cell: clamp only to leave their zero sum at zero
        count = regions.sum(dim=(2, 3)).clamp(min=1)
        return rearrange(total / count[..., None], "b m d -> b m d 1 1")

    def box_positions(self, prompts: VisualPromptBatch) -> torch.Tensor:
        """``B×M×4`` boxes normalised by the image size, ``(x0/W, y0/H, x1/W, y1/H)``."""
        height, width = prompts.image_size
        return prompts.boxes.float() / prompts.boxes.new_tensor([width, height, width, height], dtype=torch.float32)

    def forward(self, prompts: VisualPromptBatch, visual: FusedFeatures | None = None) -> list[torch.Tensor]:
        """Per sample ``c_i×1×out_dim``, c_i its valid slots, in slot order."""
        if visual is None:
            raise ValueError("RegionPoolPromptEncoder: visual is None; region pooling reads the fused map visual.map")
        check_prompt_batch("RegionPoolPromptEncoder", prompts, self.max_prompts)
        feature_map = visual.map
        if feature_map.ndim != 4 or feature_map.shape[:2] != (prompts.batch_size, self.in_channels):
            raise ValueError(
                f"RegionPoolPromptEncoder: visual.map must be {prompts.batch_size}×{self.in_channels}×h×w "
                f"(in_channels={self.in_channels}), got shape {tuple(feature_map.shape)}"
            )
        if feature_map.shape[-2] % self.num_views:
            raise ValueError(
                f"RegionPoolPromptEncoder: visual.map has {feature_map.shape[-2]} rows, not num_views={self.num_views} "
                "stacked views"
            )
        global_view = feature_map[..., : feature_map.shape[-2] // self.num_views, :]
        valid = prompts.valid
        pooled = self.pool_regions(global_view, prompts)[valid]
        tokens = self.proj(rearrange(pooled, "k d s t -> k (d s t)"))
        if self.box_mlp is not None:
            tokens = tokens + self.box_mlp(self.box_positions(prompts)[valid].to(tokens.dtype))
        counts = valid.sum(dim=1).tolist()
        return [rearrange(group, "c d -> c 1 d") for group in tokens.split(counts)]

"""EarthGPT-X's spatial-aware prompt encoder (SAE): drawn prompts → a random-init ViT → a token grid.

Encoder modes (:class:`~rsvlm.contracts.PromptEncoder`):

* ``"tokens"``: one group of embeddings per sample, spliced at a single ``placeholder``;
* ``"inline"``: one group per prompt, spliced at the sample's k-th ``placeholder`` for slot k;
* ``"dense"`` (this module): one embedding per image token, ``B×N×D_v``, aligned with the image's
  visual-token grid and added to it by :class:`~rsvlm.fusion.hybrid_prompt.HybridPromptFusion`;
  no LLM tokens are added, so there is no placeholder.

Pipeline: the prompts are drawn on an ``S×S`` canvas by :func:`rsvlm.prompts.geometry.rasterize`,
``B×(M+3)×S×S`` in {0, 1} (M identity channels, slot k → channel k, "Region k+1"; then the point,
box and free-form type channels), M = ``max_prompts`` (fewer slots are padded with empty ones).
A randomly initialised timm ``VisionTransformer`` (no class token, no pooling) turns it into
``(S/p)²`` tokens of width ``width``, and ``Linear(width → out_dim)`` lifts them to the image
tokens' width:

    E = Linear(ViT(PatchEmbed_p(canvas) + pos)) ∈ ℝ^{B×(S/p)²×out_dim}

Alignment assumption. Token ``i·(S/p) + j`` (row-major) is the canvas patch in row i, column j,
so E lines up with the image's tokens only when those are the same ``(S/p)×(S/p)`` grid, flattened
row-major, over the same frame as the prompts' coordinates (:meth:`FusedFeatures.from_map` flattens
row-major; a DINOv2-L/14 map of a 224-px view has ``(224/14)² = 256`` tokens). Prompts given in a
frame of another size (``prompts.image_size``) are scaled to the canvas, per axis.

Views (SPHINX / EarthGPT-X's 1 global + 2×2 views of a 448-px input): with ``views``, the prompts
are drawn once on the whole input (``views.input_size``), the canvas is cut into the same views as
the image (:meth:`rsvlm.fusion.views.ViewTiler.split` with ``canvas=True``: the global view shrunk
by max pooling, so a thin stroke survives) and each view is encoded as above; the tokens follow the
image's view order (global view first, then the tiles row-major), ``N = V·(S/p)²``.

Shapes: B batch, M slots, S canvas side (one view's), p patch, V views, N = V·(S/p)² tokens,
D = ``out_dim``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rsvlm.contracts import ContractError, FusedFeatures, PromptEncoder, VisualPromptBatch
from rsvlm.fusion.views import ViewTiler
from rsvlm.prompts.geometry import rasterize
from rsvlm.prompts.sparse import check_prompt_batch, pad_slots

#: Channels of the canvas after the M identity channels: point, box, free-form (scribble or mask).
TYPE_CHANNELS = 3


class SpatialAwarePromptEncoder(PromptEncoder):
    """Visual prompts → ``B×(canvas_size/patch_size)²×out_dim`` tokens on the image's token grid.

    Args:
        out_dim: D_v, the width of the image tokens the output is fused with.
        max_prompts: M, slots per sample (the identity channels); fewer are padded, more are an error.
        canvas_size: S, the canvas side and the ViT's input size; a multiple of ``patch_size``.
        patch_size: p, the ViT's patch; the image tokens must be on the same ``(S/p)²`` grid.
        width: the ViT's embedding width.
        depth: the ViT's number of blocks (0: each token sees only its own patch).
        heads: the ViT's attention heads; ``width`` must be a multiple.
        point_radius, line_width: canvas pixels of a point's disc and a stroke's width; ``None``
            takes :func:`rsvlm.prompts.geometry.default_point_radius` / ``default_line_width`` of S.
        box_style: ``"fill"`` (the default, a filled rectangle) or ``"outline"`` (ViP-LLaVA's).
        views: the image encoder's views (the same layout, ``view_size == canvas_size``, no view tags):
            the canvas is drawn at ``views.input_size`` and cut into them (module docstring).
        relative_to_empty: subtract the tokens of an empty canvas, so that an unprompted sample's
            embeddings are exactly 0 and a prompted one's are what its prompts add. A random ViT's
            tokens are otherwise nearly one shared vector (measured on the EarthGPT-X demo: 97 % of
            their norm), which marks no place for the fusion to find. Off: the paper's plain SAE.
    """

    mode: ClassVar[Literal["dense"]] = "dense"
    tokens_per_prompt: ClassVar[int] = 0  # dense: the prompts add no LLM tokens

    def __init__(
        self,
        out_dim: int,
        max_prompts: int = 10,
        canvas_size: int = 224,
        patch_size: int = 14,
        width: int = 384,
        depth: int = 6,
        heads: int = 6,
        point_radius: int | None = None,
        line_width: int | None = None,
        box_style: Literal["fill", "outline"] = "fill",
        relative_to_empty: bool = False,
        views: ViewTiler | None = None,
    ) -> None:
        super().__init__()
        check_arguments(max_prompts, canvas_size, patch_size, width, heads, box_style)
        if views is not None and (views.view_size != canvas_size or views.view_tags):
            raise ContractError(
                f"SpatialAwarePromptEncoder: views must cut canvas_size={canvas_size} views without view tags "
                f"(the image encoder's), got view_size={views.view_size}, view_tags={views.view_tags}"
            )
        self.out_dim = out_dim
        self.max_prompts = max_prompts
        self.canvas_size = canvas_size
        self.patch_size = patch_size
        self.grid = canvas_size // patch_size
        self.views = views
        self.num_tokens = self.grid**2 * (1 if views is None else views.num_views)
        self.in_chans = max_prompts + TYPE_CHANNELS
        self.point_radius = point_radius
        self.line_width = line_width
        self.box_style = box_style
        self.relative_to_empty = relative_to_empty
        # random init: EarthGPT-X's SAE is "a randomly initialised ViT" (no public weights exist)
        self.vit = VisionTransformer(
            img_size=canvas_size,
            patch_size=patch_size,
            in_chans=self.in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            class_token=False,
        )
        self.proj = nn.Linear(width, out_dim)

    def canvas(self, prompts: VisualPromptBatch) -> torch.Tensor:
        """The SAE's input ``B×(M+3)×S×S`` float in {0, 1}: ``prompts`` padded to ``max_prompts`` slots,
        drawn by :func:`~rsvlm.prompts.geometry.rasterize` at ``canvas_size`` (``views.input_size``
        with views)."""
        check_prompt_batch("SpatialAwarePromptEncoder", prompts, self.max_prompts)
        padded = pad_slots(prompts, self.max_prompts)
        side = self.canvas_size if self.views is None else self.views.input_size
        size = (side, side)
        return rasterize(padded, size, self.point_radius, self.line_width, self.box_style)

    def encode_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """A canvas ``B×(M+3)×S×S`` (e.g. one view of a tiled larger canvas) → tokens ``B×(S/p)²×D``."""
        expected = (self.in_chans, self.canvas_size, self.canvas_size)
        if canvas.ndim != 4 or tuple(canvas.shape[1:]) != expected:
            raise ValueError(
                f"SpatialAwarePromptEncoder: canvas must be B×{expected[0]}×{expected[1]}×{expected[2]} "
                f"(max_prompts+3 channels, canvas_size), got shape {tuple(canvas.shape)}"
            )
        weight = self.vit.patch_embed.proj.weight
        # forward_features: patch embedding + position + blocks + final norm; no class token to drop
        canvas = canvas.to(device=weight.device, dtype=weight.dtype)
        if self.relative_to_empty:  # one extra canvas: the empty one, encoded alongside
            canvas = torch.cat([canvas, canvas.new_zeros(1, *canvas.shape[1:])])
        tokens = self.proj(self.vit.forward_features(canvas))
        return tokens[:-1] - tokens[-1:] if self.relative_to_empty else tokens

    def forward(self, prompts: VisualPromptBatch, visual: FusedFeatures | None = None) -> torch.Tensor:
        """``B×N×D`` prompt tokens, row-major over each view's patch grid (``visual`` is unused)."""
        canvas = self.canvas(prompts)
        if self.views is None:
            return self.encode_canvas(canvas)
        return self.views.merge(self.encode_canvas(self.views.split(canvas, canvas=True)))


def check_arguments(
    max_prompts: int, canvas_size: int, patch_size: int, width: int, heads: int, box_style: str
) -> None:
    """Raise a one-line ValueError naming the first bad constructor argument."""
    if max_prompts < 1:
        raise ValueError(f"SpatialAwarePromptEncoder: max_prompts must be >= 1, got {max_prompts}")
    if patch_size < 1 or canvas_size < patch_size or canvas_size % patch_size:
        raise ValueError(
            f"SpatialAwarePromptEncoder: canvas_size must be a positive multiple of patch_size={patch_size}, "
            f"got {canvas_size}"
        )
    if heads < 1 or width % heads:
        raise ValueError(f"SpatialAwarePromptEncoder: width={width} must be a multiple of heads, got heads={heads}")
    if box_style not in ("fill", "outline"):
        raise ValueError(f"SpatialAwarePromptEncoder: box_style must be 'fill' or 'outline', got {box_style!r}")

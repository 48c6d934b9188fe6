"""SPHINX-V-style sparse visual-prompt tokens: one token per slot from SAM's Fourier positional encoding.

Each slot of a :class:`~rsvlm.contracts.VisualPromptBatch` becomes one ``2·pe_dim`` token:

* point: ``up(PE(u) + e_label)``, ``up`` a ``Linear(pe_dim → 2·pe_dim)``, ``e_label`` SAM's
  positive / negative point embedding;
* box (and a scribble or mask, by its bounding box): ``[PE(u₀) + e_tl ; PE(u₁) + e_br]`` with SAM's
  box-corner embeddings;
* empty slot: ``up(e_not_a_point) + e_empty`` (SPHINX-V pads with SAM's "not a point", label −1;
  ``e_empty`` is learned and starts at zero).

Learned start and end tokens frame the ``max_prompts`` slot tokens, and all pass
``Linear(2·pe_dim → out_dim)`` + LayerNorm: ``B×(max_prompts+2)×out_dim``, spliced at one
``placeholder`` per sample.

Position. rsvlm's coordinates are continuous pixels (pixel ``j`` covers ``[j, j+1)``, its centre is
``j + 0.5``), so the encoded position is ``u = (x / W, y / H)``. This is SAM's own input: SAM takes
pixel indices ``j`` and encodes ``(j + 0.5) / W``, and :mod:`rsvlm.prompts.sam` hands SAM's decoder
the same position. SPHINX-V adds 0.5 to coordinates already normalised to [0, 1], which moves every
prompt by half the image; that is not copied.

The Fourier matrix and the point / corner / not-a-point embeddings have SAM's layout, so an official
SAM checkpoint's ``prompt_encoder.*`` weights load into them (as SPHINX-V initialises from
``sam_vit_h_4b8939.pth``).

Shapes: B batch, M slots, P vertices, D = ``out_dim``, E = ``pe_dim``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from rsvlm.contracts import PROMPT_KINDS, FusedFeatures, PromptEncoder, VisualPromptBatch
from rsvlm.io.state_dicts import check_state_dict, read_state_dict

SAM_PREFIX = "prompt_encoder."
#: This encoder's parameters that come from SAM's prompt encoder (same names there).
SAM_PARTS = ("pe_layer.", "point_embeddings.", "not_a_point_embed.")
SAM_PE_DIM = 256
SAM_README = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
# SAM's point_embeddings: 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right.
NEGATIVE, POSITIVE, TOP_LEFT, BOTTOM_RIGHT = range(4)


def check_prompt_batch(owner: str, prompts: VisualPromptBatch, max_prompts: int) -> None:
    """Raise a one-line ValueError naming ``owner`` and the field unless ``prompts`` has the shapes
    of :class:`VisualPromptBatch` with at most ``max_prompts`` slots."""
    if prompts.kind.ndim != 2:
        raise ValueError(f"{owner}: prompts.kind must be B×M, got shape {tuple(prompts.kind.shape)}")
    b, m = prompts.kind.shape
    if m > max_prompts:
        raise ValueError(f"{owner}: prompts.kind has {m} slots, more than max_prompts={max_prompts}")
    expected = {"npoints": (b, m), "boxes": (b, m, 4), "labels": (b, m)}
    for field, shape in expected.items():
        got = tuple(getattr(prompts, field).shape)
        if got != shape:
            raise ValueError(f"{owner}: prompts.{field} must have shape {shape}, got {got}")
    points = tuple(prompts.points.shape)
    if len(points) != 4 or points[:2] != (b, m) or points[2] < 1 or points[3] != 2:
        raise ValueError(f"{owner}: prompts.points must be {b}×{m}×P×2 with P >= 1, got shape {points}")
    if prompts.masks is not None and tuple(prompts.masks.shape) != (b, m, *prompts.image_size):
        raise ValueError(
            f"{owner}: prompts.masks must be {b}×{m}×H×W with (H, W) = image_size {tuple(prompts.image_size)}, "
            f"got shape {tuple(prompts.masks.shape)}"
        )
    if m and (prompts.kind.min() < 0 or prompts.kind.max() >= len(PROMPT_KINDS)):
        raise ValueError(f"{owner}: prompts.kind holds values outside PROMPT_KINDS {PROMPT_KINDS}")


def pad_slots(prompts: VisualPromptBatch, slots: int) -> VisualPromptBatch:
    """``prompts`` with empty slots appended up to ``slots`` (kind 0, zero coordinates)."""
    extra = slots - prompts.slots
    if extra <= 0:
        return prompts
    masks = None if prompts.masks is None else F.pad(prompts.masks, (0, 0, 0, 0, 0, extra))
    return replace(
        prompts,
        kind=F.pad(prompts.kind, (0, extra)),
        points=F.pad(prompts.points, (0, 0, 0, 0, 0, extra)),
        npoints=F.pad(prompts.npoints, (0, extra)),
        boxes=F.pad(prompts.boxes, (0, 0, 0, extra)),
        labels=F.pad(prompts.labels, (0, extra)),
        masks=masks,
    )


class SparsePromptEncoder(PromptEncoder):
    """Visual prompts → ``B×(max_prompts+2)×out_dim`` tokens (start, one per slot, end).

    Args:
        out_dim: D, the LLM width.
        max_prompts: M, slots per sample; fewer are padded with empty slots, more are an error.
        pe_dim: E, SAM's prompt width (256 for SAM weights); point tokens are lifted to 2·E.
        placeholder: the token, once per sample, that the tokens replace.
        sam_checkpoint: an official SAM checkpoint whose ``prompt_encoder.*`` Fourier matrix and
            point / corner / not-a-point embeddings are loaded (the rest of the file is ignored).
        freeze_pe: freeze those SAM parts. The Fourier matrix is a buffer, as in SAM, and never
            trains; the embeddings train when ``freeze_pe`` is False.
        skip_unprompted: give a sample without a valid slot no tokens (``forward`` then returns one
            ``(max_prompts+2)×D`` or ``0×D`` tensor per sample): for data whose unprompted samples'
            text holds no ``placeholder``, e.g. EarthGPT-X's records with ``placeholder="<Region 1>"``,
            where grounding names its object in words. False: every sample gets its tokens (SPHINX-V).
    """

    mode: ClassVar[Literal["tokens", "inline"]] = "tokens"

    def __init__(
        self,
        out_dim: int,
        max_prompts: int = 10,
        pe_dim: int = SAM_PE_DIM,
        placeholder: str = "<visual_prompts>",
        sam_checkpoint: str | None = None,
        freeze_pe: bool = True,
        skip_unprompted: bool = False,
    ) -> None:
        super().__init__()
        if pe_dim < 2 or pe_dim % 2:
            raise ValueError(f"SparsePromptEncoder: pe_dim must be even and >= 2 (sin and cos halves), got {pe_dim}")
        if max_prompts < 1:
            raise ValueError(f"SparsePromptEncoder: max_prompts must be >= 1, got {max_prompts}")
        self.out_dim = out_dim
        self.max_prompts = max_prompts
        self.pe_dim = pe_dim
        self.placeholder = placeholder
        self.skip_unprompted = skip_unprompted

        # Named as in segment_anything's PromptEncoder so that its state-dict keys load as they are.
        self.pe_layer = PositionEmbeddingRandom(pe_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, pe_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, pe_dim)

        self.up = nn.Linear(pe_dim, 2 * pe_dim)
        # Zero so that a SAM-initialised encoder starts with SPHINX-V's padding token.
        self.empty_embed = nn.Parameter(torch.zeros(2 * pe_dim))
        self.start_end = nn.Parameter(torch.empty(2, 2 * pe_dim))
        nn.init.normal_(self.start_end, std=0.02)
        self.proj = nn.Linear(2 * pe_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

        if sam_checkpoint is not None:
            self.load_sam_checkpoint(sam_checkpoint)
        if freeze_pe:
            for part in (self.pe_layer, self.point_embeddings, self.not_a_point_embed):
                part.requires_grad_(False)

    def load_sam_checkpoint(self, path: str | Path) -> None:
        """Load SAM's ``prompt_encoder.{pe_layer, point_embeddings, not_a_point_embed}.*``, strictly.

        Raises:
            FileNotFoundError: the file is missing (the message names it and what to download).
            StateDictError: those keys are missing or their shapes differ (``pe_dim`` ≠ 256).
        """
        path = Path(path)
        state = read_state_dict(
            path,
            "SparsePromptEncoder.sam_checkpoint",
            missing_hint=f"Download a SAM checkpoint (e.g. sam_vit_h_4b8939.pth, as SPHINX-V uses) from {SAM_README} "
            f"or set sam_checkpoint to where the file is.",
        )
        ours = {k: v for k, v in self.state_dict().items() if k.startswith(SAM_PARTS)}
        expected = {SAM_PREFIX + k: v for k, v in ours.items()}
        # the image encoder, mask decoder and mask-prompt weights are in the file too and are not used here
        given = {k: v for k, v in state.items() if k in expected}
        check_state_dict(
            expected,
            given,
            f"SparsePromptEncoder.sam_checkpoint: {path} does not fit (pe_dim={self.pe_dim}; SAM uses {SAM_PE_DIM}):",
            module_name="encoder",
        )
        self.load_state_dict({k.removeprefix(SAM_PREFIX): v for k, v in given.items()}, strict=False)
        for part in (self.pe_layer, self.point_embeddings, self.not_a_point_embed):
            part.weights_source = str(path)  # trained-only checkpoints leave what this file restores out

    def positional_encoding(self, xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """SAM's Fourier encoding ``...×E`` (float32) of continuous pixel coordinates ``...×2`` (x, y)."""
        height, width = image_size
        u = xy.float() / xy.new_tensor([width, height], dtype=torch.float32)
        matrix = self.pe_layer.positional_encoding_gaussian_matrix.float()
        # SAM's PositionEmbeddingRandom._pe_encoding, operation for operation (so equal to it bit for
        # bit in fp32), on a float32 copy of the matrix: half-precision angles would lose the position.
        z = 2 * u - 1
        z = z @ matrix
        z = 2 * np.pi * z
        return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)

    def embed_points(self, prompts: VisualPromptBatch) -> torch.Tensor:
        """``B×M×E``: PE of each slot's first vertex + SAM's positive / negative point embedding
        (SAM's ``_embed_points`` before the padding point)."""
        pe = self.positional_encoding(prompts.points[:, :, 0], prompts.image_size)
        weight = self.point_embeddings[POSITIVE].weight
        positive = (prompts.labels == 1)[..., None]
        label_embed = torch.where(positive, weight[0], self.point_embeddings[NEGATIVE].weight[0])
        return pe.to(weight.dtype) + label_embed

    def embed_boxes(self, prompts: VisualPromptBatch) -> torch.Tensor:
        """``B×M×2×E``: PE of each slot's box corners (x0, y0), (x1, y1) + SAM's corner embeddings."""
        corners = rearrange(prompts.boxes, "b m (c xy) -> b m c xy", c=2, xy=2)
        pe = self.positional_encoding(corners, prompts.image_size)
        corner_embed = torch.cat([self.point_embeddings[TOP_LEFT].weight, self.point_embeddings[BOTTOM_RIGHT].weight])
        return pe.to(corner_embed.dtype) + corner_embed

    def slot_embeddings(self, prompts: VisualPromptBatch) -> torch.Tensor:
        """``B×M×2E``: one token per slot before the projection (point, box-like or empty)."""
        point = self.up(self.embed_points(prompts))
        box = rearrange(self.embed_boxes(prompts), "b m c e -> b m (c e)")
        empty = self.up(self.not_a_point_embed.weight[0]) + self.empty_embed
        kind = prompts.kind[..., None]
        tokens = torch.where(kind == PROMPT_KINDS["point"], point, box)
        return torch.where(kind == PROMPT_KINDS["empty"], empty.to(tokens.dtype), tokens)

    def forward(
        self, prompts: VisualPromptBatch, visual: FusedFeatures | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """``B×(max_prompts+2)×D``: start, the slots' tokens in slot order, end (``visual`` is unused);
        with ``skip_unprompted`` a list of B such tensors, ``0×D`` for a sample without a valid slot."""
        check_prompt_batch("SparsePromptEncoder", prompts, self.max_prompts)
        slots = self.slot_embeddings(pad_slots(prompts, self.max_prompts))
        start, end = repeat(self.start_end.to(slots.dtype), "t e -> t b 1 e", b=slots.shape[0])
        tokens = self.norm(self.proj(torch.cat([start, slots, end], dim=1)))
        if not self.skip_unprompted:
            return tokens
        prompted = prompts.valid.any(dim=1).tolist()  # False for every sample of a batch without slots
        return [sample if keep else sample[:0] for sample, keep in zip(tokens, prompted, strict=True)]

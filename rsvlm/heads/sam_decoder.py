"""A SAM mask decoder head driven by a fused feature map and LLM-derived prompt tokens.

The pieces are ``segment_anything``'s own ``MaskDecoder``, ``PromptEncoder``,
``TwoWayTransformer`` and ``LayerNorm2d``; this module only adds a SAM-style neck (to bring
the fused map to the decoder width) and a batched ``predict_masks`` (SAM's own one assumes a
single image per call). The weights of the decoder and prompt encoder can be loaded from an
official SAM checkpoint (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
``sam_vit_h_4b8939.pth``).

Shapes: B batch, D_in fused-map width, D decoder (prompt) width, h×w map size, H×W image
size, K prompt tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from segment_anything.modeling import MaskDecoder as SamMaskDecoder
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.func import functional_call

from rsvlm.contracts import MaskDecoder, VisualPromptBatch
from rsvlm.io.state_dicts import check_state_dict, read_state_dict
from rsvlm.prompts.sam import drawn_prompt_masks, mask_logits, sam_prompt_input

# The geometry every official SAM checkpoint was trained with (segment_anything.build_sam).
SAM_PROMPT_DIM = 256
SAM_DECODER_DEPTH = 2
SAM_DECODER_MLP_DIM = 2048
SAM_DECODER_HEADS = 8
SAM_EMBEDDING_SIZE = 64
SAM_IMAGE_SIZE = 1024
SAM_MASK_IN_CHANS = 16
SAM_CHECKPOINTS = ("sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth")
SAM_README = "https://github.com/facebookresearch/segment-anything#model-checkpoints"


class SamMaskDecoderHead(MaskDecoder):
    """Fused map ``B×D_in×h×w`` + prompt tokens ``B×K×D`` → mask logits ``B×1×H×W``.

    The map passes a SAM-style neck (1×1 conv → LayerNorm2d → 3×3 conv → LayerNorm2d) to the
    image embedding ``B×D×h×w``. The decoder then sees, per image, that embedding, the dense
    positional encoding of an h×w grid (the prompt encoder's random-Fourier ``pe_layer``, so any
    map size works, not only SAM's 64×64), the prompt encoder's no-mask dense embedding and the
    prompt tokens as sparse prompts. Its low-resolution logits (``4h×4w``) are bilinearly
    upsampled to the image size.

    Args:
        in_channels: D_in, width of the fused map.
        prompt_dim: D, the decoder width and the prompt-token width (256 for SAM weights).
        checkpoint: path to an official SAM checkpoint; its ``mask_decoder.*`` and
            ``prompt_encoder.*`` weights are loaded (the image encoder's are ignored).
        decoder_depth: two-way transformer depth (SAM: 2).
        decoder_mlp_dim: two-way transformer MLP width (SAM: 2048).
        decoder_heads: attention heads (SAM: 8).
        multimask_output: use SAM's three multimask outputs and keep, per image, the one with
            the highest predicted IoU; otherwise SAM's single-mask output (token 0) is used.
        freeze_prompt_encoder: freeze the prompt encoder. Only its ``no_mask_embed`` and
            positional encoding are used; its point/box/mask parts never receive gradients.
        use_visual_prompts: also give the user's visual prompts (a
            :class:`~rsvlm.contracts.VisualPromptBatch`) to SAM's prompt encoder, as LISA-style
            pixel grounding with a drawn prompt does: their sparse embeddings follow the bridge's
            tokens, and a free-form mask becomes the dense prompt (see :mod:`rsvlm.prompts.sam`).
        prompts_as_mask: with ``use_visual_prompts``, a sample without a free-form mask prompt gets
            its drawn prompts (:func:`rsvlm.prompts.sam.drawn_prompt_masks`: the box filled, the
            point's disc, the stroke) as SAM's mask input, so the decoder sees where the prompt lies
            on its own map instead of learning it from the corner encodings alone (a decoder trained
            from scratch on the EarthGPT-X demo left its box-prompted masks below the box itself).

    Under DDP, note that the IoU head (and, without multimask output, the three multimask
    hypernetwork MLPs) take no part in the mask loss, as in SAM-based training code.
    """

    def __init__(
        self,
        in_channels: int = 1024,
        prompt_dim: int = SAM_PROMPT_DIM,
        checkpoint: str | None = None,
        decoder_depth: int = SAM_DECODER_DEPTH,
        decoder_mlp_dim: int = SAM_DECODER_MLP_DIM,
        decoder_heads: int = SAM_DECODER_HEADS,
        multimask_output: bool = False,
        freeze_prompt_encoder: bool = True,
        use_visual_prompts: bool = False,
        prompts_as_mask: bool = False,
    ) -> None:
        super().__init__()
        if prompt_dim % 8 or (prompt_dim // 2) % decoder_heads:
            # SAM's upscaling divides the width by 8 and its cross-attention halves it per head.
            raise ValueError(
                f"SamMaskDecoderHead: prompt_dim={prompt_dim} must be a multiple of 8 and "
                f"prompt_dim/2 a multiple of decoder_heads={decoder_heads}"
            )
        self.in_channels = in_channels
        self.prompt_dim = prompt_dim
        self.multimask_output = multimask_output
        self.use_visual_prompts = use_visual_prompts
        self.prompts_as_mask = prompts_as_mask

        self.neck = nn.Sequential(
            nn.Conv2d(in_channels, prompt_dim, kernel_size=1, bias=False),
            LayerNorm2d(prompt_dim),
            nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(prompt_dim),
        )
        # Built exactly as segment_anything.build_sam._build_sam does, so its keys and shapes match.
        self.prompt_encoder = PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(SAM_EMBEDDING_SIZE, SAM_EMBEDDING_SIZE),
            input_image_size=(SAM_IMAGE_SIZE, SAM_IMAGE_SIZE),
            mask_in_chans=SAM_MASK_IN_CHANS,
        )
        self.mask_decoder = SamMaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_heads,
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        if checkpoint is not None:
            if decoder_heads != SAM_DECODER_HEADS:
                # Head count leaves weight shapes unchanged, so the key check below cannot catch it.
                warnings.warn(
                    f"SamMaskDecoderHead: decoder_heads={decoder_heads}, but SAM checkpoints were "
                    f"trained with {SAM_DECODER_HEADS} heads; loading {checkpoint} anyway",
                    stacklevel=2,
                )
            self.load_sam_checkpoint(checkpoint)
        if freeze_prompt_encoder:
            self.prompt_encoder.requires_grad_(False)
        if not multimask_output:
            # With one mask no loss sees the IoU prediction; a trainable head without gradients
            # would break DDP (unused parameters) and only carry optimiser state.
            self.mask_decoder.iou_prediction_head.requires_grad_(False)

    def load_sam_checkpoint(self, path: str | Path) -> None:
        """Load ``mask_decoder.*`` and ``prompt_encoder.*`` from a SAM checkpoint, strictly.

        Raises:
            FileNotFoundError: the file is missing (the message says what to download).
            ValueError: keys or shapes differ from this head's decoder / prompt encoder.
        """
        path = Path(path)
        state = read_state_dict(
            path,
            "SamMaskDecoderHead.checkpoint",
            missing_hint=f"Download one of {', '.join(SAM_CHECKPOINTS)} (the decoder weights are the same kind "
            f"in all three; use the one your recipe names) from the model-checkpoint links in the "
            f"segment-anything README ({SAM_README}) and put it at {path.resolve()}, or set the head's "
            f"`checkpoint` argument to where the file is.",
        )
        parts = {"mask_decoder.": self.mask_decoder, "prompt_encoder.": self.prompt_encoder}
        expected = {prefix + k: v for prefix, module in parts.items() for k, v in module.state_dict().items()}
        # the image encoder's weights are in the file too and are not this head's business
        given = {k: v for k, v in state.items() if k.startswith(tuple(parts))}
        check_state_dict(
            expected,
            given,
            f"SamMaskDecoderHead.checkpoint: {path} does not fit this head (prompt_dim={self.prompt_dim}; SAM "
            f"uses prompt_dim={SAM_PROMPT_DIM}, decoder_depth={SAM_DECODER_DEPTH}, "
            f"decoder_mlp_dim={SAM_DECODER_MLP_DIM}, decoder_heads={SAM_DECODER_HEADS}):",
            module_name="head",
        )
        for prefix, module in parts.items():
            module.load_state_dict({k[len(prefix) :]: v for k, v in given.items() if k.startswith(prefix)})
            module.weights_source = str(path)  # trained-only checkpoints leave what this file restores out

    def dense_positional_encoding(self, size: tuple[int, int]) -> torch.Tensor:
        """Positional encoding ``1×D×h×w`` (float32) of an h×w grid (SAM's ``get_dense_pe`` at 64×64)."""
        pe_layer = self.prompt_encoder.pe_layer
        matrix = pe_layer.positional_encoding_gaussian_matrix
        # SAM builds its grid in float32; under half-precision weights ("16-true"/"bf16-true")
        # the buffer is half, so run SAM's own layer with a float32 copy of it.
        pe = functional_call(pe_layer, {"positional_encoding_gaussian_matrix": matrix.float()}, (tuple(size),))
        return pe.unsqueeze(0)

    def no_mask_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """SAM's dense embedding for "no mask prompt", broadcast to ``1×D×h×w``."""
        h, w = size
        return repeat(self.prompt_encoder.no_mask_embed.weight, "1 d -> 1 d h w", h=h, w=w)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched version of SAM's ``MaskDecoder.predict_masks``: image i with prompts i.

        Args:
            image_embeddings: ``B×D×h×w``.
            image_pe: ``1×D×h×w`` or ``B×D×h×w``.
            sparse_prompt_embeddings: ``B×K×D``.
            dense_prompt_embeddings: ``1×D×h×w`` or ``B×D×h×w``.

        Returns:
            All mask logits ``B×4×4h×4w`` (SAM's single-mask output first, then the three
            multimask outputs) and the IoU predictions ``B×4``.
        """
        dec = self.mask_decoder
        b, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = repeat(output_tokens, "t d -> b t d", b=b)
        tokens = torch.cat((output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings), dim=1)

        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.to(src.dtype).expand(b, -1, -1, -1)
        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]

        src = rearrange(src, "b (h w) c -> b c h w", h=h, w=w)
        upscaled = dec.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        masks = torch.einsum("bmc,bchw->bmhw", hyper_in, upscaled)
        iou_pred = dec.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def _select(self, masks: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
        """``B×4×h×w`` → ``B×1×h×w``: SAM's mask slice, then the best-IoU mask of the multimask set."""
        if not self.multimask_output:
            return masks[:, 0:1]
        masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        best = iou_pred.argmax(dim=1)
        return masks[torch.arange(masks.shape[0], device=masks.device), best].unsqueeze(1)

    def visual_prompt_embeddings(
        self, visual_prompts: VisualPromptBatch, size: tuple[int, int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """SAM's embeddings of each sample's visual prompts on an h×w map.

        Returns:
            Per sample, sparse embeddings ``1×K_i×D`` (points, then boxes, as SAM's
            ``PromptEncoder.forward``; with points and no box SAM's padding point is added), and
            dense embeddings ``B×D×h×w`` (the free-form mask's, else SAM's no-mask embedding).
        """
        encoder = self.prompt_encoder
        dtype = encoder.point_embeddings[0].weight.dtype
        device = encoder.point_embeddings[0].weight.device
        h, w = size
        sparse: list[torch.Tensor] = []
        dense: list[torch.Tensor] = []
        drawn = drawn_prompt_masks(visual_prompts) if self.prompts_as_mask else None
        for index in range(visual_prompts.batch_size):
            given = sam_prompt_input(visual_prompts, index)
            if drawn is not None and given.mask is None and bool(drawn[index].any()):
                given.mask = mask_logits(drawn[index])
            parts = [torch.zeros(1, 0, self.prompt_dim, dtype=dtype, device=device)]
            if given.coords is not None:
                coords, labels = given.coords.to(device, dtype), given.labels.to(device)
                parts.append(encoder._embed_points(coords, labels, pad=given.boxes is None))
            if given.boxes is not None:
                # SAM embeds a batch of boxes one per image; these all prompt this one image
                corners = encoder._embed_boxes(given.boxes.to(device, dtype))
                parts.append(rearrange(corners, "n c d -> 1 (n c) d"))
            sparse.append(torch.cat(parts, dim=1))
            if given.mask is None:
                dense.append(self.no_mask_embedding(size))
            else:
                # SAM's mask input is 4× the embedding size (256² for its 64² map)
                logits = F.interpolate(given.mask.to(device, dtype), size=(4 * h, 4 * w), mode="bilinear")
                dense.append(encoder._embed_masks(logits))
        return sparse, torch.cat(dense, dim=0)

    def low_res_logits(
        self,
        feature_map: torch.Tensor,
        prompts: torch.Tensor | Sequence[torch.Tensor],
        visual_prompts: VisualPromptBatch | None = None,
    ) -> torch.Tensor:
        """Mask logits ``B×1×4h×4w`` before upsampling to the image size.

        Args:
            feature_map: ``B×D_in×h×w``.
            prompts: ``B×K×D``, or a list of B tensors ``K_i×D`` (each image its own count).
            visual_prompts: the user's prompts, given to SAM's prompt encoder when the head was
                built with ``use_visual_prompts`` (ignored otherwise).
        """
        if feature_map.ndim != 4 or feature_map.shape[1] != self.in_channels:
            raise ValueError(
                f"SamMaskDecoderHead: feature_map must be B×{self.in_channels}×h×w, got {tuple(feature_map.shape)}"
            )
        b, _, h, w = feature_map.shape
        embedding = self.neck(feature_map)
        pe = self.dense_positional_encoding((h, w))
        dense = self.no_mask_embedding((h, w)).to(embedding.dtype)

        if isinstance(prompts, torch.Tensor) and (visual_prompts is None or not self.use_visual_prompts):
            self._check_prompts(prompts, b)
            masks, iou = self.predict_masks(embedding, pe, prompts, dense)
            return self._select(masks, iou)
        if len(prompts) != b:
            raise ValueError(f"SamMaskDecoderHead: got {len(prompts)} prompt tensors for {b} images")
        per_image = [p.unsqueeze(0) if p.ndim == 2 else p for p in prompts]
        dense = dense.expand(b, -1, -1, -1)
        if visual_prompts is not None and self.use_visual_prompts:
            if visual_prompts.batch_size != b:
                raise ValueError(
                    f"SamMaskDecoderHead: got visual prompts for {visual_prompts.batch_size} of {b} images"
                )
            sparse, dense = self.visual_prompt_embeddings(visual_prompts, (h, w))
            per_image = [torch.cat([p, s.to(p.dtype)], dim=1) for p, s in zip(per_image, sparse, strict=True)]
        # Different prompt counts cannot share one transformer call; images are few, so loop.
        out = []
        for i, p in enumerate(per_image):
            self._check_prompts(p, 1)
            masks, iou = self.predict_masks(embedding[i : i + 1], pe, p, dense[i : i + 1].to(embedding.dtype))
            out.append(self._select(masks, iou))
        return torch.cat(out, dim=0)

    def _check_prompts(self, prompts: torch.Tensor, batch: int) -> None:
        if prompts.ndim != 3 or prompts.shape[0] != batch or prompts.shape[2] != self.prompt_dim:
            raise ValueError(
                f"SamMaskDecoderHead: prompts must be {batch}×K×{self.prompt_dim} "
                f"(prompt_dim={self.prompt_dim}), got {tuple(prompts.shape)}"
            )

    def forward(
        self,
        feature_map: torch.Tensor,
        prompts: torch.Tensor | Sequence[torch.Tensor],
        image_size: tuple[int, int],
        visual_prompts: VisualPromptBatch | None = None,
    ) -> torch.Tensor:
        """Mask logits ``B×1×H×W`` for ``image_size=(H, W)``.

        Args:
            feature_map: ``B×D_in×h×w`` fused map.
            prompts: ``B×K×D`` prompt tokens, or a list of B tensors ``K_i×D``.
            image_size: ``(H, W)`` of the input image.
            visual_prompts: the user's prompts in the image's pixels (used with ``use_visual_prompts``).
        """
        low = self.low_res_logits(feature_map, prompts, visual_prompts)
        return F.interpolate(low, size=tuple(image_size), mode="bilinear", align_corners=False)

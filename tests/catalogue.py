"""Every public component of rsvlm at its tiny size: name → zero-argument builder.

``tests/test_contracts.py`` builds each entry (on CPU and on the meta device), runs forward and
backward on a tiny input chosen by its kind, checks the widths it declares against the tensors
it returns, and fails when a public ``nn.Module`` of a component package has no entry here.

A name is the class name, or ``Class[variant]`` when one class has several forms. Builders are
``functools.partial(Class, ...)`` where possible, so the class is known without building.
The tiny pyramid is ``PYRAMID_CHANNELS`` at strides 4, 8, 16, 32: fusions and heads take it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from conftest import tiny_sam2_config
from torch import nn

from rsvlm.bridges.seg_codebook import SegCodebookBridge
from rsvlm.bridges.seg_token import SegTokenBridge
from rsvlm.bridges.tcp import TokenCompressionProjector
from rsvlm.crops.magcrop import MagCrop
from rsvlm.encoders.clip_pyramid import ClipPyramidEncoder
from rsvlm.encoders.clip_tokens import ClipTokenEncoder
from rsvlm.encoders.internimage import InternImageEncoder
from rsvlm.encoders.mixed import MixedExpertEncoder
from rsvlm.encoders.modality_stem import MultiSourceStem, StemSpec
from rsvlm.encoders.multisource import MultiSourceEncoder
from rsvlm.encoders.sam2_hiera import Sam2HieraEncoder
from rsvlm.encoders.sam_vit import SamViTEncoder
from rsvlm.encoders.timm_encoder import TimmEncoder
from rsvlm.encoders.timm_vit import TimmViTEncoder
from rsvlm.fusion.hybrid_prompt import HybridPromptFusion
from rsvlm.fusion.msam import MSAM
from rsvlm.fusion.projector import MLPProjector
from rsvlm.fusion.single_scale import SingleScaleFusion
from rsvlm.fusion.token_fusion import TokenFusion
from rsvlm.fusion.upernet import UperNetFusion
from rsvlm.fusion.views import ViewTiler
from rsvlm.heads.granularity import TaskGranularityClassifier
from rsvlm.heads.index_prior import IndexPriorHead
from rsvlm.heads.sam2_pixel_decoder import Sam2PixelDecoder
from rsvlm.heads.sam_decoder import SamMaskDecoderHead
from rsvlm.heads.upernet import UperNetSegHead
from rsvlm.prompts.region_pool import RegionPoolPromptEncoder
from rsvlm.prompts.sparse import SparsePromptEncoder
from rsvlm.prompts.spatial import SpatialAwarePromptEncoder

BANDS = 4
PYRAMID_CHANNELS = [16, 32, 64, 128]
PYRAMID_REDUCTIONS = [4, 8, 16, 32]
FUSED = 24  # fusion output width = projector input width = decoder input width
LLM_WIDTH = 32  # TINY_LLM_CONFIG's hidden_size = projector output = bridge input
PROMPT = 32  # decoder prompt width = bridge output

TINY_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8
)

#: A tiny SAM 2 for a 64² input, FPN width PROMPT.
TINY_SAM2 = tiny_sam2_config(image_size=64, width=PROMPT)
TINY_BERT = {
    "vocab_size": 1500,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def tiny_granularity_classifier() -> nn.Module:
    """The task-granularity classifier on a tiny random BERT, read through the offline demo tokenizer."""
    from rsvlm.data.spie.corpus import SpieDemoTokenizer

    return TaskGranularityClassifier(text_encoder=TINY_BERT, tokenizer=SpieDemoTokenizer())


def tiny_llm() -> nn.Module:
    """The tiny causal LM of the SPEX tests (``TINY_LLM_CONFIG``, the offline demo tokenizer)."""
    from conftest import TINY_LLM_CONFIG

    from rsvlm.data.spie.corpus import SpieDemoTokenizer
    from rsvlm.llm.causal_lm import CausalLM

    return CausalLM(config=TINY_LLM_CONFIG, tokenizer=SpieDemoTokenizer(), freeze=False)


#: A tiny DINOv2-style ViT (patch 14, one block, 32 wide), built for 56² inputs.
TINY_DINOV2 = dict(model_name="vit_small_patch14_dinov2", img_size=56, depth=1, embed_dim=32, num_heads=2)


def tiny_mixed_experts() -> nn.Module:
    """ConvNeXt's stride-32 map ‖ a ViT's patch grid on the view resized to 56², both at a 4×4 grid."""
    experts = [TimmEncoder("convnext_atto", in_bands=BANDS), TimmViTEncoder(**TINY_DINOV2, in_bands=BANDS)]
    return MixedExpertEncoder(experts, levels=[-1, 0], grid=4, image_size=64, expert_sizes=[None, 56])


def tiny_multisource() -> nn.Module:
    """Optical (BANDS bands, trainable 1×1 conv from B4-B3-B2) and SAR stems in front of a 3-band ConvNeXt."""
    stem = MultiSourceStem(
        {"optical": StemSpec(["b", "g", "r", "n"], "conv1x1", [2, 1, 0]), "sar": StemSpec(["vv", "vh"])}
    )
    return MultiSourceEncoder(stem, TimmEncoder("convnext_atto", in_bands=3))


CATALOGUE: dict[str, Callable[[], nn.Module]] = {
    # ------------------------------------------------ encoders: image B×BANDS×H×W → pyramid
    "TimmEncoder": partial(TimmEncoder, model_name="resnet18", in_bands=BANDS),
    "InternImageEncoder": partial(InternImageEncoder, variant="tiny-test", in_bands=BANDS, rgb_bands=[2, 1, 0]),
    "ClipPyramidEncoder": partial(ClipPyramidEncoder, config=TINY_CLIP, in_bands=BANDS, out_channels=16),
    "Sam2HieraEncoder": partial(Sam2HieraEncoder, config=TINY_SAM2, image_size=64, in_bands=BANDS, rgb_bands=[2, 1, 0]),
    "ClipTokenEncoder": partial(
        ClipTokenEncoder, config={**TINY_CLIP, "image_size": 64}, image_size=64, in_bands=BANDS, rgb_bands=[2, 1, 0]
    ),
    "TimmViTEncoder": partial(
        TimmViTEncoder,
        model_name="vit_small_patch14_dinov2",
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        in_bands=BANDS,
        out_indices=[0, -1],
    ),
    "MixedExpertEncoder": tiny_mixed_experts,
    # a stem: image B×BANDS×H×W + modality B (+ band_valid) → B×3×H×W (tests/test_contracts.py run_stem)
    "MultiSourceStem[replicate]": partial(
        MultiSourceStem,
        modalities={"optical": StemSpec(["b", "g", "r", "n"], "select", [2, 1, 0]), "sar": StemSpec(["vv", "vh"])},
    ),
    "MultiSourceStem[conv1x1]": partial(
        MultiSourceStem,
        modalities={
            "optical": StemSpec(["b", "g", "r", "n"], "conv1x1", [2, 1, 0]),
            "sar": StemSpec(["vv"], "conv1x1"),
        },
    ),
    "MultiSourceEncoder": tiny_multisource,  # read as all-optical here (no batch); views: tests/encoders
    # a mask encoder: image B×BANDS×H×W → one map B×out_channels×H/reduction² (test_contracts run_mask_encoder)
    "SamViTEncoder": partial(
        SamViTEncoder,
        variant="vit_b",
        image_size=64,
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=[1],
        in_bands=BANDS,
        rgb_bands=[2, 1, 0],
    ),
    # new encoders go here
    # ------------------------------------------------ fusion: PYRAMID_CHANNELS maps → FusedFeatures
    "MSAM[paper]": partial(MSAM, in_channels=PYRAMID_CHANNELS, out_channels=FUSED, form="paper"),
    "MSAM[released]": partial(MSAM, in_channels=PYRAMID_CHANNELS, out_channels=FUSED, form="released", num_groups=4),
    "UperNetFusion": partial(
        UperNetFusion, in_channels=PYRAMID_CHANNELS, hidden_size=16, pool_scales=[1, 2], out_channels=FUSED
    ),
    "SingleScaleFusion": partial(SingleScaleFusion, in_channels=PYRAMID_CHANNELS, out_channels=FUSED, token_pool=2),
    "TokenFusion": partial(TokenFusion, in_channels=PYRAMID_CHANNELS, level=0, in_reduction=4),
    "ViewTiler": partial(ViewTiler, layout="1+2x2", view_size=32, view_tags=True, dim=8),
    # prompt fusion: image tokens + dense prompt tokens B×N×dim → B×N×dim (test_contracts run_prompt_fusion)
    "HybridPromptFusion": partial(HybridPromptFusion, dim=FUSED, heads=2, mlp_ratio=2.0, depth=2),
    # new fusion modules go here
    # ------------------------------------------------ projector: visual tokens → LLM width
    "MLPProjector": partial(MLPProjector, in_dim=FUSED, out_dim=LLM_WIDTH),
    # ------------------------------------------------ LLM: ids (+ visual tokens) → hidden states
    "CausalLM": tiny_llm,
    # ------------------------------------------------ bridges: hidden states + positions → prompts
    "TokenCompressionProjector": partial(TokenCompressionProjector, in_dim=LLM_WIDTH, out_dim=PROMPT, num_tokens=2),
    "SegTokenBridge": partial(SegTokenBridge, in_dim=LLM_WIDTH, out_dim=PROMPT, num_tokens=2),
    "SegCodebookBridge": partial(SegCodebookBridge, in_dim=LLM_WIDTH, out_dim=PROMPT, num_tokens=2),
    # new bridges go here
    # ------------------------------------------------ heads: map + prompts → masks; pyramid → classes
    "SamMaskDecoderHead": partial(
        SamMaskDecoderHead, in_channels=FUSED, prompt_dim=PROMPT, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2
    ),
    # the SAM head's logits + w · (2 m − 1) of the batch image's coarse-mask channel (band 3 here)
    "IndexPriorHead": lambda: IndexPriorHead(
        SamMaskDecoderHead(in_channels=FUSED, prompt_dim=PROMPT, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2),
        channels={"water": BANDS - 1},
    ),
    "UperNetSegHead": partial(
        UperNetSegHead, in_channels=PYRAMID_CHANNELS, num_classes=3, hidden_size=16, pool_scales=[1, 2]
    ),
    "Sam2PixelDecoder": partial(Sam2PixelDecoder, config=TINY_SAM2),
    "TaskGranularityClassifier": tiny_granularity_classifier,
    # ------------------------------------------------ visual-prompt encoders: prompts (+ FusedFeatures) → LLM width
    "SparsePromptEncoder": partial(SparsePromptEncoder, out_dim=LLM_WIDTH, max_prompts=4, pe_dim=32),
    "RegionPoolPromptEncoder[roi_align]": partial(
        RegionPoolPromptEncoder, in_channels=FUSED, out_dim=LLM_WIDTH, pool="roi_align", output_size=2, max_prompts=4
    ),
    "RegionPoolPromptEncoder[mask]": partial(
        RegionPoolPromptEncoder, in_channels=FUSED, out_dim=LLM_WIDTH, pool="mask", max_prompts=4
    ),
    "SpatialAwarePromptEncoder": partial(
        SpatialAwarePromptEncoder,
        out_dim=FUSED,
        max_prompts=4,
        canvas_size=28,
        patch_size=14,
        width=16,
        depth=1,
        heads=2,
    ),
    # ------------------------------------------------ croppers: (image B×BANDS×H×W, batch) → image, same geometry
    # boxes given by the batch (test_contracts run_cropper): online boxes need a whole VLM (tests/crops/test_magcrop.py)
    "MagCrop": partial(MagCrop, boxes="given", image_level_size=16),
    # new heads, visual-prompt encoders and croppers go here
}

#: Public ``nn.Module`` classes of the component packages that are building blocks of a
#: component, not components a recipe names (each with the reason).
INTERNAL_BLOCKS = {
    "rsvlm.fusion.hybrid_prompt.HybridPromptBlock",  # one layer of HybridPromptFusion
    "rsvlm.encoders.dcnv3.DCNv3",  # InternImage's deformable-conv layer
    "rsvlm.encoders._stem.FreezableEncoder",  # the base class of encoders that freeze their backbone
}


def class_of(name: str) -> str:
    """The class name in a catalogue name (``"MSAM[paper]"`` → ``"MSAM"``)."""
    return name.split("[", 1)[0]

"""Architectures of the pretrained parts recipes name by hub id, so they build on the meta device.

``rsvlm summarize`` builds a recipe without reading or downloading a weight. A component whose
weights come from a hub id (a CLIP tower, SAM 2, BERT) is built there from the architecture the
id stands for, written here as the config fields of the published checkpoint; an LLM is built
from rsvlm's shipped configs (:mod:`rsvlm.llm.configs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_CLIP_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    hidden_act="quick_gelu",
    projection_dim=768,
)

#: Hub id → the constructor ``config`` of the component that loads it.
HUB_ARCHITECTURES: dict[str, dict[str, Any]] = {
    # transformers' CLIPVisionConfig fields
    "openai/clip-vit-large-patch14": {**_CLIP_L14, "image_size": 224},
    "openai/clip-vit-large-patch14-336": {**_CLIP_L14, "image_size": 336},  # LLaVA-1.5's tower
    "openai/clip-vit-base-patch16": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
        hidden_act="quick_gelu",
        projection_dim=512,
    ),
    # transformers' Sam2Config: the image model of SAM 2.1 Hiera-L (sam2.1_hiera_l.yaml's trunk and
    # neck; the video memory modules of the published 224.4 M are not part of it)
    "facebook/sam2.1-hiera-large": {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 144,
                "num_attention_heads": 2,
                "blocks_per_stage": [2, 6, 36, 4],
                "embed_dim_per_stage": [144, 288, 576, 1152],
                "num_attention_heads_per_stage": [2, 4, 8, 16],
                "window_size_per_stage": [8, 4, 16, 8],
                "global_attention_blocks": [23, 33, 43],
                "window_positional_embedding_background_size": [7, 7],
            },
            "backbone_channel_list": [1152, 576, 288, 144],
        }
    },
    # transformers' BertConfig (its defaults are bert-base-uncased)
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
}

#: Component class → the argument naming its pretrained source, and the one taking a config instead.
SOURCE_ARGUMENTS: dict[str, tuple[str, str]] = {
    "ClipPyramidEncoder": ("model", "config"),
    "ClipTokenEncoder": ("model", "config"),
    "Sam2HieraEncoder": ("model", "config"),
    "Sam2PixelDecoder": ("checkpoint", "config"),
    "TaskGranularityClassifier": ("text_encoder", "text_encoder"),
}


def with_architecture(class_name: str, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` (changed in place and returned) building ``class_name`` without weights:
    a hub id of :data:`HUB_ARCHITECTURES` becomes its config; a ``CausalLM`` folder that is not
    here gives way to the ``config`` the recipe names beside it."""
    if class_name == "CausalLM":
        model = init_args.get("model")
        if model and init_args.get("config") and not Path(str(model)).expanduser().is_dir():
            init_args.pop("model")
        return init_args
    if class_name not in SOURCE_ARGUMENTS:
        return init_args
    source, config = SOURCE_ARGUMENTS[class_name]
    if init_args.get(source) in HUB_ARCHITECTURES:
        init_args[config] = dict(HUB_ARCHITECTURES[init_args.pop(source)])
    return init_args

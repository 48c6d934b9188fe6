"""`rsvlm summarize` of the GeoMag and EarthGPT-X paper recipes: the paper-size models on the meta
device, with nothing read or downloaded, and the parameter counts of their published parts."""

from __future__ import annotations

import torch
from conftest import REPO

from rsvlm.experiments.summarize import build_on_meta


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_geomag_builds_on_meta_with_the_published_sizes():
    from transformers import BertConfig, BertModel

    model = build_on_meta(REPO / "recipes" / "geomag.yaml")
    # Vicuna-7B v1.5 (LLaVA-1.5's LM): Llama-2-7B's 6,738,415,616, plus LoRA and at most the new tokens' rows
    llm = count(model.llm)
    lora = 32 * 2 * 8 * (4096 + 4096)  # r 8 on q_proj and v_proj of 32 layers
    assert 6_738_415_616 + lora <= llm <= 6_738_415_616 + lora + 2 * 4 * 4096
    assert sum(p.numel() for p in model.llm.parameters() if p.requires_grad) >= lora
    # SAM 2.1 Hiera-L's image model (no video memory): encoder + prompt encoder + mask decoder
    sam2 = count(model.mask_encoder) + count(model.decoder)
    assert 210e6 < sam2 < 225e6
    # BERT-base (no pooler), written out by transformers' own config defaults, + the 768→256→128→3 head
    with torch.device("meta"):
        bert = count(BertModel(BertConfig(), add_pooling_layer=False))
    head = 768 * 256 + 256 + 256 * 128 + 128 + 128 * 3 + 3
    assert count(model.cropper) == bert + head
    assert not any(p.requires_grad for p in model.cropper.parameters())
    assert count(model.encoder) == 303_507_456  # CLIP ViT-L/14 at 336: 24 layers × 1024 wide, 577 positions
    assert model.bridge.num_tokens == 3 and model.positions.group_size == 3


def test_earthgptx_builds_on_meta_with_the_published_sizes():
    from segment_anything import sam_model_registry

    model = build_on_meta(REPO / "recipes" / "earthgptx.yaml")
    llm = model.llm
    total = count(llm)
    trainable = sum(p.numel() for p in llm.parameters() if p.requires_grad)
    new_rows = 2 * 2 * 5120  # <image> and [SEG]: their input and output rows at most
    assert 13_015_864_320 <= total <= 13_015_864_320 + new_rows
    assert 40 * 4 * 5120 * 5120 <= trainable <= 40 * 4 * 5120 * 5120 + new_rows  # self-attention only
    with torch.device("meta"):
        sam = sam_model_registry["vit_h"]()
    assert count(model.mask_encoder) == count(sam.image_encoder)
    assert not any(p.requires_grad for p in model.mask_encoder.parameters())
    assert model.decoder.use_visual_prompts
    # one prompt token per visual token: the SAE's grid is the experts' 16×16 in each of the 5 views
    assert model.encoder.num_views == 5 and model.prompt_encoder.views.num_views == 5
    assert model.prompt_encoder.num_tokens == 5 * 16 * 16 and model.encoder.channels == [1024 + 1536]
    assert model.encoder.image_size == 448 and model.mask_encoder.out_channels == 256

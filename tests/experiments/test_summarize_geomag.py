"""`rsvlm summarize --config recipes/geomag.yaml`: the paper-size GeoMag on the meta device, with
nothing read or downloaded, and the parameter counts of its published parts."""

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

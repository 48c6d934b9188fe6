"""`rsvlm convert llava` on a tiny random LlavaForConditionalGeneration saved to a folder: the three
component folders reproduce LLaVA's projected image features and language-model logits, and the
tokenizer speaks llava_v1 through rsvlm's chat formatter."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from rsvlm.data.spie.corpus import SpieDemoTokenizer
from rsvlm.encoders.clip_tokens import ClipTokenEncoder
from rsvlm.fusion.projector import MLPProjector
from rsvlm.fusion.token_fusion import TokenFusion
from rsvlm.llm.causal_lm import CausalLM
from rsvlm.llm.llava_convert import LLAVA_SYSTEM, convert_llava


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tokenizer = SpieDemoTokenizer().load()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(config).eval()
    root = tmp_path_factory.mktemp("llava")
    llava.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    out = convert_llava(root / "hf", root / "rsvlm", local_files_only=True)
    return llava, out


def test_vision_side_reproduces_llavas_projected_image_features(converted):
    llava, out = converted
    encoder = ClipTokenEncoder(model=str(out / "vision"), image_size=56)
    projector = MLPProjector(in_dim=32, out_dim=48, checkpoint=str(out / "projector.safetensors"))
    image = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        ours = projector(TokenFusion(in_channels=[32])(encoder(image)).tokens)
        theirs = llava.model.get_image_features(pixel_values=encoder.preprocess(image))
        theirs = getattr(theirs, "pooler_output", theirs)
        theirs = torch.stack(list(theirs)) if isinstance(theirs, (list, tuple)) else theirs
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), rtol=1e-5, atol=1e-5)


def test_language_model_has_llavas_logits_and_speaks_llava_v1(converted):
    llava, out = converted
    lm = CausalLM(model=str(out / "llm"), special_tokens=["<image>"])
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.no_grad():
        torch.testing.assert_close(lm.base_model(input_ids=ids).logits, llava(input_ids=ids).logits)
    tokenizer = lm.tokenizer
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "<image>\nWhere is the ship?"},
            {"role": "assistant", "content": "In the harbour."},
        ],
        tokenize=False,
    )
    assert (
        rendered == f"{LLAVA_SYSTEM} USER: <image>\nWhere is the ship? ASSISTANT: In the harbour.{tokenizer.eos_token}"
    )
    batch = lm.formatter(["Where is the ship?"], ["In the harbour."])
    labelled = batch["input_ids"][0][batch["labels"][0] != -100]
    assert tokenizer.decode(labelled) == "In the harbour." + tokenizer.eos_token
    assert tokenizer.decode(batch["prompt_ids"][0][batch["prompt_attention_mask"][0].bool()]).endswith("ASSISTANT: ")


def test_projector_reads_llava_hf_and_original_names(tmp_path):
    from safetensors.torch import save_file

    from rsvlm.io.state_dicts import StateDictError

    torch.manual_seed(2)
    w1, b1, w2, b2 = torch.randn(8, 4), torch.randn(8), torch.randn(8, 8), torch.randn(8)
    for names in (
        ("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
        ("model.mm_projector.0", "model.mm_projector.2"),
    ):
        path = tmp_path / f"{names[0]}.safetensors"
        save_file(
            {f"{names[0]}.weight": w1, f"{names[0]}.bias": b1, f"{names[1]}.weight": w2, f"{names[1]}.bias": b2},
            str(path),
        )
        projector = MLPProjector(in_dim=4, out_dim=8, checkpoint=str(path), freeze=True)
        x = torch.randn(3, 4)
        torch.testing.assert_close(projector(x), torch.nn.functional.gelu(x @ w1.T + b1) @ w2.T + b2)
        assert not any(p.requires_grad for p in projector.parameters())
    with pytest.raises(StateDictError, match="MLPProjector.checkpoint"):
        MLPProjector(in_dim=5, out_dim=8, checkpoint=str(path))

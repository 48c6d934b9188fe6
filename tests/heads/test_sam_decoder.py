"""SamMaskDecoderHead against segment_anything's own modules."""

from __future__ import annotations

import pytest
import torch

from rsvlm.heads.sam_decoder import SamMaskDecoderHead


@pytest.fixture(scope="module")
def loaded_head(sam_checkpoint):
    _, path = sam_checkpoint
    torch.manual_seed(1)
    return SamMaskDecoderHead(in_channels=32, checkpoint=str(path)).eval()


def test_checkpoint_weights_equal(sam_checkpoint, loaded_head):
    sam, _ = sam_checkpoint
    for prefix, module in (
        ("mask_decoder.", loaded_head.mask_decoder),
        ("prompt_encoder.", loaded_head.prompt_encoder),
    ):
        ref = {k[len(prefix) :]: v for k, v in sam.state_dict().items() if k.startswith(prefix)}
        got = module.state_dict()
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), prefix + k


def test_low_res_matches_segment_anything_per_image(sam_checkpoint, loaded_head):
    sam, _ = sam_checkpoint
    torch.manual_seed(2)
    feature_map = torch.randn(3, 32, 64, 64)
    prompts = torch.randn(3, 4, 256)
    with torch.no_grad():
        got = loaded_head.low_res_logits(feature_map, prompts)
        embedding = loaded_head.neck(feature_map)
        sparse_empty, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        expected = []
        for i in range(3):
            masks, _ = sam.mask_decoder(
                image_embeddings=embedding[i : i + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=torch.cat([sparse_empty, prompts[i : i + 1]], dim=1),
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            expected.append(masks)
    expected = torch.cat(expected)
    assert got.shape == (3, 1, 256, 256)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    # The images really differ, so a head that mixed up the pairing would fail above.
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_multimask_selects_best_iou_of_sam_outputs(sam_checkpoint):
    sam, path = sam_checkpoint
    head = SamMaskDecoderHead(in_channels=16, checkpoint=str(path), multimask_output=True).eval()
    torch.manual_seed(3)
    feature_map = torch.randn(2, 16, 64, 64)
    prompts = torch.randn(2, 2, 256)
    with torch.no_grad():
        got = head.low_res_logits(feature_map, prompts)
        embedding = head.neck(feature_map)
        sparse_empty, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        for i in range(2):
            masks, iou = sam.mask_decoder(
                image_embeddings=embedding[i : i + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=torch.cat([sparse_empty, prompts[i : i + 1]], dim=1),
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            assert masks.shape[1] == 3
            best = masks[0, iou[0].argmax()]
            assert torch.allclose(got[i, 0], best, atol=1e-4, rtol=1e-4)


def test_list_prompts_match_per_image_calls():
    torch.manual_seed(4)
    head = SamMaskDecoderHead(in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2).eval()
    feature_map = torch.randn(2, 8, 6, 5)
    prompts = [torch.randn(1, 32), torch.randn(3, 32)]
    with torch.no_grad():
        got = head(feature_map, prompts, (24, 20))
        for i, p in enumerate(prompts):
            single = head(feature_map[i : i + 1], p[None], (24, 20))
            assert torch.allclose(got[i : i + 1], single, atol=1e-5)
    assert got.shape == (2, 1, 24, 20)


@pytest.mark.parametrize(("h", "w", "size"), [(8, 8, (128, 128)), (5, 7, (80, 112)), (16, 12, (37, 41))])
def test_shapes_for_any_map_size(h, w, size):
    torch.manual_seed(5)
    head = SamMaskDecoderHead(in_channels=12, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2)
    out = head(torch.randn(2, 12, h, w), torch.randn(2, 3, 32), size)
    assert out.shape == (2, 1, *size)
    assert head.low_res_logits(torch.randn(1, 12, h, w), torch.randn(1, 1, 32)).shape == (1, 1, 4 * h, 4 * w)


def test_upsampling_is_bilinear_of_low_res():
    torch.manual_seed(6)
    head = SamMaskDecoderHead(in_channels=4, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2).eval()
    fm, p = torch.randn(1, 4, 4, 4), torch.randn(1, 2, 32)
    with torch.no_grad():
        low = head.low_res_logits(fm, p)
        out = head(fm, p, (64, 64))
    assert torch.allclose(out, torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear"), atol=1e-6)


def test_gradients_reach_neck_decoder_and_prompts_not_frozen_prompt_encoder():
    torch.manual_seed(7)
    head = SamMaskDecoderHead(in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2)
    prompts = torch.randn(2, 2, 32, requires_grad=True)
    head(torch.randn(2, 8, 6, 6), prompts, (24, 24)).square().mean().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    for name, param in head.neck.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name in ("transformer.layers.0.self_attn.q_proj.weight", "output_upscaling.0.weight", "mask_tokens.weight"):
        param = dict(head.mask_decoder.named_parameters())[name]
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(not p.requires_grad for p in head.prompt_encoder.parameters())
    unfrozen = SamMaskDecoderHead(
        in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, freeze_prompt_encoder=False
    )
    assert unfrozen.prompt_encoder.no_mask_embed.weight.requires_grad


def test_missing_checkpoint_names_file_and_download(tmp_path):
    path = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(FileNotFoundError) as err:
        SamMaskDecoderHead(in_channels=8, checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg and "segment-anything" in msg and "sam_vit_h_4b8939.pth" in msg


def test_mismatched_geometry_names_keys(sam_checkpoint):
    _, path = sam_checkpoint
    with pytest.raises(ValueError, match=r"mask_decoder\.transformer\.layers\.2"):
        SamMaskDecoderHead(in_channels=8, checkpoint=str(path), decoder_depth=3)
    with pytest.raises(ValueError, match=r"mlp\.lin1\.weight"):
        SamMaskDecoderHead(in_channels=8, checkpoint=str(path), decoder_mlp_dim=1024)


def test_wrong_widths_are_named():
    head = SamMaskDecoderHead(in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2)
    with pytest.raises(ValueError, match="B×8×h×w"):
        head(torch.randn(1, 9, 4, 4), torch.randn(1, 1, 32), (16, 16))
    with pytest.raises(ValueError, match="prompt_dim=32"):
        head(torch.randn(1, 8, 4, 4), torch.randn(1, 1, 31), (16, 16))


def test_half_precision_weights_run():
    """Lightning's "bf16-true" casts every buffer, SAM's positional-encoding matrix included."""
    torch.manual_seed(8)
    head = SamMaskDecoderHead(in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2).eval()
    fm, p = torch.randn(2, 8, 6, 6), torch.randn(2, 3, 32)
    with torch.no_grad():
        ref = head(fm, p, (24, 24))
        out = head.to(torch.bfloat16)(fm.bfloat16(), p.bfloat16(), (24, 24))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.05 * ref.abs().max().item())

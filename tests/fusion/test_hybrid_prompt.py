"""HybridPromptFusion against a re-implementation of its equations from the block's weights
(hand-written attention, LayerNorm and FFN), its image-only start and its unprompted samples."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from rsvlm.fusion.hybrid_prompt import HybridPromptFusion

B, N, D, HEADS = 3, 6, 16, 4


def tokens(seed: int, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


def make_fusion(depth: int = 1, trained: bool = False) -> HybridPromptFusion:
    """A fusion at its initialisation, or with every weight random (a non-zero cross-attention output
    projection and gate) as after training."""
    torch.manual_seed(0)
    fusion = HybridPromptFusion(dim=D, heads=HEADS, mlp_ratio=2.0, depth=depth).eval()
    if trained:
        with torch.no_grad():
            for parameter in fusion.parameters():
                parameter.normal_(0.0, 0.3)
            for i, block in enumerate(fusion.blocks):
                block.gate.fill_(0.7 - 0.2 * i)
    return fusion


# ---------------------------------------------------------------------------- reference, from the weights
def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def attention(query: torch.Tensor, context: torch.Tensor, module: nn.MultiheadAttention) -> torch.Tensor:
    """softmax(Q Kᵀ / √d) V per head, then the output projection, from the module's packed weights."""
    wq, wk, wv = module.in_proj_weight.chunk(3)
    bq, bk, bv = module.in_proj_bias.chunk(3)
    split = "b n (h d) -> b h n d"
    q = rearrange(query @ wq.T + bq, split, h=HEADS)
    k = rearrange(context @ wk.T + bk, split, h=HEADS)
    v = rearrange(context @ wv.T + bv, split, h=HEADS)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (D // HEADS) ** 0.5, dim=-1)
    heads = rearrange(weights @ v, "b h n d -> b n (h d)")
    return heads @ module.out_proj.weight.T + module.out_proj.bias


def mlp(x: torch.Tensor, ffn: nn.Sequential) -> torch.Tensor:
    first, _, second = ffn
    hidden = x @ first.weight.T + first.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
    return hidden @ second.weight.T + second.bias


def reference_block(block, v: torch.Tensor, e: torch.Tensor, prompted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The module docstring's equations; ``prompted`` False drops the cross-attention and gate terms."""
    ln1, ln2, ln3, ln4, ln5, ln6 = block.norms
    v_sa = v + attention(layer_norm(v, ln1), layer_norm(v, ln1), block.image_attn)
    e_ff = e + mlp(layer_norm(e, ln2), block.prompt_ffn)
    z = v_sa
    if prompted:
        h_ca = v_sa + attention(layer_norm(v_sa, ln3), layer_norm(e_ff, ln4), block.cross_attn)
        z = h_ca + torch.tanh(block.gate) * e_ff
    out = z + attention(layer_norm(z, ln5), layer_norm(z, ln5), block.hybrid_attn)
    return out + mlp(layer_norm(out, ln6), block.out_ffn), e_ff


def reference(fusion: HybridPromptFusion, v: torch.Tensor, e: torch.Tensor, prompted: list[bool]) -> torch.Tensor:
    """Each sample on its own through the stacked reference blocks."""
    outs = []
    for b in range(v.shape[0]):
        vb, eb = v[b : b + 1], e[b : b + 1]
        for block in fusion.blocks:
            vb, eb = reference_block(block, vb, eb, prompted[b])
        outs.append(vb)
    return torch.cat(outs)


def image_only(fusion: HybridPromptFusion, v: torch.Tensor) -> torch.Tensor:
    """V → self-attention → self-attention + FFN per block, the block's MultiheadAttention modules
    called directly in the order of the equations (no prompt anywhere)."""
    for block in fusion.blocks:
        ln1, _, _, _, ln5, ln6 = block.norms
        x = ln1(v)
        v = v + block.image_attn(x, x, x, need_weights=False)[0]
        x = ln5(v)
        v = v + block.hybrid_attn(x, x, x, need_weights=False)[0]
        v = v + block.out_ffn(ln6(v))
    return v


# ---------------------------------------------------------------------------- checks
@pytest.mark.parametrize("depth", [1, 2])
def test_an_untrained_fusion_is_the_image_only_path(depth):
    fusion = make_fusion(depth)
    for block in fusion.blocks:
        assert block.gate.item() == 0.0
        assert not block.cross_attn.out_proj.weight.any() and not block.cross_attn.out_proj.bias.any()
    v, e = tokens(1), tokens(2)
    with torch.no_grad():
        out = fusion(v, e)
        torch.testing.assert_close(out, image_only(fusion, v), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fusion(v, tokens(3)), out, rtol=0, atol=0)  # E has no effect yet


@pytest.mark.parametrize("depth", [1, 2])
def test_a_trained_fusion_follows_the_equations(depth):
    fusion = make_fusion(depth, trained=True)
    v, e = tokens(1), tokens(2)
    with torch.no_grad():
        out = fusion(v, e)
        torch.testing.assert_close(out, reference(fusion, v, e, [True] * B), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(out, image_only(fusion, v), atol=1e-2)  # the prompt now matters


def test_unprompted_samples_take_the_image_only_path_with_trained_weights():
    fusion = make_fusion(depth=2, trained=True)
    v, e = tokens(1), tokens(2)
    valid = torch.tensor([True, False, True])
    with torch.no_grad():
        out = fusion(v, e, valid)
        torch.testing.assert_close(out, reference(fusion, v, e, valid.tolist()), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[1], image_only(fusion, v[1:2])[0], rtol=1e-5, atol=1e-5)
        # whatever the unprompted sample's prompt tokens hold
        torch.testing.assert_close(fusion(v, e.index_fill(0, torch.tensor([1]), float("nan")), valid), out)
        torch.testing.assert_close(fusion(v, e, None), fusion(v, e, torch.ones(B, dtype=torch.bool)))


def test_backward_reaches_the_image_and_prompt_tokens():
    fusion = make_fusion(trained=True).train()
    v, e = tokens(1, requires_grad=True), tokens(2, requires_grad=True)
    fusion(v, e, torch.tensor([True, True, False])).square().mean().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert e.grad is not None and e.grad[:2].abs().sum() > 0
    assert torch.equal(e.grad[2], torch.zeros(N, D))  # the unprompted sample never reads its E
    assert fusion.blocks[0].gate.grad is not None and fusion.blocks[0].gate.grad != 0


def test_errors_name_the_field():
    fusion = make_fusion()
    with pytest.raises(ValueError, match="image must be B×N×16"):
        fusion(torch.zeros(B, N, 8), torch.zeros(B, N, 8))
    with pytest.raises(ValueError, match="prompt must have the image's shape"):
        fusion(tokens(1), tokens(2)[:, :4])
    with pytest.raises(ValueError, match="prompt_valid must have shape"):
        fusion(tokens(1), tokens(2), torch.ones(B + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="depth"):
        HybridPromptFusion(dim=D, depth=0)
    with pytest.raises(ValueError, match="heads"):
        HybridPromptFusion(dim=D, heads=5)

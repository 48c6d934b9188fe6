"""SpatialAwarePromptEncoder: its canvas (hand-drawn cases, slot ↔ channel), slot permutation,
empty slots, gradients, and the row-major alignment of its tokens with the patch grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.prompts.geometry import rasterize
from rsvlm.prompts.spatial import SpatialAwarePromptEncoder

EMPTY, POINT, BOX = (PROMPT_KINDS[k] for k in ("empty", "point", "box"))
M, S, P = 4, 28, 14  # slots, canvas side, patch: a 2×2 token grid


def make_encoder(depth: int = 1, seed: int = 0, **kwargs) -> SpatialAwarePromptEncoder:
    torch.manual_seed(seed)
    args = dict(out_dim=8, max_prompts=M, canvas_size=S, patch_size=P, width=16, depth=depth, heads=2)
    return SpatialAwarePromptEncoder(**{**args, **kwargs}).eval()


def batch(slots: list[list[tuple | None]], size: int = S) -> VisualPromptBatch:
    """Per sample, slots ``("point", (x, y))``, ``("box", (x0, y0, x1, y1))`` or None (empty), on a
    ``size``×``size`` image; empty slots get zero coordinates."""
    b, m = len(slots), len(slots[0])
    kind = torch.zeros(b, m, dtype=torch.long)
    points, boxes = torch.zeros(b, m, 1, 2), torch.zeros(b, m, 4)
    for i, sample in enumerate(slots):
        for k, slot in enumerate(sample):
            if slot is None:
                continue
            name, value = slot
            kind[i, k] = PROMPT_KINDS[name]
            if name == "point":
                points[i, k, 0] = torch.tensor(value)
                boxes[i, k] = torch.tensor(value * 2)
            else:
                boxes[i, k] = torch.tensor(value)
    return VisualPromptBatch(
        kind=kind,
        points=points,
        npoints=(kind == POINT).long(),
        boxes=boxes,
        labels=torch.ones(b, m, dtype=torch.long),
        image_size=(size, size),
    )


def select_slots(prompts: VisualPromptBatch, order: list[int]) -> VisualPromptBatch:
    """The batch with slot j taken from slot ``order[j]``."""
    return VisualPromptBatch(
        kind=prompts.kind[:, order],
        points=prompts.points[:, order],
        npoints=prompts.npoints[:, order],
        boxes=prompts.boxes[:, order],
        labels=prompts.labels[:, order],
        image_size=prompts.image_size,
    )


MIXED = [[("point", (5.5, 6.5)), ("box", (10.0, 2.0, 26.0, 12.0)), None, ("point", (20.0, 22.0))]]


# ---------------------------------------------------------------------------- the canvas
def test_canvas_of_a_box_is_drawn_in_its_slot_and_the_box_channel():
    encoder = make_encoder()
    # 56-px frame → 28-px canvas: the box (0, 0, 20, 12) becomes [0, 10] × [0, 6]; by the centre rule
    # the pixels of columns 0..9 and rows 0..5
    canvas = encoder.canvas(batch([[None, ("box", (0.0, 0.0, 20.0, 12.0))]], size=56))
    expected = torch.zeros(1, M + 3, S, S)
    expected[0, 1, :6, :10] = 1
    expected[0, M + 1, :6, :10] = 1  # channels M, M+1, M+2: point, box, free-form
    assert torch.equal(canvas, expected)


def test_canvas_is_rasterize_of_the_batch_padded_with_empty_slots():
    encoder = make_encoder(point_radius=3, line_width=2, box_style="outline")
    prompts = batch([[("point", (5.5, 6.5)), ("box", (3.0, 2.0, 20.0, 25.0))], [None, ("point", (27.0, 1.0))]])
    # padding by hand: two empty slots with zero coordinates
    padded = VisualPromptBatch(
        kind=F.pad(prompts.kind, (0, 2)),
        points=torch.cat([prompts.points, torch.zeros(2, 2, 1, 2)], dim=1),
        npoints=F.pad(prompts.npoints, (0, 2)),
        boxes=torch.cat([prompts.boxes, torch.zeros(2, 2, 4)], dim=1),
        labels=F.pad(prompts.labels, (0, 2)),
        image_size=prompts.image_size,
    )
    expected = rasterize(padded, (S, S), point_radius=3, line_width=2, box_style="outline")
    canvas = encoder.canvas(prompts)
    assert canvas.shape == (2, M + 3, S, S)
    assert torch.equal(canvas, expected)
    assert canvas[:, 2:M].sum() == 0 and canvas[1, 0].sum() == 0  # empty slots draw nothing


def test_permuting_slots_permutes_the_identity_channels():
    encoder = make_encoder()
    prompts = batch(MIXED)
    order = [3, 0, 2, 1]
    canvas, permuted = encoder.canvas(prompts), encoder.canvas(select_slots(prompts, order))
    assert torch.equal(permuted[:, :M], canvas[:, order])
    assert torch.equal(permuted[:, M:], canvas[:, M:])  # the type channels do not depend on the order
    assert not torch.equal(permuted, canvas)  # the permutation is not trivial on this batch


# ---------------------------------------------------------------------------- the encoder
def test_output_is_one_token_per_patch_of_out_dim():
    encoder = make_encoder()
    out = encoder(batch(MIXED * 3))
    assert out.shape == (3, (S // P) ** 2, 8) and out.dtype == torch.float32
    assert encoder.num_tokens == 4 and encoder.mode == "dense"
    assert encoder.vit.patch_embed.proj.in_channels == M + 3  # identity + type channels reach the ViT
    assert encoder.vit.cls_token is None and encoder.vit.pos_embed.shape == (1, 4, 16)


def test_permuting_slots_and_their_patch_embedding_filters_gives_the_same_output():
    encoder = make_encoder(depth=2)
    prompts = batch(MIXED)
    order = [3, 0, 2, 1]
    with torch.no_grad():
        reference = encoder(prompts)
        weight = encoder.vit.patch_embed.proj.weight  # D×(M+3)×p×p
        weight[:, :M] = weight[:, order].clone()  # slot j now reads the filter slot order[j] had
        permuted = encoder(select_slots(prompts, order))
    torch.testing.assert_close(permuted, reference, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        unpermuted = encoder(prompts)
    assert not torch.allclose(unpermuted, reference, atol=1e-4)  # the identity channels matter


def test_empty_slots_do_not_change_the_output_whatever_their_coordinates():
    encoder = make_encoder()
    prompts = batch([[("point", (5.5, 6.5)), None], [None, None]])
    noisy = VisualPromptBatch(
        kind=prompts.kind,
        points=torch.rand(2, 2, 1, 2) * S,
        npoints=torch.ones(2, 2, dtype=torch.long),
        boxes=torch.tensor([[5.5, 6.5, 5.5, 6.5], [1.0, 2.0, 27.0, 20.0]]).repeat(2, 1, 1),
        labels=torch.zeros(2, 2, dtype=torch.long),
        image_size=prompts.image_size,
    )
    noisy.points[0, 0, 0] = torch.tensor([5.5, 6.5])  # the one real prompt stays
    explicit = batch([[("point", (5.5, 6.5)), None, None, None], [None] * M])
    with torch.no_grad():
        out, out_noisy, out_explicit = encoder(prompts), encoder(noisy), encoder(explicit)
    torch.testing.assert_close(out_noisy, out, rtol=0, atol=0)
    torch.testing.assert_close(out_explicit, out, rtol=0, atol=0)  # padding = explicit empty slots


def test_gradients_reach_the_vit_and_the_projection():
    encoder = make_encoder(depth=2).train()
    encoder(batch(MIXED * 2)).square().mean().backward()
    for name in ("vit.patch_embed.proj.weight", "vit.pos_embed", "vit.blocks.1.mlp.fc2.weight", "proj.weight"):
        grad = encoder.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------- token-grid alignment
def test_depth_zero_equals_a_hand_written_patch_embedding():
    encoder = make_encoder(depth=0)
    prompts = batch(MIXED)
    canvas = rasterize(prompts, (S, S))  # MIXED already has max_prompts slots
    vit = encoder.vit
    conv = vit.patch_embed.proj
    # each p×p patch, row-major, dotted with the filters (a conv of stride p), + position
    patches = rearrange(canvas, "b c (gh ph) (gw pw) -> b (gh gw) (c ph pw)", ph=P, pw=P)
    tokens = patches @ rearrange(conv.weight, "d c ph pw -> (c ph pw) d") + conv.bias + vit.pos_embed
    tokens = F.layer_norm(tokens, (16,), vit.norm.weight, vit.norm.bias, vit.norm.eps)
    expected = tokens @ encoder.proj.weight.T + encoder.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(encoder(prompts), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("xy", "token"), [((5.0, 6.0), 0), ((21.0, 5.0), 1), ((6.0, 22.0), 2), ((22.0, 21.0), 3)])
def test_a_point_in_one_patch_changes_only_that_token_at_depth_zero(xy, token):
    encoder = make_encoder(depth=0)
    with torch.no_grad():
        empty = encoder(batch([[None]]))
        marked = encoder(batch([[("point", xy)]]))
    changed = (marked - empty).abs().amax(dim=-1)[0]  # per token
    assert changed[token] > 1e-3
    others = [i for i in range(4) if i != token]
    assert torch.equal(changed[others], torch.zeros(3)), f"row-major token {token} expected, changed {changed}"


# ---------------------------------------------------------------------------- bad input
def test_errors_name_the_field():
    encoder = make_encoder()
    with pytest.raises(ValueError, match="max_prompts=4"):
        encoder(batch([[None] * (M + 1)]))
    with pytest.raises(ValueError, match="canvas must be B×7×28×28"):
        encoder.encode_canvas(torch.zeros(1, M + 3, 32, 32))
    with pytest.raises(ValueError, match="canvas_size"):
        make_encoder(canvas_size=30)
    with pytest.raises(ValueError, match="heads"):
        make_encoder(heads=3)
    with pytest.raises(ValueError, match="box_style"):
        make_encoder(box_style="dashed")


def test_relative_to_empty_subtracts_the_empty_canvas_tokens():
    plain, relative = make_encoder(depth=2), make_encoder(depth=2, relative_to_empty=True)
    prompts = batch(MIXED + [[None] * M])
    canvas = plain.canvas(prompts)
    expected = plain.encode_canvas(canvas) - plain.encode_canvas(torch.zeros_like(canvas[:1]))
    out = relative(prompts)
    torch.testing.assert_close(out, expected)
    assert out[1].abs().max() == 0  # the unprompted sample adds nothing
    assert out[0].abs().max() > 0

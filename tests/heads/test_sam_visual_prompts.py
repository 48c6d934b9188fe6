"""SamMaskDecoderHead with the user's visual prompts, against segment_anything's own
``PromptEncoder.forward`` and ``MaskDecoder.forward`` on the same prompts in SAM's frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.heads.sam_decoder import SamMaskDecoderHead
from rsvlm.prompts.sam import drawn_prompt_masks, sam_prompt_input

H, W = 256, 192  # a non-square image: SAM's frame scales x and y differently


def batch_of(slots: list[list[dict]], masks: np.ndarray | None = None) -> VisualPromptBatch:
    """A VisualPromptBatch written out by hand: ``slots[b]`` lists dicts with kind, xy / box, label."""
    b, m, p = len(slots), max(len(s) for s in slots), 8
    kind = torch.zeros(b, m, dtype=torch.long)
    points = torch.zeros(b, m, p, 2)
    npoints = torch.zeros(b, m, dtype=torch.long)
    boxes = torch.zeros(b, m, 4)
    labels = torch.ones(b, m, dtype=torch.long)
    for i, sample in enumerate(slots):
        for k, prompt in enumerate(sample):
            kind[i, k] = PROMPT_KINDS[prompt["kind"]]
            labels[i, k] = prompt.get("label", 1)
            if "xy" in prompt:
                xy = torch.tensor(prompt["xy"], dtype=torch.float32).reshape(-1, 2)
                points[i, k, : len(xy)] = xy
                npoints[i, k] = len(xy)
            if "box" in prompt:
                boxes[i, k] = torch.tensor(prompt["box"], dtype=torch.float32)
    return VisualPromptBatch(
        kind=kind,
        points=points,
        npoints=npoints,
        boxes=boxes,
        labels=labels,
        image_size=(H, W),
        masks=None if masks is None else torch.from_numpy(masks),
    )


def to_sam_frame(xy: list[float]) -> list[float]:
    """Continuous pixels (x, y, ...) → SAM's pixel-index frame of a 1024 image, written out."""
    return [v * 1024 / (W if i % 2 == 0 else H) - 0.5 for i, v in enumerate(xy)]


@pytest.fixture(scope="module")
def head(sam_checkpoint):
    _, path = sam_checkpoint
    torch.manual_seed(5)
    return SamMaskDecoderHead(in_channels=16, checkpoint=str(path), use_visual_prompts=True).eval()


def test_points_and_box_embed_as_sam_prompt_encoder(sam_checkpoint, head):
    sam, _ = sam_checkpoint
    prompts = batch_of(
        [
            [{"kind": "point", "xy": [10.5, 200.5]}, {"kind": "point", "xy": [100.0, 30.0], "label": 0}],
            [{"kind": "box", "box": [20.0, 40.0, 120.0, 90.0]}, {"kind": "point", "xy": [60.5, 60.5]}],
            [],
        ]
    )
    with torch.no_grad():
        sparse, dense = head.visual_prompt_embeddings(prompts, (64, 64))
        # sample 0: points only, so SAM appends its padding point
        ref0, dense0 = sam.prompt_encoder(
            points=(
                torch.tensor([[to_sam_frame([10.5, 200.5]), to_sam_frame([100.0, 30.0])]]),
                torch.tensor([[1, 0]]),
            ),
            boxes=None,
            masks=None,
        )
        ref1, _ = sam.prompt_encoder(
            points=(torch.tensor([[to_sam_frame([60.5, 60.5])]]), torch.tensor([[1]])),
            boxes=torch.tensor([to_sam_frame([20.0, 40.0, 120.0, 90.0])]),
            masks=None,
        )
    assert sparse[0].shape == (1, 3, 256) and torch.allclose(sparse[0], ref0, atol=1e-5)
    assert sparse[1].shape == (1, 3, 256) and torch.allclose(sparse[1], ref1, atol=1e-5)
    assert sparse[2].shape == (1, 0, 256)  # no prompt: no token, as SAM with nothing given
    assert torch.allclose(dense, dense0.expand(3, -1, -1, -1))


def test_several_boxes_are_sams_per_box_embeddings_in_a_row(sam_checkpoint, head):
    sam, _ = sam_checkpoint
    first, second = [0.0, 0.0, 50.0, 60.0], [100.0, 120.0, 180.0, 250.0]
    prompts = batch_of([[{"kind": "box", "box": first}, {"kind": "box", "box": second}]])
    with torch.no_grad():
        sparse, _ = head.visual_prompt_embeddings(prompts, (64, 64))
        one = [
            sam.prompt_encoder(points=None, boxes=torch.tensor([to_sam_frame(b)]), masks=None)[0]
            for b in (first, second)
        ]
    assert torch.allclose(sparse[0], torch.cat(one, dim=1), atol=1e-5)


def test_a_free_form_mask_is_sams_dense_prompt_of_plus_minus_ten_logits(sam_checkpoint, head):
    sam, _ = sam_checkpoint
    masks = np.zeros((1, 2, H, W), dtype=bool)
    masks[0, 0, 10:60, 20:90] = True
    masks[0, 1, 100:150, 100:120] = True
    prompts = batch_of([[{"kind": "mask"}, {"kind": "mask"}]], masks=masks)
    prompts.boxes[0, 0] = torch.tensor([20.0, 10.0, 90.0, 60.0])
    with torch.no_grad():
        sparse, dense = head.visual_prompt_embeddings(prompts, (32, 16))
        union = torch.from_numpy(masks[0].any(0)).float()
        logits = torch.where(union > 0, 10.0, -10.0)[None, None]
        _, ref = sam.prompt_encoder(
            points=None, boxes=None, masks=F.interpolate(logits, size=(128, 64), mode="bilinear")
        )
    assert sparse[0].shape[1] == 0
    assert dense.shape == (1, 256, 32, 16) and torch.allclose(dense, ref, atol=1e-5)


def test_a_scribble_goes_to_sam_as_eight_points_along_its_length(head):
    stroke = [[10.0, 10.0], [10.0, 80.0], [80.0, 80.0]]  # 140 px long
    prompts = batch_of([[{"kind": "scribble", "xy": stroke, "label": 1}]])
    given = sam_prompt_input(prompts, 0)
    assert given.coords.shape == (1, 8, 2) and given.boxes is None
    # brute force: the point at arc length s along the L-shaped stroke
    expected = []
    for s in np.linspace(0.0, 140.0, 8):
        expected.append([10.0, 10.0 + s] if s <= 70 else [10.0 + (s - 70), 80.0])
    sam_frame = torch.tensor([to_sam_frame(p) for p in expected], dtype=torch.float32)
    assert torch.allclose(given.coords[0], sam_frame, atol=1e-3)
    assert given.labels.tolist() == [[1] * 8]


def test_masks_with_visual_prompts_equal_sam_mask_decoder(sam_checkpoint, head):
    sam, _ = sam_checkpoint
    torch.manual_seed(6)
    feature_map = torch.randn(2, 16, 64, 64)
    bridge = torch.randn(2, 2, 256)
    prompts = batch_of([[{"kind": "point", "xy": [50.0, 60.0]}], [{"kind": "box", "box": [5.0, 5.0, 100.0, 90.0]}]])
    with torch.no_grad():
        got = head.low_res_logits(feature_map, bridge, prompts)
        plain = head.low_res_logits(feature_map, bridge)
        embedding = head.neck(feature_map)
        expected = []
        for i, (points, boxes) in enumerate(
            [
                ((torch.tensor([[to_sam_frame([50.0, 60.0])]]), torch.tensor([[1]])), None),
                (None, torch.tensor([to_sam_frame([5.0, 5.0, 100.0, 90.0])])),
            ]
        ):
            sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            masks, _ = sam.mask_decoder(
                image_embeddings=embedding[i : i + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=torch.cat([bridge[i : i + 1], sparse], dim=1),
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            expected.append(masks)
    assert torch.allclose(got, torch.cat(expected), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the prompts changed the masks


def test_a_head_built_without_use_visual_prompts_ignores_them(sam_checkpoint):
    _, path = sam_checkpoint
    head = SamMaskDecoderHead(in_channels=16, checkpoint=str(path)).eval()
    feature_map, bridge = torch.randn(1, 16, 16, 16), torch.randn(1, 2, 256)
    prompts = batch_of([[{"kind": "point", "xy": [5.0, 5.0]}]])
    with torch.no_grad():
        assert torch.equal(head.low_res_logits(feature_map, bridge, prompts), head.low_res_logits(feature_map, bridge))


def test_several_targets_per_sample_each_decode_with_their_own_images_prompts(head):
    """decode_targets gives each [SEG] target its own sample's prompts: equal to one decoder call per
    target with that sample's prompts (sample 0 has two targets, sample 1 one)."""
    from rsvlm.models.targets import decode_targets

    class Targets(torch.nn.Module):  # a bridge that hands out fixed target tokens and image indices
        def __init__(self, tokens, index):
            super().__init__()
            self.tokens, self.index = tokens, index

        def targets(self, hidden, positions):
            return self.tokens, self.index

    torch.manual_seed(7)
    feature_map = torch.randn(2, 16, 64, 64)
    tokens, index = torch.randn(3, 1, 256), torch.tensor([0, 0, 1])
    prompts = batch_of([[{"kind": "point", "xy": [50.0, 60.0]}], [{"kind": "box", "box": [5.0, 5.0, 100.0, 90.0]}]])
    with torch.no_grad():
        got, rows = decode_targets(
            Targets(tokens, index), head, feature_map, torch.zeros(2, 4, 8), None, (H, W), visual_prompts=prompts
        )
        expected = [
            head(feature_map[i : i + 1], tokens[t : t + 1], (H, W), visual_prompts=prompts.rows(torch.tensor([i])))
            for t, i in enumerate(index.tolist())
        ]
    assert torch.equal(rows, index)
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-5, rtol=1e-5)
    single = batch_of([[{"kind": "point", "xy": [50.0, 60.0]}]])
    assert torch.equal(prompts.rows(torch.tensor([0])).boxes, single.boxes)  # rows() picks a sample's slots


def test_prompts_as_mask_give_sam_the_drawn_box_and_point_as_its_mask_input(sam_checkpoint):
    sam, path = sam_checkpoint
    torch.manual_seed(5)
    drawing = SamMaskDecoderHead(in_channels=16, checkpoint=str(path), use_visual_prompts=True, prompts_as_mask=True)
    box, point = [20.0, 10.0, 90.0, 60.0], [150.5, 200.5]
    prompts = batch_of(
        [
            [
                {"kind": "box", "box": box},
                {"kind": "point", "xy": point},
                {"kind": "point", "xy": [5.5, 5.5], "label": 0},
            ],
            [{"kind": "point", "xy": point, "label": 0}],  # background only: nothing drawn, no mask input
        ]
    )
    # Drawn by hand: the box's pixels (pixel centres inside its continuous edges) and the point's disc
    # (radius 2 on a 256-px side, pixel centres within it); the background point is not drawn.
    rows, cols = np.mgrid[0:H, 0:W] + 0.5
    expected = (cols >= box[0]) & (cols <= box[2]) & (rows >= box[1]) & (rows <= box[3])
    expected |= (cols - point[0]) ** 2 + (rows - point[1]) ** 2 <= 2**2
    drawn = drawn_prompt_masks(prompts)
    assert drawn.shape == (2, H, W) and not drawn[1].any()
    assert (drawn[0].numpy() == expected).all()
    with torch.no_grad():
        _, dense = drawing.visual_prompt_embeddings(prompts, (32, 16))
        logits = torch.where(drawn[0], 10.0, -10.0)[None, None].float()
        _, ref = sam.prompt_encoder(
            points=None, boxes=None, masks=F.interpolate(logits, size=(128, 64), mode="bilinear")
        )
    torch.testing.assert_close(dense[0:1], ref, atol=1e-5, rtol=1e-5)
    no_mask = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 32, 16)
    torch.testing.assert_close(dense[1:2], no_mask, atol=1e-5, rtol=1e-5)

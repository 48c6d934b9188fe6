"""SparsePromptEncoder against segment_anything's own PromptEncoder (same weights), and its token layout."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import PromptEncoder as SamPromptEncoder

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.io.state_dicts import StateDictError
from rsvlm.prompts.sparse import SparsePromptEncoder

POINT, BOX, SCRIBBLE, EMPTY = (PROMPT_KINDS[k] for k in ("point", "box", "scribble", "empty"))
SAM_FRAME = 1024


def prompt_batch(
    kind: list[list[int]], points: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, int]
) -> VisualPromptBatch:
    """A batch with one vertex per slot (``points`` ``B×M×2``)."""
    kinds = torch.tensor(kind)
    return VisualPromptBatch(
        kind=kinds,
        points=points[:, :, None].float(),
        npoints=(kinds > 0).long(),
        boxes=boxes.float(),
        labels=labels.long(),
        image_size=image_size,
    )


def random_prompts(kind: list[list[int]], image_size: tuple[int, int], seed: int = 0) -> VisualPromptBatch:
    """Points and boxes on a 1/64-pixel grid (exact in float32) inside ``image_size``."""
    gen = torch.Generator().manual_seed(seed)
    b, m = len(kind), len(kind[0])
    height, width = image_size
    size = torch.tensor([width, height])
    points = torch.randint(0, 64 * width, (b, m, 2), generator=gen) % (64 * size) / 64
    corners = torch.randint(0, 64 * width, (b, m, 2, 2), generator=gen) % (64 * size) / 64
    boxes = torch.cat([corners.amin(2), corners.amax(2)], dim=-1)
    labels = torch.randint(0, 2, (b, m), generator=gen)
    return prompt_batch(kind, points, boxes, labels, image_size)


@pytest.fixture(scope="module")
def sam_reference(tmp_path_factory):
    """segment_anything's PromptEncoder at SAM's geometry, random weights, saved as a SAM checkpoint."""
    torch.manual_seed(0)
    sam = SamPromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(SAM_FRAME, SAM_FRAME), mask_in_chans=16
    ).eval()
    path = tmp_path_factory.mktemp("sam") / "sam_prompt_encoder.pth"
    torch.save({f"prompt_encoder.{k}": v for k, v in sam.state_dict().items()}, path)
    return sam, path


@pytest.fixture(scope="module")
def encoder(sam_reference):
    _, path = sam_reference
    torch.manual_seed(1)
    return SparsePromptEncoder(out_dim=32, max_prompts=5, sam_checkpoint=str(path)).eval()


def to_sam_frame(xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Continuous pixel coordinates ``...×2`` → SAM's pixel indices in its 1024 frame, per axis."""
    height, width = image_size
    return xy * torch.tensor([SAM_FRAME / width, SAM_FRAME / height]) - 0.5


def test_loads_sam_weights(sam_reference, encoder):
    sam, _ = sam_reference
    ours = encoder.state_dict()
    for key, value in sam.state_dict().items():
        if key.startswith(("pe_layer.", "point_embeddings.", "not_a_point_embed.")):
            assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("image_size", [(SAM_FRAME, SAM_FRAME), (256, 512)])
def test_point_embeddings_equal_sam(sam_reference, encoder, image_size):
    sam, _ = sam_reference
    prompts = random_prompts([[POINT] * 4] * 3, image_size)
    got = encoder.embed_points(prompts)
    coords = to_sam_frame(prompts.points[:, :, 0], image_size)
    with torch.no_grad():
        expected = sam._embed_points(coords, prompts.labels, pad=False)
    assert got.shape == (3, 4, 256)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert set(prompts.labels.flatten().tolist()) == {0, 1}  # both SAM point embeddings are exercised


@pytest.mark.parametrize("image_size", [(SAM_FRAME, SAM_FRAME), (256, 512)])
def test_box_corner_embeddings_equal_sam(sam_reference, encoder, image_size):
    sam, _ = sam_reference
    prompts = random_prompts([[BOX] * 4] * 3, image_size, seed=1)
    got = encoder.embed_boxes(prompts)
    boxes = to_sam_frame(prompts.boxes.reshape(-1, 2, 2), image_size).reshape(-1, 4)
    with torch.no_grad():
        expected = sam._embed_boxes(boxes).reshape(3, 4, 2, 256)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_slot_tokens_by_kind(encoder):
    prompts = random_prompts([[POINT, BOX, SCRIBBLE, EMPTY]], (64, 96), seed=2)
    with torch.no_grad():
        slots = encoder.slot_embeddings(prompts)
        point = encoder.up(encoder.embed_points(prompts))
        boxes = encoder.embed_boxes(prompts).flatten(2)
    assert slots.shape == (1, 4, 512)
    assert torch.equal(slots[0, 0], point[0, 0])
    # a scribble is encoded by its bounding box, as a box is
    assert torch.equal(slots[0, 1], boxes[0, 1]) and torch.equal(slots[0, 2], boxes[0, 2])


def test_output_shape_pads_to_max_prompts(encoder):
    prompts = random_prompts([[POINT, BOX, EMPTY], [BOX, EMPTY, EMPTY]], (64, 64))
    with torch.no_grad():
        out = encoder(prompts)
    assert out.shape == (2, encoder.max_prompts + 2, 32)
    assert torch.isfinite(out).all()


def test_empty_slots_are_all_equal(encoder):
    first = random_prompts([[EMPTY, POINT, EMPTY], [BOX, EMPTY, EMPTY]], (64, 64), seed=3)
    other = random_prompts([[EMPTY, POINT, EMPTY], [BOX, EMPTY, EMPTY]], (64, 64), seed=4)
    with torch.no_grad():
        out = encoder(first)
        # what empty slots carry in their coordinates and labels does not matter
        other_out = encoder(other)
    empty = torch.cat([out[0, [1, 3]], out[1, 2:-1]])  # token k+1 is slot k; slots 3, 4 are padding
    assert torch.allclose(empty, empty[:1].expand_as(empty), atol=1e-6)
    assert torch.allclose(other_out[0, 1], out[0, 1], atol=1e-6)
    assert not torch.allclose(out[0, 2], out[0, 1])


def test_permuting_slots_permutes_tokens(encoder):
    prompts = random_prompts([[POINT, BOX, EMPTY, SCRIBBLE, POINT]], (80, 64), seed=5)
    order = torch.tensor([3, 0, 4, 2, 1])
    permuted = VisualPromptBatch(
        kind=prompts.kind[:, order],
        points=prompts.points[:, order],
        npoints=prompts.npoints[:, order],
        boxes=prompts.boxes[:, order],
        labels=prompts.labels[:, order],
        image_size=prompts.image_size,
    )
    with torch.no_grad():
        out, out_permuted = encoder(prompts), encoder(permuted)
    assert torch.allclose(out_permuted[:, 1:-1], out[:, 1:-1][:, order], atol=1e-6)
    assert torch.allclose(out_permuted[:, [0, -1]], out[:, [0, -1]])


@pytest.mark.parametrize("freeze_pe", [True, False])
def test_frozen_pe_gets_no_gradient(freeze_pe):
    encoder = SparsePromptEncoder(out_dim=16, max_prompts=3, pe_dim=32, freeze_pe=freeze_pe)
    encoder(random_prompts([[POINT, BOX, EMPTY]], (64, 64))).square().mean().backward()
    sam_parts = [*encoder.point_embeddings.parameters(), *encoder.not_a_point_embed.parameters()]
    assert not any(name.startswith("pe_layer") for name, _ in encoder.named_parameters())  # a buffer, as in SAM
    if freeze_pe:
        assert all(not p.requires_grad and p.grad is None for p in sam_parts)
    else:
        assert all(p.grad is not None for p in sam_parts)
    assert encoder.proj.weight.grad is not None and encoder.up.weight.grad is not None


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "sam_vit_h_4b8939.pth"
    with pytest.raises(FileNotFoundError, match="SparsePromptEncoder.sam_checkpoint.*nowhere"):
        SparsePromptEncoder(out_dim=16, sam_checkpoint=str(path))


def test_checkpoint_of_another_width_is_refused(sam_reference):
    _, path = sam_reference
    with pytest.raises(StateDictError, match="pe_dim=64"):
        SparsePromptEncoder(out_dim=16, pe_dim=64, sam_checkpoint=str(path))


def test_wrong_shapes_are_named(encoder):
    prompts = random_prompts([[POINT] * 6], (64, 64))
    with pytest.raises(ValueError, match="6 slots, more than max_prompts=5"):
        encoder(prompts)
    prompts = random_prompts([[POINT, BOX]], (64, 64))
    prompts.boxes = prompts.boxes[..., :3]
    with pytest.raises(ValueError, match=r"prompts\.boxes must have shape \(1, 2, 4\)"):
        encoder(prompts)
    prompts = random_prompts([[POINT, BOX]], (64, 64))
    prompts.points = prompts.points[..., :1]
    with pytest.raises(ValueError, match=r"prompts\.points must be 1×2×P×2"):
        encoder(prompts)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="pe_dim must be even"):
        SparsePromptEncoder(out_dim=16, pe_dim=33)
    with pytest.raises(ValueError, match="max_prompts must be >= 1"):
        SparsePromptEncoder(out_dim=16, max_prompts=0)


def test_skip_unprompted_gives_unprompted_samples_no_tokens(sam_reference):
    _, path = sam_reference
    torch.manual_seed(1)
    every = SparsePromptEncoder(out_dim=32, max_prompts=5, sam_checkpoint=str(path)).eval()
    skipping = SparsePromptEncoder(out_dim=32, max_prompts=5, sam_checkpoint=str(path), skip_unprompted=True).eval()
    skipping.load_state_dict(every.state_dict())
    prompts = random_prompts([[POINT, EMPTY], [EMPTY, EMPTY], [EMPTY, SCRIBBLE]], (64, 64))
    with torch.no_grad():
        full, groups = every(prompts), skipping(prompts)
    assert [tuple(g.shape) for g in groups] == [(7, 32), (0, 32), (7, 32)]
    assert torch.equal(groups[0], full[0]) and torch.equal(groups[2], full[2])
    # a batch without any slot (every sample asks in words): no tokens at all
    none = random_prompts([[EMPTY], [EMPTY]], (64, 64))
    none = VisualPromptBatch(
        kind=none.kind[:, :0],
        points=none.points[:, :0],
        npoints=none.npoints[:, :0],
        boxes=none.boxes[:, :0],
        labels=none.labels[:, :0],
        image_size=(64, 64),
    )
    with torch.no_grad():
        assert [tuple(g.shape) for g in skipping(none)] == [(0, 32), (0, 32)]

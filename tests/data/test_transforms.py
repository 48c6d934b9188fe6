"""Transforms: aspect-keeping resize with invalid padding, normalisation, dihedral augmentation."""

from __future__ import annotations

import numpy as np
import torch

from rsvlm.data.transforms import normalize, random_dihedral, resize_pad


def test_resize_pad_keeps_aspect_and_marks_padding_invalid():
    image = torch.rand(3, 40, 20)
    mask = (torch.rand(1, 40, 20) > 0.5).float()
    valid = torch.ones(1, 40, 20, dtype=torch.bool)
    out, m, v, info = resize_pad(image, mask, valid, 64)
    assert out.shape == (3, 64, 64) and m.shape == (1, 64, 64) and v.shape == (1, 64, 64)
    assert info["resized_size"] == [64, 32] and info["pad"] == [0, 0, 0, 32]
    assert v[:, :, :32].all() and not v[:, :, 32:].any()
    assert (out[:, :, 32:] == 0).all() and (m[:, :, 32:] == 0).all()
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # Nearest-neighbour upsampling by 1.6: every output pixel copies an input pixel.
    rows = np.minimum(np.floor((np.arange(64) + 0.5) * 40 / 64), 39).astype(int)
    cols = np.minimum(np.floor((np.arange(32) + 0.5) * 20 / 32), 19).astype(int)
    np.testing.assert_array_equal(m[0, :, :32].numpy(), mask[0].numpy()[np.ix_(rows, cols)])


def test_normalize_sets_invalid_to_zero():
    image = torch.tensor([[[1.0, 3.0]], [[10.0, float("nan")]]])
    valid = torch.tensor([[True, False]])
    out = normalize(image, valid, np.array([1.0, 4.0]), np.array([2.0, 3.0]))
    assert out.tolist() == [[[0.0, 0.0]], [[2.0, 0.0]]]


def test_dihedral_moves_image_mask_and_valid_together():
    h, w = 6, 9
    image = torch.zeros(2, h, w)
    image[:, 1, 2] = torch.tensor([5.0, 7.0])
    mask = torch.zeros(1, h, w)
    mask[0, 1, 2] = 1
    valid = torch.ones(1, h, w, dtype=torch.bool)
    valid[0, 1, 2] = False
    seen = set()
    for seed in range(60):
        im, m, v, aug = random_dihedral(image, mask, valid, torch.Generator().manual_seed(seed))
        seen.add((aug["rot90"], aug["flip"]))
        ref = np.rot90(np.zeros((h, w)) + (np.arange(h * w).reshape(h, w) == 1 * w + 2), aug["rot90"])
        ref = np.fliplr(ref) if aug["flip"] else ref
        marker = tuple(np.argwhere(ref)[0])
        assert tuple(torch.nonzero(im[0]).tolist()[0]) == marker
        assert tuple(torch.nonzero(m[0]).tolist()[0]) == marker
        assert tuple(torch.nonzero(~v[0]).tolist()[0]) == marker
        assert im[1][marker].item() == 7.0
    assert len(seen) == 8

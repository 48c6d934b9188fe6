"""GeoMag's Text Projection + β (SegCodebookBridge) against the formulas, written out here."""

from __future__ import annotations

import pytest
import torch

from rsvlm.bridges.seg_codebook import SegCodebookBridge
from rsvlm.bridges.seg_token import SegTokenBridge


def _positions(length: int, per_sample: list[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(per_sample), length, dtype=torch.bool)
    for b, cols in enumerate(per_sample):
        out[b, cols] = True
    return out


def test_one_token_and_fixed_beta_is_the_seg_token_bridge():
    torch.manual_seed(0)
    codebook = SegCodebookBridge(in_dim=16, out_dim=8, num_tokens=1, beta="fixed")
    plain = SegTokenBridge(in_dim=16, out_dim=8, num_tokens=1)
    plain.load_state_dict(codebook.proj.state_dict(prefix="proj."), strict=True)
    hidden, positions = torch.randn(3, 7, 16), _positions(7, [[2], [6], [0]])
    torch.testing.assert_close(codebook(hidden, positions), plain(hidden, positions))


def test_each_target_is_the_beta_weighted_sum_of_its_projected_states():
    torch.manual_seed(1)
    bridge = SegCodebookBridge(in_dim=16, out_dim=8, num_tokens=3)
    with torch.no_grad():
        bridge.beta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    hidden = torch.randn(2, 12, 16)
    # sample 0: two targets (positions 1,2,3 and 7,8,9); sample 1: one target (4,5,6)
    positions = _positions(12, [[1, 2, 3, 7, 8, 9], [4, 5, 6]])
    tokens, image_index = bridge.targets(hidden, positions)
    w1, b1, w2, b2 = bridge.proj[0].weight, bridge.proj[0].bias, bridge.proj[2].weight, bridge.proj[2].bias

    def project(h):
        return torch.relu(h @ w1.T + b1) @ w2.T + b2

    groups = [(0, [1, 2, 3]), (0, [7, 8, 9]), (1, [4, 5, 6])]
    expected = torch.stack(
        [sum(bridge.beta[n] * project(hidden[b, c]) for n, c in enumerate(cols)) for b, cols in groups]
    )
    torch.testing.assert_close(tokens[:, 0], expected)
    assert image_index.tolist() == [0, 0, 1] and tokens.shape == (3, 1, 8)
    one = SegCodebookBridge(in_dim=16, out_dim=8, num_tokens=3)
    assert one(hidden, _positions(12, [[1, 2, 3], [4, 5, 6]])).shape == (2, 1, 8)
    with pytest.raises(ValueError, match="one target .* per sample"):
        one(hidden, positions)


def test_a_group_cut_short_names_the_sample_and_beta_learns():
    bridge = SegCodebookBridge(in_dim=4, out_dim=2, num_tokens=3)
    with pytest.raises(ValueError, match="groups of 3: sample 1 has 2"):
        bridge.targets(torch.randn(2, 6, 4), _positions(6, [[0, 1, 2], [3, 4]]))
    tokens, _ = bridge.targets(torch.randn(1, 6, 4), _positions(6, [[0, 1, 2]]))
    tokens.sum().backward()
    assert bridge.beta.grad is not None
    torch.testing.assert_close(SegCodebookBridge(4, 2, 4, beta="fixed").beta, torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="beta must be"):
        SegCodebookBridge(4, 2, beta="softmax")

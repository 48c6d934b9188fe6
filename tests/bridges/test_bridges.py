"""Bridges: TCP pools only the selected positions like F.adaptive_avg_pool1d; [SEG] gathers its positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.bridges.seg_token import SegTokenBridge
from rsvlm.bridges.tcp import TokenCompressionProjector


def random_positions(b: int, length: int, counts: list[int], generator: torch.Generator) -> torch.Tensor:
    """``B×L`` bool with ``counts[i]`` scattered True entries in row i."""
    pos = torch.zeros(b, length, dtype=torch.bool)
    for i, n in enumerate(counts):
        pos[i, torch.randperm(length, generator=generator)[:n]] = True
    return pos


def reference_pool(hidden: torch.Tensor, positions: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample loop: adaptive_avg_pool1d over only the selected rows."""
    out = []
    for h, p in zip(hidden, positions):
        rows = h[p]  # n×D, in sequence order
        out.append(F.adaptive_avg_pool1d(rows.T[None], k)[0].T)
    return torch.stack(out)


@pytest.mark.parametrize("k", range(1, 9))
def test_tcp_matches_per_sample_adaptive_pool(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    torch.manual_seed(k)
    b, length, d = 4, 20, 12
    hidden = torch.randn(b, length, d, generator=g)
    # Lengths below, at and above K, including a single position.
    counts = [1, k, k + 3, 17]
    positions = random_positions(b, length, counts, g)
    tcp = TokenCompressionProjector(in_dim=d, out_dim=6, num_tokens=k)
    expected_pool = reference_pool(hidden, positions, k)
    torch.testing.assert_close(tcp.pool(hidden, positions), expected_pool)
    out = tcp(hidden, positions)
    assert out.shape == (b, k, 6)
    lin = tcp.proj[0]
    torch.testing.assert_close(out, F.linear(expected_pool, lin.weight, lin.bias))


def test_tcp_ignores_masked_out_positions() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    hidden = torch.randn(3, 15, 8, generator=g)
    positions = random_positions(3, 15, [5, 2, 9], g)
    tcp = TokenCompressionProjector(in_dim=8, out_dim=4, num_tokens=4, hidden_dims=[16])
    before = tcp(hidden, positions)
    changed = hidden.clone()
    changed[~positions] = torch.randn(int((~positions).sum()), 8, generator=g) * 100
    changed[0, ~positions[0]] = float("nan")  # even NaN in padding must not leak
    torch.testing.assert_close(tcp(changed, positions), before)
    # ...while changing a selected position does change the output.
    changed[positions] += 1.0
    assert not torch.allclose(tcp(changed, positions), before)


def test_tcp_gradient_reaches_only_selected_positions() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 10, 8, requires_grad=True)
    positions = torch.zeros(2, 10, dtype=torch.bool)
    positions[0, 2:6] = True
    positions[1, [1, 7]] = True
    TokenCompressionProjector(in_dim=8, out_dim=4, num_tokens=3)(hidden, positions).sum().backward()
    grad_norm = hidden.grad.abs().sum(-1)
    assert (grad_norm[positions] > 0).all()
    assert (grad_norm[~positions] == 0).all()


def test_tcp_empty_sample_is_named() -> None:
    hidden = torch.randn(3, 6, 8)
    positions = torch.ones(3, 6, dtype=torch.bool)
    positions[2] = False
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\]"):
        TokenCompressionProjector(in_dim=8, out_dim=4)(hidden, positions)


def test_tcp_released_mlp_layout_and_activation() -> None:
    """hidden_dims=[2048, 512] reproduces the released LLAMANECK.text_mlp (ReLU between layers)."""
    torch.manual_seed(0)
    tcp = TokenCompressionProjector(in_dim=1536, out_dim=256, num_tokens=4, hidden_dims=[2048, 512])
    released = nn.Sequential(nn.Linear(1536, 2048), nn.ReLU(), nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 256))
    # Same module indices (0, 2, 4), so released weights load after renaming the prefix.
    released.load_state_dict(tcp.proj.state_dict())
    hidden = torch.randn(2, 9, 1536)
    positions = torch.ones(2, 9, dtype=torch.bool)
    positions[1, 5:] = False
    expected = released(reference_pool(hidden, positions, 4))
    torch.testing.assert_close(tcp(hidden, positions), expected)
    assert (tcp.in_dim, tcp.out_dim, tcp.num_tokens) == (1536, 256, 4)


def test_tcp_gelu_option() -> None:
    tcp = TokenCompressionProjector(in_dim=8, out_dim=4, hidden_dims=[16], activation="gelu")
    assert isinstance(tcp.proj[1], nn.GELU)


def test_seg_token_bridge_gathers_positions_in_order() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 12, 16)
    positions = torch.zeros(3, 12, dtype=torch.bool)
    chosen = [[1, 9], [4, 5], [0, 11]]
    for i, idx in enumerate(chosen):
        positions[i, idx] = True
    bridge = SegTokenBridge(in_dim=16, out_dim=8, num_tokens=2, hidden_dim=20)
    out = bridge(hidden, positions)
    assert out.shape == (3, 2, 8)
    l1, l2 = bridge.proj[0], bridge.proj[2]
    for i, idx in enumerate(chosen):
        x = hidden[i, idx]
        expected = F.linear(F.relu(F.linear(x, l1.weight, l1.bias)), l2.weight, l2.bias)
        torch.testing.assert_close(out[i], expected)
    assert SegTokenBridge(in_dim=16).proj[0].out_features == 16  # LISA: hidden width = in_dim


def test_seg_token_bridge_wrong_count_is_named() -> None:
    positions = torch.zeros(2, 5, dtype=torch.bool)
    positions[0, 1] = True
    with pytest.raises(ValueError, match="sample 1 has 0"):
        SegTokenBridge(in_dim=4, out_dim=2)(torch.randn(2, 5, 4), positions)

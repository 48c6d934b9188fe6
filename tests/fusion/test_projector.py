"""MLPProjector against a hand-written functional mlp2x_gelu."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvlm.fusion.projector import MLPProjector


def _reference(proj: MLPProjector, x: torch.Tensor) -> torch.Tensor:
    first, second = proj.proj[0], proj.proj[2]
    h = x @ first.weight.T + first.bias
    h = 0.5 * h * (1.0 + torch.erf(h / 2.0**0.5))  # exact GELU, written out
    return h @ second.weight.T + second.bias


@pytest.mark.parametrize("hidden_dim", [None, 7])
def test_matches_functional(hidden_dim: int | None) -> None:
    torch.manual_seed(0)
    proj = MLPProjector(in_dim=6, out_dim=10, hidden_dim=hidden_dim)
    x = torch.randn(2, 5, 6)
    out = proj(x)
    assert out.shape == (2, 5, 10)
    assert proj.in_dim == 6 and proj.out_dim == 10
    assert proj.proj[0].out_features == (10 if hidden_dim is None else hidden_dim)
    torch.testing.assert_close(out, _reference(proj, x))
    torch.testing.assert_close(
        out,
        F.linear(F.gelu(F.linear(x, proj.proj[0].weight, proj.proj[0].bias)), proj.proj[2].weight, proj.proj[2].bias),
    )


def test_tokens_independent() -> None:
    # A projector acts token by token: permuting tokens permutes the output.
    torch.manual_seed(0)
    proj = MLPProjector(4, 8)
    x = torch.randn(1, 6, 4)
    perm = torch.randperm(6)
    torch.testing.assert_close(proj(x)[:, perm], proj(x[:, perm]))


def test_wrong_width() -> None:
    proj = MLPProjector(4, 8)
    with pytest.raises(ValueError, match="in_dim=4"):
        proj(torch.zeros(1, 3, 5))


def test_position_grid_adds_the_2d_sincos_embedding_row_by_row() -> None:
    torch.manual_seed(0)
    h, w, dim = 3, 4, 8
    proj = MLPProjector(dim, 5, position_grid=[h, w])
    x = torch.randn(2, h * w, dim)
    # Brute force, MAE-style: a quarter of the channels each for sin(row·f), sin(col·f), cos(row·f),
    # cos(col·f), with frequencies f_k = 10000^(-k / (dim/4)); tokens in row-major order.
    quarter = dim // 4
    expected = torch.zeros(h * w, dim)
    for row in range(h):
        for col in range(w):
            for k in range(quarter):
                f = 10000.0 ** (-k / quarter)
                token = row * w + col
                expected[token, k] = torch.sin(torch.tensor(row * f))
                expected[token, quarter + k] = torch.sin(torch.tensor(col * f))
                expected[token, 2 * quarter + k] = torch.cos(torch.tensor(row * f))
                expected[token, 3 * quarter + k] = torch.cos(torch.tensor(col * f))
    torch.testing.assert_close(proj(x), _reference(proj, x + expected))
    assert "position" not in proj.state_dict()  # rebuilt from the arguments: LLaVA's weight layout kept
    with pytest.raises(ValueError, match=r"position_grid=\[3, 4\]"):
        proj(torch.randn(2, 5, dim))
    with pytest.raises(ValueError, match="divisible by 4"):
        MLPProjector(6, 5, position_grid=[2, 2])

"""DCNv3, the deformable convolution of InternImage, in pure PyTorch.

The official operator (``OpenGVLab/InternImage``, ``ops_dcnv3``) is a CUDA extension; this
module computes the same function with :func:`torch.nn.functional.grid_sample`, so it runs on
any device (CPU included) and needs no compilation. It is slower than the CUDA kernel.

Layouts follow the official operator so that official checkpoints load unchanged:

* tensors are channels-last: input ``N×H×W×C``;
* ``offset`` is ``N×H_out×W_out×(G·P·2)`` ordered ``(group, point, xy)`` with x first;
* ``mask`` is ``N×H_out×W_out×(G·P)`` ordered ``(group, point)``;
* the ``P = k·k`` sampling points of a kernel are ordered **x-major**: point ``p = i_x·k + i_y``
  (the official code builds its tap grid with ``meshgrid(x, y)``), not row-major as in
  :func:`torch.nn.functional.unfold`.

Sampling point ``p`` of output pixel ``(i, j)`` sits, in input pixel coordinates, at
``x = j·stride − pad + c + (t_x[p] + Δx)·s`` and ``y = i·stride − pad + c + (t_y[p] + Δy)·s``, with
``c = dilation·(k−1)//2`` the window centre, ``t`` the dilated tap offsets in ``[−c, c]`` and
``s`` the ``offset_scale`` (which scales the regular grid as well as the learned offsets).
Values outside the image are zero; samples are bilinear.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def dcnv3_core(
    value: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
) -> torch.Tensor:
    """Deformable aggregation of DCNv3.

    Args:
        value: ``N×H×W×C`` channels-last input (already projected), ``C`` divisible by ``group``.
        offset: ``N×H_out×W_out×(G·P·2)`` learned offsets in pixels (before ``offset_scale``).
        mask: ``N×H_out×W_out×(G·P)`` aggregation weights (softmax-normalised in DCNv3).
        kernel_size, stride, pad, dilation: geometry of the regular sampling grid.
        group: G, number of groups; each group has its own offsets and weights.
        offset_scale: s, scales both the regular grid and the offsets.

    Returns:
        ``N×H_out×W_out×C`` with ``H_out = (H + 2·pad − dilation·(k−1) − 1)//stride + 1``.
    """
    n, h, w, c = value.shape
    k = kernel_size
    points = k * k
    h_out = (h + 2 * pad - (dilation * (k - 1) + 1)) // stride + 1
    w_out = (w + 2 * pad - (dilation * (k - 1) + 1)) // stride + 1
    expected_offset = (n, h_out, w_out, group * points * 2)
    if tuple(offset.shape) != expected_offset or tuple(mask.shape) != expected_offset[:3] + (group * points,):
        raise ValueError(
            f"dcnv3_core: offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not match "
            f"value {tuple(value.shape)}: expected offset {expected_offset} and mask "
            f"{expected_offset[:3] + (group * points,)}"
        )
    if c % group != 0:
        raise ValueError(f"dcnv3_core: channels {c} not divisible by group {group}")

    # sampling positions need more precision than fp16/bf16 give (0.25 px at x=128 in bf16), so
    # the whole aggregation runs in float32 and only the result is cast back
    out_dtype = value.dtype
    dtype = torch.promote_types(torch.promote_types(value.dtype, offset.dtype), torch.float32)
    device = value.device
    # torch has no autocast for "meta" (shape checks without weights): nothing to cast there
    autocast_off = (
        torch.autocast(device_type=device.type, enabled=False) if device.type != "meta" else contextlib.nullcontext()
    )
    with autocast_off:
        out = _aggregate(
            value.to(dtype),
            offset.to(dtype),
            mask.to(dtype),
            k,
            stride,
            pad,
            dilation,
            group,
            offset_scale,
            h_out,
            w_out,
        )
    return out.to(out_dtype)


def _aggregate(
    value: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
    h_out: int,
    w_out: int,
) -> torch.Tensor:
    """The body of :func:`dcnv3_core`, on checked float32/64 tensors."""
    n, h, w, _ = value.shape
    dtype, device = value.dtype, value.device
    centre = (dilation * (k - 1)) // 2
    taps = torch.arange(k, dtype=dtype, device=device) * dilation - centre
    # x-major point order (p = i_x·k + i_y), as the official kernels expect
    tap_x = taps.repeat_interleave(k)
    tap_y = taps.repeat(k)
    base_y = torch.arange(h_out, dtype=dtype, device=device) * stride - pad + centre
    base_x = torch.arange(w_out, dtype=dtype, device=device) * stride - pad + centre

    off = rearrange(offset, "n i j (g p xy) -> n i j g p xy", g=group, xy=2)
    px = base_x[None, None, :, None, None] + (tap_x + off[..., 0]) * offset_scale
    py = base_y[None, :, None, None, None] + (tap_y + off[..., 1]) * offset_scale
    # grid_sample(align_corners=False) puts the centre of pixel i at (2i + 1)/size − 1
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
    grid = rearrange(grid, "n i j g p xy -> (n g) (i j) p xy")

    per_group = rearrange(value, "n h w (g c) -> (n g) c h w", g=group)
    sampled = F.grid_sample(
        per_group, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (n g) × c × (i j) × p
    weights = rearrange(mask, "n i j (g p) -> (n g) 1 (i j) p", g=group)
    out = (sampled * weights).sum(-1)
    return rearrange(out, "(n g) c (i j) -> n i j (g c)", n=n, i=h_out)


class _Permute(nn.Module):
    """Parameter-free layout change; occupies the same ``nn.Sequential`` slot as the official
    ``to_channels_last``/``to_channels_first`` so that state-dict indices line up."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def channels_first_to_last_norm(channels: int, eps: float = 1e-6) -> nn.Sequential:
    """``N×C×H×W`` → LayerNorm over C → ``N×H×W×C`` (official key: ``<name>.1.weight``)."""
    return nn.Sequential(_Permute(0, 2, 3, 1), nn.LayerNorm(channels, eps=eps))


def channels_first_norm(channels: int, eps: float = 1e-6) -> nn.Sequential:
    """``N×C×H×W`` → LayerNorm over C → ``N×C×H×W`` (official key: ``<name>.1.weight``)."""
    return nn.Sequential(_Permute(0, 2, 3, 1), nn.LayerNorm(channels, eps=eps), _Permute(0, 3, 1, 2))


def channels_last_norm(channels: int, eps: float = 1e-6) -> nn.Sequential:
    """LayerNorm over the last dim of ``N×H×W×C`` (official key: ``<name>.0.weight``)."""
    return nn.Sequential(nn.LayerNorm(channels, eps=eps))


class DCNv3(nn.Module):
    """DCNv3 block operator: input projection, offsets and softmax weights predicted from a
    depth-wise conv of the input, deformable aggregation (:func:`dcnv3_core`), output projection.

    Input and output are channels-last ``N×H×W×C``. Parameter names equal the official
    ``ops_dcnv3.modules.DCNv3`` (``dw_conv.0``, ``dw_conv.1.1``, ``offset``, ``mask``,
    ``input_proj``, ``output_proj`` and, with ``center_feature_scale``,
    ``center_feature_scale_proj_weight``/``_bias``). Activation GELU, norm LayerNorm, as in
    every released InternImage.

    Args:
        channels: C, divisible by ``group``.
        kernel_size: k of the deformable sampling grid.
        dw_kernel_size: kernel of the depth-wise conv that predicts offsets (default k;
            InternImage-H uses 5).
        stride, pad, dilation: geometry of the sampling grid.
        group: G, number of groups with their own offsets and weights.
        offset_scale: scale of the sampling grid and offsets (2.0 for InternImage-L/XL).
        center_feature_scale: blend the output with the input projection by a learned
            per-group gate (InternImage-H/G).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        center_feature_scale: bool = False,
    ) -> None:
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"DCNv3: channels ({channels}) must be divisible by group ({group})")
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.offset_scale = offset_scale
        self.center_feature_scale = center_feature_scale
        points = kernel_size * kernel_size

        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels),
            channels_first_to_last_norm(channels),
            nn.GELU(),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: zero offsets and uniform weights (a regular grid at the
        start), Xavier projections."""
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        nn.init.zeros_(self.mask.weight)
        nn.init.zeros_(self.mask.bias)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N×H×W×C`` → ``N×H_out×W_out×C``."""
        value = self.input_proj(x)
        guide = self.dw_conv(rearrange(x, "n h w c -> n c h w"))  # N×H×W×C
        offset = self.offset(guide)
        mask = rearrange(self.mask(guide), "n h w (g p) -> n h w g p", g=self.group).softmax(-1)
        mask = rearrange(mask, "n h w g p -> n h w (g p)")
        out = dcnv3_core(
            value, offset, mask, self.kernel_size, self.stride, self.pad, self.dilation, self.group, self.offset_scale
        )
        if self.center_feature_scale:
            gate = F.linear(guide, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias).sigmoid()
            gate = gate.repeat_interleave(self.channels // self.group, dim=-1)
            out = out * (1 - gate) + value * gate
        return self.output_proj(out)

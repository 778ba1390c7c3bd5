"""CARAFE written straight from the formula, in float64, for tests only.

It gathers source pixels by index (oh // s + i - r), with a validity mask for taps outside the input,
so it shares no code or trick with the library's pad-and-slice implementation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def carafe_reference(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    x, m = features.double(), masks.double()
    n, channels, height, width = x.shape
    k, s, r = kernel_size, scale_factor, (kernel_size - 1) // 2
    out_rows, out_cols = torch.arange(height * s), torch.arange(width * s)
    group_of_channel = torch.arange(channels) // (channels // group_size)
    out = x.new_zeros(n, channels, height * s, width * s)
    for i in range(k):
        for j in range(k):
            rows, cols = out_rows // s + i - r, out_cols // s + j - r
            inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
            source = x[:, :, rows.clamp(0, height - 1)][:, :, :, cols.clamp(0, width - 1)]
            weight = m[:, group_of_channel * k * k + i * k + j]
            out = out + torch.where(inside, source * weight, 0.0)
    return out


def carafe_downsample_reference(features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                                scale_factor: int) -> Tensor:
    """CARAFE++ downsampling: out[n, c, oh, ow] = Σ_{i,j<k} X[n, c, s·oh + i - r, s·ow + j - r] · M[n, g(c)k² + ik + j,
    oh, ow], output ceil(H/s) × ceil(W/s), taps outside the input zero."""
    x, m = features.double(), masks.double()
    n, channels, height, width = x.shape
    k, s, r = kernel_size, scale_factor, (kernel_size - 1) // 2
    out_h, out_w = -(-height // s), -(-width // s)
    out_rows, out_cols = torch.arange(out_h), torch.arange(out_w)
    group_of_channel = torch.arange(channels) // (channels // group_size)
    out = x.new_zeros(n, channels, out_h, out_w)
    for i in range(k):
        for j in range(k):
            rows, cols = out_rows * s + i - r, out_cols * s + j - r
            inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
            source = x[:, :, rows.clamp(0, height - 1)][:, :, :, cols.clamp(0, width - 1)]
            weight = m[:, group_of_channel * k * k + i * k + j]
            out = out + torch.where(inside, source * weight, 0.0)
    return out

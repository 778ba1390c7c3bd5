"""The formulations the benchmarks compare our reassemblies against: the widely copied unfold + matmul CARAFE, and
the same for CARAFE++ downsampling.

(The rival upsampler DySample is a real YAML module, so it lives in the core: :class:`carafe_ultra.DySample`.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..module import CARAFE


def unfold_matmul_carafe(features: Tensor, masks: Tensor, kernel_size: int, scale_factor: int) -> Tensor:
    """The widely copied single-group CARAFE: pad, ``Tensor.unfold`` to (N, H, W, C, k²), matmul with the
    masks as (N, H, W, k², s²), then pixel_shuffle. Correct, but it materialises k² times the input.

    Kept only as the speed and memory baseline ("blog formulation"); same semantics as
    :func:`carafe_ultra.carafe` with ``group_size=1``.
    """
    n, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    r = (k - 1) // 2
    windows = F.pad(features, (r, r, r, r)).unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, k, k)
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(n, height, width, channels, k * k)
    weights = masks.view(n, k * k, height, s, width, s).permute(0, 2, 4, 1, 3, 5).reshape(n, height, width, k * k, s * s)
    out = torch.matmul(windows, weights)  # (N, H, W, C, s²)
    out = out.reshape(n, height, width, channels * s * s).permute(0, 3, 1, 2)
    return F.pixel_shuffle(out, s)


def unfold_matmul_carafe_downsample(features: Tensor, masks: Tensor, kernel_size: int, scale_factor: int) -> Tensor:
    """The public copies' single-group CARAFE++ downsampling: ``F.unfold`` of every output pixel's k×k window at stride
    s, (N, C·k², H/s·W/s), times the masks and summed over the taps. Correct, but it materialises k²/s² times the input
    (and a product of that size). Kept only as the speed and memory baseline; same semantics as
    :func:`carafe_ultra.carafe_downsample` with ``group_size=1``."""
    n, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    out_h, out_w = masks.shape[2:]
    windows = F.unfold(features, k, padding=(k - 1) // 2, stride=s).view(n, channels, k * k, out_h * out_w)
    return (windows * masks.view(n, 1, k * k, out_h * out_w)).sum(2).view(n, channels, out_h, out_w)


class UnfoldMatmulCARAFE(CARAFE):
    """Our CARAFE module with its reassembly done the blog way (unfold + matmul; one group only).

    Same parameters, mask prediction and result: only the reassembly differs, so timing the two modules side
    by side measures exactly what the formulation costs.
    """

    def __init__(self, c1: int, c2: int | None = None, kernel_size: int = 5, up_factor: int = 2, **kwargs) -> None:
        if kwargs.get("groups", 1) != 1:
            raise ValueError("UnfoldMatmulCARAFE supports groups=1 only (the formulation it reproduces)")
        super().__init__(c1, c2, kernel_size, up_factor, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        features = x if self.projection is None else self.projection(x)
        return unfold_matmul_carafe(features, self.masks(x), self.kernel_size, self.up_factor)

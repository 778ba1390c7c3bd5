"""Rival upsamplers that the benchmarks and the ablation compare CARAFE against, written from their papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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

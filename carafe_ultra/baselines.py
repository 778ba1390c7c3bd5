"""Rival upsamplers that the benchmarks and the ablation compare CARAFE against, written from their papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_divides, check_int
from .module import CARAFE


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


class DySample(nn.Module):
    """DySample (Liu et al., ICCV 2023), "LP" variant with the static scope factor: a 1×1 conv predicts
    2·groups·s² offsets per input pixel, scaled by ``scope`` and added to the positions of bilinear
    upsampling, then ``grid_sample`` reads the input there. At initialisation it is bilinear upsampling.

    Arguments follow Ultralytics' YAML convention like :class:`carafe_ultra.CARAFE` (``[c2, scale]`` in a
    row); DySample keeps the channels, so ``c2`` must equal ``c1`` when given.

    Shape: (N, c1, H, W) -> (N, c1, H·s, W·s); ``groups`` must divide c1.
    """

    def __init__(self, c1: int, c2: int | None = None, scale: int = 2, groups: int = 4, scope: float = 0.25) -> None:
        super().__init__()
        check_int("c1", c1, minimum=1)
        if c2 is not None and c2 != c1:
            raise ValueError(f"DySample keeps the channels: c2 must equal c1 ({c1}), got {c2}")
        check_int("scale", scale, minimum=1)
        check_int("groups", groups, minimum=1)
        check_divides("groups", groups, "channels (c1)", c1)
        self.scale, self.groups, self.scope = scale, groups, scope
        self.offset = nn.Conv2d(c1, 2 * groups * scale**2, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.zeros_(self.offset.bias)
        # Sub-pixel positions of bilinear upsampling (align_corners=False), in input pixels, per (dy, dx).
        steps = (torch.arange(scale, dtype=torch.float32) - (scale - 1) / 2) / scale
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
        start = torch.stack([dx.flatten(), dy.flatten()])  # (2, s²): x then y
        self.register_buffer("start", start[:, None].expand(2, groups, scale**2).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        s, g = self.scale, self.groups
        offsets = F.pixel_shuffle(self.offset(x) * self.scope + self.start, s)  # (N, 2·G, sH, sW)
        offsets = offsets.view(n, 2, g, s * height, s * width)
        rows = torch.arange(s * height, device=x.device, dtype=x.dtype) // s
        cols = torch.arange(s * width, device=x.device, dtype=x.dtype) // s
        px = (cols.view(1, 1, 1, -1) + offsets[:, 0] + 0.5) / width * 2 - 1  # grid_sample's [-1, 1] coordinates
        py = (rows.view(1, 1, -1, 1) + offsets[:, 1] + 0.5) / height * 2 - 1
        grid = torch.stack([px, py], dim=-1).view(n * g, s * height, s * width, 2).to(x.dtype)
        out = F.grid_sample(x.reshape(n * g, channels // g, height, width), grid, mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out.view(n, channels, s * height, s * width)

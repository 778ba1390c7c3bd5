"""The DySample upsampling module (Liu et al., ICCV 2023), a rival content-aware upsampler, as a YAML module."""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_divides, check_int, is_number


class DySample(nn.Module):
    """Point-sampling upsampler, a drop-in replacement for ``nn.Upsample(scale_factor=scale)``.

    DySample's "LP" variant with the static scope factor: a 1×1 conv predicts 2·groups·s² offsets per input
    pixel, scaled by ``scope`` and added to the sampling positions of bilinear upsampling; ``grid_sample`` then
    reads the input there. At initialisation (tiny offset weights, zero bias) it is bilinear upsampling.
    Written from the paper. Its backward pass (``grid_sample``'s) is not deterministic on CUDA.

    Arguments follow Ultralytics' YAML convention like :class:`carafe_ultra.CARAFE`: a row
    ``[-1, 1, DySample, [c2, scale]]`` gets ``c1`` prepended and ``c2`` scaled like ``Conv``'s. DySample keeps
    the channels, so ``c2`` must equal ``c1`` (give it the nominal channels of the layer feeding it).

    Args:
        c1 (int): input (and output) channels.
        c2 (int, optional): output channels; ``None`` or ``c1``.
        scale (int): integer upsampling factor s. Default: 2.
        groups (int): channel groups with their own offsets; must divide c1. Default: 4.
        scope (float): factor on the predicted offsets (0.25 in the paper keeps neighbours from overlapping).
            Default: 0.25.

    Shape:
        input (N, c1, H, W) -> output (N, c1, H·scale, W·scale).
    """

    def __init__(self, c1: int, c2: int | None = None, scale: int = 2, groups: int = 4, scope: float = 0.25) -> None:
        super().__init__()
        check_int("c1", c1, minimum=1)
        if c2 is not None and c2 != c1:
            raise ValueError(f"DySample keeps the channels: c2 must equal c1 ({c1}), got {c2}")
        check_int("scale", scale, minimum=1)
        check_int("groups", groups, minimum=1)
        check_divides("groups", groups, "channels (c1)", c1)
        if not (is_number(scope) and scope > 0):
            raise ValueError(f"scope must be a positive number, got {scope!r}")
        self.c1, self.scale, self.groups, self.scope = c1, scale, groups, float(scope)
        self.offset = nn.Conv2d(c1, 2 * groups * scale**2, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.zeros_(self.offset.bias)
        # Sub-pixel positions of bilinear upsampling (align_corners=False), in input pixels, per (dy, dx).
        steps = (torch.arange(scale, dtype=torch.float32) - (scale - 1) / 2) / scale
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
        start = torch.stack([dx.flatten(), dy.flatten()])  # (2, s²): x then y
        self.register_buffer("start", start[:, None].expand(2, groups, scale**2).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        offsets = F.pixel_shuffle(self.offset(x) * self.scope + self.start, self.scale)  # (N, 2·G, sH, sW)
        return _sample(x, offsets, self.groups, self.scale)

    def extra_repr(self) -> str:
        return f"c1={self.c1}, scale={self.scale}, groups={self.groups}, scope={self.scope}"


@torch.fx.wrap  # shape arithmetic: torch.fx records the call instead of tracing into it
def _sample(x: Tensor, offsets: Tensor, groups: int, scale: int) -> Tensor:
    """Bilinearly sample each group of ``x`` (N, C, H, W) at its source pixel plus ``offsets`` (N, 2·G, sH, sW)."""
    n, channels, height, width = x.shape
    offsets = offsets.view(n, 2, groups, scale * height, scale * width)
    rows = torch.arange(scale * height, device=x.device, dtype=x.dtype) // scale
    cols = torch.arange(scale * width, device=x.device, dtype=x.dtype) // scale
    px = (cols.view(1, 1, 1, -1) + offsets[:, 0] + 0.5) / width * 2 - 1  # grid_sample's [-1, 1] coordinates
    py = (rows.view(1, 1, -1, 1) + offsets[:, 1] + 0.5) / height * 2 - 1
    grid = torch.stack([px, py], dim=-1).view(n * groups, scale * height, scale * width, 2).to(x.dtype)
    out = F.grid_sample(x.reshape(n * groups, channels // groups, height, width), grid, mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.view(n, channels, scale * height, scale * width)

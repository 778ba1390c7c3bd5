"""ResNet stages of basic blocks (ResNet-18 and -34, He et al., CVPR 2016) as a YAML module: the backbone of
RT-DETR-R18, which Ultralytics does not ship (its ``ResNetLayer`` builds bottleneck blocks only)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with ReLU and a residual connection (a 1×1 conv + BatchNorm when the stride or
    the channels change).

    Shape:
        input (N, c1, H, W) -> output (N, c2, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, c1: int, c2: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c1, c2, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        changes = stride != 1 or c1 != c2
        self.shortcut = nn.Sequential(nn.Conv2d(c1, c2, 1, stride, bias=False), nn.BatchNorm2d(c2)) if changes \
            else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNetBasicLayer(nn.Module):
    """One ResNet stage of ``n`` basic blocks, the first with stride ``s``.

    A YAML row ``[-1, 1, ResNetBasicLayer, [c2, s, n]]`` gets ``c1`` prepended and ``c2`` scaled like ``Conv``'s;
    ResNet-18's stages are ``[64, 1, 2]``, ``[128, 2, 2]``, ``[256, 2, 2]`` and ``[512, 2, 2]`` after
    Ultralytics' ``ResNetLayer`` stem (7×7 conv, max pool).

    Args:
        c1 (int): input channels.
        c2 (int): output channels.
        s (int): stride of the first block. Default: 1.
        n (int): number of blocks. Default: 2.

    Shape:
        input (N, c1, H, W) -> output (N, c2, ceil(H / s), ceil(W / s)).
    """

    def __init__(self, c1: int, c2: int, s: int = 1, n: int = 2) -> None:
        super().__init__()
        check_int("c1", c1, minimum=1)
        check_int("c2", c2, minimum=1)
        check_int("s", s, minimum=1)
        check_int("n", n, minimum=1)
        self.layer = nn.Sequential(BasicBlock(c1, c2, s), *(BasicBlock(c2, c2) for _ in range(n - 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

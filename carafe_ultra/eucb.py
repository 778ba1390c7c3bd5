"""The EUCB upsampling block (EMCAD, Rahman et al., CVPR 2024), a rival upsampler users compare CARAFE with."""

from __future__ import annotations

from torch import Tensor, nn

from ._checks import check_int


class EUCB(nn.Module):
    """Efficient up-convolution block, a drop-in replacement for ``nn.Upsample(scale_factor=scale)``.

    Nearest upsampling by ``scale``, a depthwise ``kernel_size``×``kernel_size`` conv, BatchNorm and ReLU, then a 1×1
    conv to ``c2`` channels. Written from the paper's description; not content-aware (the same weights at every
    position), so it exports as plain convolutions everywhere.

    Arguments follow Ultralytics' YAML convention like :class:`carafe_ultra.CARAFE`: a row
    ``[-1, 1, EUCB, [c2, scale]]`` gets ``c1`` prepended and ``c2`` scaled like ``Conv``'s.

    Args:
        c1 (int): input channels.
        c2 (int, optional): output channels. ``None`` keeps ``c1``. Default: None.
        scale (int): integer upsampling factor s. Default: 2.
        kernel_size (int): odd kernel of the depthwise conv. Default: 3.

    Shape:
        input (N, c1, H, W) -> output (N, c2, H·scale, W·scale).
    """

    def __init__(self, c1: int, c2: int | None = None, scale: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        check_int("c1", c1, minimum=1)
        if c2 is not None:
            check_int("c2", c2, minimum=1)
        check_int("scale", scale, minimum=1)
        check_int("kernel_size", kernel_size, minimum=1, odd=True)
        self.c1, self.c2, self.scale, self.kernel_size = c1, c1 if c2 is None else c2, scale, kernel_size
        self.upsample = nn.Upsample(scale_factor=scale, mode="nearest")
        self.depthwise = nn.Conv2d(c1, c1, kernel_size, padding=kernel_size // 2, groups=c1, bias=False)
        self.norm = nn.BatchNorm2d(c1)
        self.act = nn.ReLU(inplace=True)
        self.pointwise = nn.Conv2d(c1, self.c2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.act(self.norm(self.depthwise(self.upsample(x)))))

    def extra_repr(self) -> str:
        return f"c1={self.c1}, c2={self.c2}, scale={self.scale}, kernel_size={self.kernel_size}"

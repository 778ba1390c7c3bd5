"""The CARAFE++ downsampling module: predicts reassembly masks at the low resolution, reassembles, then a 1×1 Conv."""

from __future__ import annotations

import torch.fx
from torch import Tensor, nn

from ._checks import check_divides, check_int, checked_input
from .functional import carafe_downsample


class CARAFEDown(nn.Module):
    """Content-aware downsampler (CARAFE++, Wang et al., TPAMI 2021), a drop-in replacement for a stride-s
    ``Conv(c1, c2, 3, s)`` row of an Ultralytics neck.

    A 1×1 compressor (c1 -> compressed_channels) and an ``encoder_kernel_size`` conv of stride ``scale_factor``
    predict ``group_size·k²`` logits per output pixel; a softmax over each group's k² taps gives the masks for
    :func:`carafe_ultra.carafe_downsample`. The reassembled c1 channels then go through Ultralytics' own
    ``Conv(c1, c2, 1)`` (conv, BatchNorm, SiLU), so the module gives the row it replaces the same output channels
    and the same kind of output. Initialised like CARAFE: near-uniform masks at the start (average pooling over the
    k×k window).

    Arguments follow Ultralytics' YAML convention: a row ``[-1, 1, CARAFEDown, [c2, 5, 2]]`` gets ``c1`` prepended
    and ``c2`` scaled like ``Conv``'s.

    Args:
        c1 (int): input channels.
        c2 (int): output channels.
        kernel_size (int): odd reassembly window k. Default: 5.
        scale_factor (int): integer stride s. Default: 2.
        encoder_kernel_size (int): odd kernel of the mask encoder conv. Default: 3.
        compressed_channels (int): channels of the compressor's output. Default: 16.
        group_size (int): channel groups with their own masks; must divide c1. Default: 1.

    Shape:
        input (N, c1, H, W) -> output (N, c2, ceil(H / scale_factor), ceil(W / scale_factor)).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        kernel_size: int = 5,
        scale_factor: int = 2,
        encoder_kernel_size: int = 3,
        compressed_channels: int = 16,
        group_size: int = 1,
    ) -> None:
        super().__init__()
        check_int("c1", c1, minimum=1)
        check_int("c2", c2, minimum=1)
        check_int("kernel_size", kernel_size, minimum=1, odd=True)
        check_int("scale_factor", scale_factor, minimum=1)
        check_int("encoder_kernel_size", encoder_kernel_size, minimum=1, odd=True)
        check_int("compressed_channels", compressed_channels, minimum=1)
        check_int("group_size", group_size, minimum=1)
        check_divides("group_size", group_size, "input channels (c1)", c1)
        # Imported here, not at the top: `import carafe_ultra` works without Ultralytics (the ops alone).
        from ultralytics.nn.modules import Conv

        self.c1, self.c2 = c1, c2
        self.kernel_size, self.scale_factor, self.group_size = kernel_size, scale_factor, group_size
        self.compressor = nn.Conv2d(c1, compressed_channels, 1)
        # Padding k_enc // 2 at stride s gives ceil(H / s) rows: one logit vector per output pixel.
        self.encoder = nn.Conv2d(compressed_channels, group_size * kernel_size**2, encoder_kernel_size,
                                 stride=scale_factor, padding=encoder_kernel_size // 2)
        self.conv = Conv(c1, c2, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CARAFE's initialisation for the mask predictor: xavier, then a tiny encoder so masks start near uniform.
        The output Conv keeps Ultralytics' initialisation."""
        for conv in (self.compressor, self.encoder):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.encoder.weight, std=1e-3)

    def masks(self, x: Tensor) -> Tensor:
        """Reassembly masks (N, group_size·k², ceil(H/s), ceil(W/s)), softmax-normalised over each group's k² taps."""
        logits = self.encoder(self.compressor(x))
        return logits.unflatten(1, (self.group_size, self.kernel_size**2)).softmax(dim=2).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = checked_input(x, self.c1, "CARAFEDown")
        reassembled = carafe_downsample(x, self.masks(x), self.kernel_size, self.group_size, self.scale_factor)
        return self.conv(reassembled)

    def extra_repr(self) -> str:
        return (f"c1={self.c1}, c2={self.c2}, kernel_size={self.kernel_size}, scale_factor={self.scale_factor}, "
                f"group_size={self.group_size}")


# torch.fx records calls to these instead of tracing into them: their checks look at real shapes.
torch.fx.wrap("carafe_downsample")
torch.fx.wrap("checked_input")

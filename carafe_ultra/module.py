"""The CARAFE upsampling module: predicts reassembly masks from the input, then reassembles it."""

from __future__ import annotations

import math

import torch
import torch.fx
from torch import Tensor, nn

from ._checks import check_divides, check_int, checked_input, is_number
from .backends import exported_from_predictor, is_exporting, masks_from_logits
from .functional import carafe


class CARAFE(nn.Module):
    """Content-aware upsampler, a drop-in replacement for ``nn.Upsample(scale_factor=up_factor)``.

    A 1×1 compressor (c1 -> compressed_channels) and an ``encoder_kernel`` conv predict
    ``groups·k²·s²`` logits per input pixel; ``pixel_shuffle(s)`` moves them to the output grid and a
    softmax over each group's k² taps gives the masks for :func:`carafe_ultra.carafe` (mmcv's CARAFEPack
    convention, paper initialisation: near-uniform averaging at the start).

    The first four arguments match the widely copied ``CARAFE(c1, c2, kernel_size, up_factor)``, so YAML
    rows such as ``[-1, 1, CARAFE, [256, 3, 2]]`` keep working.

    Args:
        c1 (int): input channels.
        c2 (int, optional): output channels. ``None`` or ``c1`` keeps them; anything else adds a 1×1
            projection, applied before reassembly (s² times cheaper than after, same expressiveness).
        kernel_size (int): odd reassembly window k. Default: 5.
        up_factor (int): integer scale s. Default: 2.
        encoder_kernel (int): odd kernel of the mask encoder conv. Default: 3.
        compressed_channels (int): channels of the compressor's output. Default: 64.
        groups (int): channel groups with their own masks; must divide the output channels. Default: 1.
        centre_weight (float, optional): the mask weight each window's centre tap starts with, in
            [1/k², 1). ``None`` (the paper): near-uniform k×k averaging at the start; e.g. 0.8 starts close to
            nearest upsampling, which suits fine-tuning weights trained with ``nn.Upsample``. Default: None.

    Shape:
        input (N, c1, H, W) -> output (N, c2, H·up_factor, W·up_factor).
    """

    def __init__(
        self,
        c1: int,
        c2: int | None = None,
        kernel_size: int = 5,
        up_factor: int = 2,
        encoder_kernel: int = 3,
        compressed_channels: int = 64,
        groups: int = 1,
        centre_weight: float | None = None,
    ) -> None:
        super().__init__()
        check_int("c1", c1, minimum=1)
        if c2 is not None:
            check_int("c2", c2, minimum=1)
        check_int("kernel_size", kernel_size, minimum=1, odd=True)
        check_int("up_factor", up_factor, minimum=1)
        check_int("encoder_kernel", encoder_kernel, minimum=1, odd=True)
        check_int("compressed_channels", compressed_channels, minimum=1)
        check_int("groups", groups, minimum=1)
        out_channels = c1 if c2 is None else c2
        check_divides("groups", groups, "output channels (c2)", out_channels)
        if centre_weight is not None and not (is_number(centre_weight) and 1 / kernel_size**2 <= centre_weight < 1):
            raise ValueError(
                f"centre_weight must be None or a number in [1/kernel_size**2, 1) = [{1 / kernel_size**2:.4g}, 1), "
                f"got {centre_weight!r}"
            )

        self.c1, self.c2 = c1, out_channels
        self.kernel_size, self.up_factor, self.groups = kernel_size, up_factor, groups
        self.centre_weight = centre_weight
        self.compressor = nn.Conv2d(c1, compressed_channels, 1)
        self.encoder = nn.Conv2d(
            compressed_channels, groups * kernel_size**2 * up_factor**2, encoder_kernel, padding=encoder_kernel // 2
        )
        self.projection = nn.Conv2d(c1, out_channels, 1) if out_channels != c1 else None
        self.reset_parameters()

    centre_weight: float | None = None  # checkpoints pickled before the argument existed have none

    def reset_parameters(self) -> None:
        """Paper initialisation: xavier everywhere, then a tiny encoder so masks start near uniform; with
        ``centre_weight``, the encoder's bias tilts every window's softmax towards its centre tap."""
        for conv in (self.compressor, self.encoder, self.projection):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.encoder.weight, std=1e-3)
        if self.centre_weight is not None:
            taps = self.kernel_size**2
            # softmax(b at the centre, 0 elsewhere) gives the centre e^b / (e^b + taps - 1) = centre_weight.
            logit = math.log(self.centre_weight * (taps - 1) / (1 - self.centre_weight))
            # Encoder channel (g·k² + tap)·s² + dy·s + dx becomes mask channel g·k² + tap after pixel_shuffle.
            with torch.no_grad():
                bias = self.encoder.bias.view(self.groups, taps, self.up_factor**2)
                bias[:, taps // 2] = logit

    def masks(self, x: Tensor) -> Tensor:
        """Reassembly masks (N, groups·k², H·s, W·s), softmax-normalised over each group's k² taps."""
        return masks_from_logits(self.encoder(self.compressor(x)), self.kernel_size, self.groups, self.up_factor)

    def forward(self, x: Tensor) -> Tensor:
        x = checked_input(x, self.c1, "CARAFE")
        features = x if self.projection is None else self.projection(x)
        compressed = self.compressor(x)
        if is_exporting():  # the export form predicts and normalises the masks in its own layout (the same values)
            return exported_from_predictor(features, compressed, self.encoder, self.kernel_size, self.groups,
                                           self.up_factor)
        logits = self.encoder(compressed)
        return carafe(features, masks_from_logits(logits, self.kernel_size, self.groups, self.up_factor),
                      self.kernel_size, self.groups, self.up_factor)

    def extra_repr(self) -> str:
        centre = "" if self.centre_weight is None else f", centre_weight={self.centre_weight}"
        return (f"c1={self.c1}, c2={self.c2}, kernel_size={self.kernel_size}, up_factor={self.up_factor}, "
                f"groups={self.groups}{centre}")


# torch.fx (and torchvision's create_feature_extractor) records calls to these instead of tracing into them:
# their checks look at real shapes, which symbolic tracing does not have.
torch.fx.wrap("carafe")
torch.fx.wrap("checked_input")

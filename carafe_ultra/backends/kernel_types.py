"""What the CUDA path and its kernel launchers share: the specialisation a kernel is built for, the launcher
interface (the seam where tests plug in the host shim, or faults), and the error a launcher raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .kernel_variants import DOWN_VARIANTS, KERNELS, SELECTED, Variant, variant

# The storage types of kernels/carafe.cu, by dtype.
STORAGE_TYPES = {torch.float32: "float", torch.float16: "half_bits", torch.bfloat16: "bf16_bits"}


def _selected(kernel: str):
    return field(default_factory=lambda: SELECTED[kernel])  # the table as it is when the specialisation is made


@dataclass(frozen=True)
class Specialisation:
    """One compiled module of kernels/carafe.cu: storage types of features and masks, window, scale, and the variant
    of each kernel (by default the table's, :data:`carafe_ultra.backends.kernel_variants.SELECTED`)."""

    features: torch.dtype
    masks: torch.dtype
    kernel_size: int
    scale_factor: int
    forward: str = _selected("forward")
    backward_masks: str = _selected("backward_masks")
    backward_features: str = _selected("backward_features")

    def __post_init__(self) -> None:
        for kernel in KERNELS:
            variant(kernel, getattr(self, kernel))  # an unknown variant fails here, not in the compiler

    def variant(self, kernel: str) -> Variant:
        """The variant of ``kernel`` this module runs (the downsampling's kernels have one design each)."""
        return DOWN_VARIANTS[kernel] if kernel in DOWN_VARIANTS else variant(kernel, getattr(self, kernel))

    def defines(self) -> tuple[str, ...]:
        """The -D options that build this module of kernels/carafe.cu."""
        return (f"-DCARAFE_K={self.kernel_size}", f"-DCARAFE_S={self.scale_factor}",
                f"-DCARAFE_FEATURES={STORAGE_TYPES[self.features]}", f"-DCARAFE_MASKS={STORAGE_TYPES[self.masks]}",
                *(f"-DCARAFE_{kernel.upper()}={getattr(self, kernel)}" for kernel in KERNELS))

    def __str__(self) -> str:
        features, masks = (str(dtype).removeprefix("torch.") for dtype in (self.features, self.masks))
        variants = ", ".join(f"{kernel} {getattr(self, kernel)}" for kernel in KERNELS)
        return (f"features {features}, masks {masks}, kernel_size {self.kernel_size}, scale_factor {self.scale_factor} "
                f"(variants: {variants})")


class KernelError(RuntimeError):
    """A launcher could not run a kernel. ``kind`` says which step failed: "compile", "library" or "launch"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Launcher(Protocol):
    """Runs one entry point of kernels/carafe.cu over a launch grid."""

    def unavailable(self, device: torch.device) -> str | None:
        """Why this launcher cannot run kernels on tensors of ``device`` (None: it can)."""

    def launch(self, spec: Specialisation, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        """Run ``carafe_<name>`` (forward, backward_masks, backward_features or their down_ counterparts) of ``spec``
        over ``grid`` blocks of ``block`` threads; ``args`` are tensors (passed as pointers) and ints (passed as 64-bit integers). Raises
        :class:`KernelError`."""

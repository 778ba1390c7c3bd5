"""What the CUDA path and its kernel launchers share: the specialisation a kernel is built for, the launcher
interface (the seam where tests plug in the host shim, or faults), and the error a launcher raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

# The storage types of kernels/carafe.cu, by dtype.
STORAGE_TYPES = {torch.float32: "float", torch.float16: "half_bits", torch.bfloat16: "bf16_bits"}


@dataclass(frozen=True)
class Specialisation:
    """One compiled variant of the kernels: storage types of features and masks, window and scale."""

    features: torch.dtype
    masks: torch.dtype
    kernel_size: int
    scale_factor: int

    def defines(self) -> tuple[str, ...]:
        """The -D options that select this variant of kernels/carafe.cu."""
        return (f"-DCARAFE_K={self.kernel_size}", f"-DCARAFE_S={self.scale_factor}",
                f"-DCARAFE_FEATURES={STORAGE_TYPES[self.features]}", f"-DCARAFE_MASKS={STORAGE_TYPES[self.masks]}")

    def __str__(self) -> str:
        features, masks = (str(dtype).removeprefix("torch.") for dtype in (self.features, self.masks))
        return f"features {features}, masks {masks}, kernel_size {self.kernel_size}, scale_factor {self.scale_factor}"


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
        """Run ``carafe_<name>`` of ``spec`` over ``grid`` blocks of ``block`` threads; ``args`` are tensors
        (passed as pointers) and ints (passed as 64-bit integers). Raises :class:`KernelError`."""

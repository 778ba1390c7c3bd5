"""A kernel launcher for the tests that injects faults, around another (usually the host shim,
:class:`carafe_ultra.experiments.host_shim.HostShimLauncher`). Plug it in with
``carafe_ultra.backends.cuda_backend.use_launcher``."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from carafe_ultra.backends.kernel_types import KernelError, Launcher, Specialisation
from carafe_ultra.experiments.host_shim import HostShimLauncher

__all__ = ["FaultyLauncher", "HostShimLauncher"]


class FaultyLauncher:
    """Passes launches on to ``inner`` and counts them by kernel (``launches``; ``variants`` records which variant
    each ran), failing the way ``fault`` says for the specialisations ``affects`` accepts: "compile", "library" or "launch" raise a KernelError of that kind; "wrong" adds 0.5 to
    the forward output; "nan" writes NaN into the masks gradient (of either operation)."""

    def __init__(self, inner: Launcher, fault: str | None = None, affects=lambda spec: True) -> None:
        self.inner, self.fault, self.affects = inner, fault, affects
        self.launches: Counter = Counter()
        self.variants: list[str] = []
        self.dtypes: list[tuple[torch.dtype, ...]] = []

    def unavailable(self, device: torch.device) -> str | None:
        return self.inner.unavailable(device)

    def launch(self, spec: Specialisation, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        self.launches[name] += 1
        self.variants.append(f"{name}_{spec.variant(name).name}")
        self.dtypes.append(tuple(a.dtype for a in args if isinstance(a, Tensor)))
        faulty = self.fault is not None and self.affects(spec)
        if faulty and self.fault in ("compile", "library", "launch"):
            raise KernelError(self.fault, f"injected {self.fault} fault")
        self.inner.launch(spec, name, grid, block, args)
        if faulty and self.fault == "wrong" and name.removeprefix("down_") == "forward":
            args[2].add_(0.5)
        if faulty and self.fault == "nan" and name.removeprefix("down_") == "backward_masks":
            args[2].view(-1)[0] = float("nan")

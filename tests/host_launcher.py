"""Kernel launchers for the tests: the host shim, which runs kernels/carafe.cu on CPU tensors, and a wrapper
that injects faults. Plug either in with ``carafe_ultra.backends.cuda_backend.use_launcher``."""

from __future__ import annotations

import ctypes
import subprocess
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from carafe_ultra.backends.cupy_launcher import KERNEL_DIR
from carafe_ultra.backends.kernel_types import KernelError, Launcher, Specialisation


class HostShimLauncher:
    """Builds each specialisation of carafe.cu with g++ through host_shim.cpp (once) and runs it on CPU tensors,
    walking the launch grid the GPU would run."""

    def __init__(self, build_dir: Path) -> None:
        self.build_dir = Path(build_dir)
        self._libraries: dict[Specialisation, ctypes.CDLL] = {}

    def unavailable(self, device: torch.device) -> str | None:
        return None if device.type == "cpu" else f"the host shim runs CPU tensors, got {device}"

    def library(self, spec: Specialisation) -> ctypes.CDLL:
        if spec not in self._libraries:
            name = "carafe_" + "_".join(d.split("=")[1] for d in spec.defines()) + ".so"
            path = self.build_dir / name
            build = subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", *spec.defines(),
                                    str(KERNEL_DIR / "host_shim.cpp"), "-o", str(path)], capture_output=True, text=True)
            if build.returncode:
                raise KernelError("compile", build.stderr[-2000:])
            self._libraries[spec] = ctypes.CDLL(str(path))
        return self._libraries[spec]

    def launch(self, spec: Specialisation, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        emulate = getattr(self.library(spec), f"emulate_carafe_{name}")
        emulate(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block),
                *(ctypes.c_void_p(a.data_ptr()) if isinstance(a, Tensor) else ctypes.c_longlong(a) for a in args))


class FaultyLauncher:
    """Passes launches on to ``inner`` and counts them, failing the way ``fault`` says for the specialisations
    ``affects`` accepts: "compile", "library" or "launch" raise a KernelError of that kind; "wrong" adds 0.5 to
    the forward output; "nan" writes NaN into the masks gradient."""

    def __init__(self, inner: Launcher, fault: str | None = None, affects=lambda spec: True) -> None:
        self.inner, self.fault, self.affects = inner, fault, affects
        self.launches: Counter = Counter()
        self.dtypes: list[tuple[torch.dtype, ...]] = []

    def unavailable(self, device: torch.device) -> str | None:
        return self.inner.unavailable(device)

    def launch(self, spec: Specialisation, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        self.launches[name] += 1
        self.dtypes.append(tuple(a.dtype for a in args if isinstance(a, Tensor)))
        faulty = self.fault is not None and self.affects(spec)
        if faulty and self.fault in ("compile", "library", "launch"):
            raise KernelError(self.fault, f"injected {self.fault} fault")
        self.inner.launch(spec, name, grid, block, args)
        if faulty and self.fault == "wrong" and name == "forward":
            args[2].add_(0.5)
        if faulty and self.fault == "nan" and name == "backward_masks":
            args[2].view(-1)[0] = float("nan")

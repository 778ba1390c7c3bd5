"""A kernel launcher that runs kernels/carafe.cu on CPU tensors: the very same source built with g++ through
kernels/host_shim.cpp, walking the launch grid the GPU would run (a block's threads phase by phase between
barriers). The tests, and ``gpu-check --dry-run``, plug it into the CUDA path with
``carafe_ultra.backends.cuda_backend.use_launcher``."""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ..backends.cupy_launcher import KERNEL_DIR
from ..backends.kernel_types import KernelError, Specialisation


class HostShimLauncher:
    """Builds each specialisation of carafe.cu with g++ (once) into ``build_dir`` (a temporary folder by default)
    and runs its entry points on CPU tensors."""

    def __init__(self, build_dir: str | Path | None = None) -> None:
        if build_dir is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="carafe-shim-")
            build_dir = self._temporary.name
        self.build_dir = Path(build_dir)
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self._libraries: dict[Specialisation, ctypes.CDLL] = {}

    def unavailable(self, device: torch.device) -> str | None:
        return None if device.type == "cpu" else f"the host shim runs CPU tensors, got {device}"

    def library(self, spec: Specialisation) -> ctypes.CDLL:
        """The shared library of ``spec``, built on first use."""
        if spec not in self._libraries:
            name = "carafe_" + "_".join(d.split("=")[1] for d in spec.defines()) + ".so"  # one per module
            path = self.build_dir / name
            build = subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror",
                                    *spec.defines(), str(KERNEL_DIR / "host_shim.cpp"), "-o", str(path)],
                                   capture_output=True, text=True)
            if build.returncode:
                raise KernelError("compile", build.stderr[-2000:])
            self._libraries[spec] = ctypes.CDLL(str(path))
        return self._libraries[spec]

    def launch(self, spec: Specialisation, name: str, grid: tuple[int, int], block: int, args: tuple,
               first_block: int = 0) -> None:
        """Run ``carafe_<name>`` over ``grid`` blocks of ``block`` threads (the blocks from ``first_block`` on);
        ``args`` are tensors (their data pointers) or ints (or pointers, as ints)."""
        emulate = getattr(self.library(spec), f"emulate_carafe_{name}")
        diverged = emulate(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block),
                           ctypes.c_uint(first_block), *(_argument(a) for a in args))
        if diverged:
            raise KernelError("launch", f"carafe_{name}: the threads of a block did not all reach the same barriers")


def _argument(value: Tensor | int) -> ctypes.c_void_p | ctypes.c_longlong:
    return ctypes.c_void_p(value.data_ptr()) if isinstance(value, Tensor) else ctypes.c_longlong(value)

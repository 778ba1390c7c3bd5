"""The launcher that runs kernels/carafe.cu on NVIDIA GPUs: NVRTC through CuPy RawModules.

Kernels are compiled once per specialisation (CuPy also caches the binary on disk) and loaded once per device,
cached at module level, so CARAFE modules stay picklable and deep-copyable. Launches go to PyTorch's current
stream on the tensors' own device. Every failure leaves as a :class:`KernelError` that says which step failed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

from .kernel_types import KernelError, Specialisation

KERNEL_DIR = Path(__file__).parent / "kernels"
KERNEL_SOURCE = KERNEL_DIR / "carafe.cu"


@functools.cache
def cupy_importable() -> bool:
    """Whether CuPy can be imported (looked up once per process)."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def nvrtc_options(spec: Specialisation) -> tuple[str, ...]:
    """Compiler options of one specialisation; the tests compile with exactly these."""
    return (*spec.defines(), "--std=c++14")


@functools.cache
def _module(spec: Specialisation):
    """One specialisation of kernels/carafe.cu, compiled on first use."""
    import cupy

    return cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=nvrtc_options(spec))


@functools.cache
def _kernel(device_index: int, spec: Specialisation, name: str):
    """One entry point loaded on one device, cached for the process (never on module instances)."""
    import cupy

    with cupy.cuda.Device(device_index):
        return _module(spec).get_function(f"carafe_{name}")


class CupyLauncher:
    """Runs the kernels on CUDA tensors (the default launcher of the CUDA path)."""

    def unavailable(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"the CUDA kernels need CUDA tensors, got {device}"
        if not cupy_importable():
            return ("CuPy is not installed; install the extra that matches your CUDA driver: "
                    'pip install "carafe-ultra[cuda12]" or "carafe-ultra[cuda13]"')
        return None

    def launch(self, spec: Specialisation, name: str, grid: tuple[int, int], block: int, args: tuple) -> None:
        try:
            import cupy
            import numpy as np
            from cupy.cuda.compiler import CompileException
        except Exception as error:  # a broken CuPy install raises more than ImportError
            raise KernelError("library", f"CuPy cannot be loaded ({type(error).__name__}: {error})") from error
        device = args[0].device.index
        try:
            kernel = _kernel(device, spec, name)
        except CompileException as error:
            raise KernelError("compile", f"NVRTC could not compile carafe_{name}: {error}") from error
        except Exception as error:
            # CuPy reports a CUDA library it cannot open (libnvrtc, ...) as an error caused by an OSError.
            if isinstance(error, (ImportError, OSError)) or isinstance(error.__cause__, OSError):
                raise KernelError("library", f"a CUDA library did not load ({type(error).__name__}: {error})") from error
            raise KernelError("launch", f"loading carafe_{name} failed ({type(error).__name__}: {error})") from error
        # Pointers travel as 64-bit integers (bfloat16 tensors have no __cuda_array_interface__), sizes as int64.
        params = tuple(np.uint64(a.data_ptr()) if isinstance(a, Tensor) else np.int64(a) for a in args)
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(args[0].device).cuda_stream, device)
        try:
            with cupy.cuda.Device(device), stream:
                kernel(grid, (block,), params)
        except Exception as error:
            raise KernelError("launch", f"carafe_{name} did not launch ({type(error).__name__}: {error})") from error

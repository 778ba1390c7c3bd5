"""The one place that decides which implementation runs a CARAFE call.

- TorchScript tracing/scripting or ONNX export: :func:`carafe_traceable`, plain PyTorch ops a tracer can record.
- Features and masks of float32/float16/bfloat16 (each its own) on a device the kernel launcher serves (CUDA
  with CuPy importable): the kernels, :func:`carafe_cuda` (which falls back to the PyTorch path by itself for a
  specialisation that fails its first-use check).
- Everything else (CPU, float64): the PyTorch path, :func:`carafe_torch`. CUDA tensors that land here for want
  of CuPy say so, once.
- ``CARAFE_ULTRA_BACKEND=torch`` or ``=cupy`` forces one (``auto``, the default, decides as above); forcing
  ``cupy`` where the kernels cannot run raises an error saying why.

Callers go through :func:`carafe_ultra.carafe`; backends receive checked inputs.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .choice import BACKEND_VARIABLE, backend_choice
from .cuda_backend import SUPPORTED_DTYPES, carafe_cuda, launcher_unavailable
from .torch_backend import carafe_torch, carafe_traceable

Backend = Callable[[Tensor, Tensor, int, int, int], Tensor]


def is_exporting() -> bool:
    """True while TorchScript traces/scripts or ONNX exports: only plain torch ops may run then."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"carafe-ultra: CARAFE runs its (slower) PyTorch path on CUDA tensors: {reason}.", stacklevel=4)


def select_backend(features: Tensor, masks: Tensor) -> Backend:
    """Return the implementation for these (already checked) inputs."""
    choice = backend_choice()
    exporting = is_exporting()
    if choice == "torch" or (choice == "auto" and exporting):
        return carafe_traceable if exporting else carafe_torch
    if exporting:
        reason = "tracers and exporters record plain PyTorch ops only"
    elif features.dtype not in SUPPORTED_DTYPES or masks.dtype not in SUPPORTED_DTYPES:
        reason = (f"the CUDA kernels take float32, float16 or bfloat16, got {features.dtype} features and "
                  f"{masks.dtype} masks")  # float64 takes the PyTorch path by design: no warning
    else:
        reason = launcher_unavailable(features.device)
        if reason is None:
            return carafe_cuda
        if features.is_cuda and choice == "auto":
            _warn_once(reason)
    if choice == "cupy":
        raise ValueError(f"{BACKEND_VARIABLE}=cupy, but {reason}")
    return carafe_torch


__all__ = ["BACKEND_VARIABLE", "Backend", "backend_choice", "carafe_cuda", "carafe_torch", "carafe_traceable",
           "is_exporting", "select_backend"]

"""The one place that decides which implementation runs a CARAFE call.

- TorchScript tracing/scripting or ONNX export: :func:`carafe_traceable`, plain PyTorch ops a tracer can record.
- CUDA tensor in float32/float16/bfloat16 with CuPy importable: the CUDA kernels (:mod:`.cuda_backend`).
- Everything else (CPU, float64): the PyTorch path, :func:`carafe_torch`.
- ``CARAFE_ULTRA_BACKEND=torch`` or ``=cupy`` forces one (``auto``, the default, decides as above).

Callers go through :func:`carafe_ultra.carafe`; backends receive checked inputs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .cuda_backend import SUPPORTED_DTYPES, carafe_cuda, cupy_importable
from .torch_backend import carafe_torch, carafe_traceable

Backend = Callable[[Tensor, Tensor, int, int, int], Tensor]
BACKEND_VARIABLE = "CARAFE_ULTRA_BACKEND"
_CHOICES = ("auto", "torch", "cupy")


def is_exporting() -> bool:
    """True while TorchScript traces/scripts or ONNX exports: only plain torch ops may run then."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@functools.lru_cache(maxsize=None)
def _warn_no_cupy() -> None:  # cached: once per process
    warnings.warn(
        "carafe-ultra: CUDA tensors but CuPy is not installed, so CARAFE runs its (slower) PyTorch path. "
        'Install the matching extra: pip install "carafe-ultra[cuda12]" or "carafe-ultra[cuda13]".',
        stacklevel=4,
    )


def select_backend(features: Tensor, masks: Tensor) -> Backend:
    """Return the implementation for these (already checked) inputs."""
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{BACKEND_VARIABLE} must be one of {', '.join(_CHOICES)}, got {choice!r}")
    exporting = is_exporting()
    if choice == "torch" or (choice == "auto" and exporting):
        return carafe_traceable if exporting else carafe_torch
    kernel_dtypes = features.dtype in SUPPORTED_DTYPES and masks.dtype in SUPPORTED_DTYPES
    if choice == "cupy":
        if not (features.is_cuda and kernel_dtypes) or exporting:
            raise ValueError(
                f"{BACKEND_VARIABLE}=cupy needs CUDA tensors of float32/float16/bfloat16 outside tracing and export, "
                f"got {features.dtype} on {features.device}"
            )
        if not cupy_importable():
            raise RuntimeError(f"{BACKEND_VARIABLE}=cupy but CuPy cannot be imported")
        return carafe_cuda
    if features.is_cuda and kernel_dtypes:
        if cupy_importable():
            return carafe_cuda
        _warn_no_cupy()
    return carafe_torch


__all__ = ["BACKEND_VARIABLE", "Backend", "carafe_cuda", "carafe_torch", "carafe_traceable", "is_exporting", "select_backend"]

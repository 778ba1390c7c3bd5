"""The one place that decides which implementation runs a CARAFE call.

- CUDA tensor in float32/float16/bfloat16, CuPy importable, not tracing/scripting/exporting: the CUDA kernels.
- Everything else (CPU, float64, TorchScript tracing, ONNX export): plain PyTorch ops.
- ``CARAFE_ULTRA_BACKEND=torch`` or ``=cupy`` forces one (``auto``, the default, decides as above).

Callers go through :func:`carafe_ultra.carafe`; backends receive checked inputs of one dtype.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

from torch import Tensor

from .._checks import is_exporting
from .cupy_backend import SUPPORTED_DTYPES
from .torch_backend import carafe_torch

Backend = Callable[[Tensor, Tensor, int, int, int], Tensor]
BACKEND_VARIABLE = "CARAFE_ULTRA_BACKEND"
_CHOICES = ("auto", "torch", "cupy")


@functools.lru_cache(maxsize=None)
def cupy_backend() -> Backend | None:
    """The CUDA backend, or None when CuPy cannot be imported (looked up once per process)."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return None
    from .cupy_backend import carafe_cupy

    return carafe_cupy


@functools.lru_cache(maxsize=None)
def _warn_no_cupy() -> None:  # cached: once per process
    warnings.warn(
        "carafe-ultra: CUDA tensors but CuPy is not installed, so CARAFE runs its (slower) PyTorch path. "
        'Install the matching extra: pip install "carafe-ultra[cuda12]" or "carafe-ultra[cuda13]".',
        stacklevel=4,
    )


def select_backend(features: Tensor) -> Backend:
    """Return the implementation for these (already checked, same-dtype) inputs."""
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{BACKEND_VARIABLE} must be one of {', '.join(_CHOICES)}, got {choice!r}")
    if choice == "torch":
        return carafe_torch
    runnable = features.is_cuda and features.dtype in SUPPORTED_DTYPES and not is_exporting()
    if choice == "cupy":
        if not runnable:
            raise ValueError(
                f"{BACKEND_VARIABLE}=cupy needs CUDA tensors of float32/float16/bfloat16 outside tracing and export, "
                f"got {features.dtype} on {features.device}"
            )
        backend = cupy_backend()
        if backend is None:
            raise RuntimeError(f"{BACKEND_VARIABLE}=cupy but CuPy cannot be imported")
        return backend
    if runnable:
        backend = cupy_backend()
        if backend is not None:
            return backend
        _warn_no_cupy()
    return carafe_torch


__all__ = ["BACKEND_VARIABLE", "Backend", "carafe_torch", "cupy_backend", "select_backend"]

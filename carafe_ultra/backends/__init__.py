"""The one place that decides which implementation runs a CARAFE call.

Callers go through :func:`carafe_ultra.carafe`; backends receive checked inputs of one dtype.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .torch_backend import carafe_torch

Backend = Callable[[Tensor, Tensor, int, int, int], Tensor]


def select_backend(features: Tensor) -> Backend:
    """Return the implementation for these (already checked) inputs."""
    return carafe_torch


__all__ = ["Backend", "carafe_torch", "select_backend"]

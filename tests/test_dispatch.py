"""Backend selection on a CPU machine: what can be checked without a GPU (the kernel path with the host shim is
tests/test_cuda_path.py)."""

import pytest
import torch

from carafe_ultra import carafe
from carafe_ultra.backends import BACKEND_VARIABLE, carafe_torch, carafe_traceable, select_backend


def inputs():
    return torch.randn(1, 4, 3, 3), torch.rand(1, 9, 6, 6)


def test_cpu_tensors_use_the_torch_path(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    assert select_backend(*inputs()) is carafe_torch


def test_forcing_torch(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "torch")
    assert select_backend(*inputs()) is carafe_torch


def test_tracing_uses_the_traceable_path(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    chosen = []
    torch.jit.trace(lambda f, m: chosen.append(select_backend(f, m)) or carafe(f, m, 3, 1, 2), inputs(),
                    check_trace=False)
    assert chosen == [carafe_traceable]
    monkeypatch.setenv(BACKEND_VARIABLE, "cupy")
    with pytest.raises(ValueError, match="CARAFE_ULTRA_BACKEND=cupy, but tracers and exporters record plain PyTorch"):
        torch.jit.trace(lambda f, m: carafe(f, m, 3, 1, 2), inputs())


def test_unknown_backend_name(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "triton")
    with pytest.raises(ValueError, match="CARAFE_ULTRA_BACKEND must be one of auto, torch, cupy, got 'triton'"):
        carafe(*inputs(), 3, 1, 2)

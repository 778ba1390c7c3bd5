"""Backend selection on a CPU machine: what can be checked without a GPU."""

import pytest
import torch

from carafe_ultra import carafe
from carafe_ultra.backends import BACKEND_VARIABLE, carafe_torch, select_backend


def inputs():
    return torch.randn(1, 4, 3, 3), torch.rand(1, 9, 6, 6)


def test_cpu_tensors_use_the_torch_path(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    assert select_backend(*inputs()) is carafe_torch


def test_forcing_torch(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "torch")
    assert select_backend(*inputs()) is carafe_torch
    carafe(*inputs(), 3, 1, 2)


def test_forcing_cupy_on_cpu_tensors_says_why_not(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "cupy")
    with pytest.raises(ValueError, match="CARAFE_ULTRA_BACKEND=cupy needs CUDA tensors.*got torch.float32 on cpu"):
        carafe(*inputs(), 3, 1, 2)


def test_unknown_backend_name(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "triton")
    with pytest.raises(ValueError, match="CARAFE_ULTRA_BACKEND must be one of auto, torch, cupy, got 'triton'"):
        carafe(*inputs(), 3, 1, 2)


def test_custom_ops_are_registered_with_fake_implementations():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from carafe_ultra.backends.cuda_backend import carafe_backward, carafe_forward

    with FakeTensorMode():
        features, masks = torch.empty(2, 8, 5, 6), torch.empty(2, 2 * 9, 15, 18)
        out = carafe_forward(features, masks, 3, 2, 3)
        grads = carafe_backward(torch.empty(2, 8, 15, 18), features, masks, 3, 2, 3)
    assert out.shape == (2, 8, 15, 18)
    assert grads[0].shape == features.shape and grads[1].shape == masks.shape

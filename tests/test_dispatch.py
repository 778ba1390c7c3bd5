"""Backend selection on a CPU machine: what can be checked without a GPU (the kernel path with the host shim is
tests/test_cuda_path.py)."""

import pytest
import torch

from carafe_ultra import backends, carafe
from carafe_ultra.backends import (BACKEND_VARIABLE, carafe_einsum, carafe_matmul, carafe_torch, carafe_traceable,
                                   select_backend)


def inputs():
    return torch.randn(1, 4, 3, 3), torch.rand(1, 9, 6, 6)


def test_cpu_tensors_use_the_torch_path(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    assert select_backend(*inputs()) is carafe_torch


def test_forcing_torch(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "torch")
    assert select_backend(*inputs()) is carafe_torch


def test_onnx_export_records_the_matmul_form_other_tracing_the_einsum_form(monkeypatch, tmp_path):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    chosen = []

    class Probe(torch.nn.Module):
        def forward(self, f, m):
            chosen.append(select_backend(f, m))
            return carafe(f, m, 3, 1, 2)

    torch.jit.trace(Probe(), inputs(), check_trace=False)
    assert chosen == [carafe_einsum]
    chosen.clear()
    torch.onnx.export(Probe(), inputs(), str(tmp_path / "probe.onnx"), dynamo=False)
    assert chosen and set(chosen) == {carafe_matmul}
    monkeypatch.setenv(BACKEND_VARIABLE, "cupy")
    with pytest.raises(ValueError, match="CARAFE_ULTRA_BACKEND=cupy, but tracers and exporters record plain PyTorch"):
        torch.jit.trace(lambda f, m: carafe(f, m, 3, 1, 2), inputs())


def test_ncnn_tracing_gets_the_multiply_add_form_with_a_warning(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    backends._warn_export_once.cache_clear()  # warned once per process: make this the first time
    chosen = []
    # A trace started from inside the pnnx package, as pnnx.export starts it.
    namespace = {"__name__": "pnnx.utils.export", "torch": torch}
    exec("def trace(model, inputs):\n    return torch.jit.trace(model, inputs, check_trace=False)\n", namespace)
    with pytest.warns(UserWarning, match=r"NCNN \(pnnx\) has no Gather layer: CARAFE exports as k² multiply-adds"):
        namespace["trace"](lambda f, m: chosen.append(select_backend(f, m)) or carafe(f, m, 3, 1, 2), inputs())
    assert chosen == [carafe_traceable]


def test_unknown_backend_name(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "triton")
    with pytest.raises(ValueError, match="CARAFE_ULTRA_BACKEND must be one of auto, torch, cupy, got 'triton'"):
        carafe(*inputs(), 3, 1, 2)

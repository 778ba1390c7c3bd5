"""The CUDA path on a real GPU (skipped without one), beyond what tests/test_cuda_path.py runs there too:
large shapes against the PyTorch path, determinism, layouts, streams, devices, memory, and a GPU without CuPy.
Run them on a CUDA machine with `python -m carafe_ultra gpu-check` (or `python -m pytest tests/test_cuda_gpu.py
tests/test_cuda_path.py`)."""

import gc

import pytest
import torch

from carafe_ultra import carafe, carafe_downsample
from carafe_ultra.backends import (
    BACKEND_VARIABLE,
    carafe_cuda,
    carafe_downsample_cuda,
    carafe_downsample_torch,
    carafe_torch,
    select_backend,
)
from carafe_ultra.backends.cupy_launcher import cupy_importable
from tests.helpers import DOWN_SHAPES, SHAPES, random_down_inputs, random_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not cupy_importable(),
                                reason="needs a CUDA GPU and CuPy")

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
WIDE = (2, 300, 9, 11, 5, 1, 2)  # several forward channel chunks
GPU_SHAPES = [*SHAPES, WIDE, (4, 64, 17, 13, 3, 8, 4), (2, 256, 40, 40, 5, 1, 2)]


def cuda_inputs(shape, dtype, requires_grad=True):
    n, c, h, w, k, g, s = shape
    features, masks = random_inputs(n, c, h, w, k, g, s, dtype=torch.float32)
    return (features.cuda().to(dtype).requires_grad_(requires_grad),
            masks.cuda().to(dtype).requires_grad_(requires_grad))


def relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-12)).item()


def test_cuda_tensors_dispatch_to_the_kernels(monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    features, masks = cuda_inputs(SHAPES[0], torch.float16)
    assert select_backend(features, masks.float()) is carafe_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_matches_torch_path(shape, dtype):
    _, _, _, _, k, g, s = shape
    features, masks = cuda_inputs(shape, dtype)
    out = carafe(features, masks, k, g, s)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (features, masks), grad_out)
    f64, m64 = features.detach().double().requires_grad_(), masks.detach().double().requires_grad_()
    want_out = carafe_torch(f64, m64, k, g, s)
    want = torch.autograd.grad(want_out, (f64, m64), grad_out.double())
    assert out.dtype == dtype and not out.isnan().any()
    tol = TOLERANCE[dtype]
    assert relative_error(out, want_out) < tol
    for a, b in zip(got, want):
        assert a.dtype == dtype and relative_error(a, b) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [*DOWN_SHAPES, (2, 300, 19, 21, 5, 1, 2), (2, 256, 80, 80, 5, 1, 2)], ids=str)
def test_downsampling_matches_torch_path_and_is_deterministic(shape, dtype):
    k, g, s = shape[4:]
    features, masks = (t.cuda().to(dtype).requires_grad_() for t in random_down_inputs(*shape, dtype=torch.float32))
    assert select_backend(features, masks, downsample=True) is carafe_downsample_cuda
    runs = []
    for _ in range(2):
        out = carafe_downsample(features, masks, k, g, s)
        runs.append((out, *torch.autograd.grad(out, (features, masks), torch.ones_like(out))))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    f64, m64 = features.detach().double().requires_grad_(), masks.detach().double().requires_grad_()
    want_out = carafe_downsample_torch(f64, m64, k, g, s)
    want = torch.autograd.grad(want_out, (f64, m64), torch.ones_like(want_out))
    tol = TOLERANCE[dtype]
    assert runs[0][0].dtype == dtype and relative_error(runs[0][0], want_out) < tol
    for a, b in zip(runs[0][1:], want):
        assert a.dtype == dtype and relative_error(a, b) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_deterministic(dtype):
    features, masks = cuda_inputs((4, 128, 20, 20, 5, 4, 2), dtype)
    runs = []
    for _ in range(3):
        out = carafe(features, masks, 5, 4, 2)
        runs.append((out, *torch.autograd.grad(out, (features, masks), torch.ones_like(out))))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


def test_channels_last_and_strided_inputs():
    features, masks = cuda_inputs((2, 16, 9, 7, 5, 2, 2), torch.float32, requires_grad=False)
    expected = carafe(features, masks, 5, 2, 2)
    cl = carafe(features.to(memory_format=torch.channels_last), masks.to(memory_format=torch.channels_last), 5, 2, 2)
    torch.testing.assert_close(cl, expected)
    wide = torch.zeros(2, 32, 9, 7, device="cuda")
    wide[:, ::2] = features
    torch.testing.assert_close(carafe(wide[:, ::2], masks, 5, 2, 2), expected)


def test_non_default_stream():
    features, masks = cuda_inputs(WIDE, torch.float32, requires_grad=False)
    expected = carafe(features, masks, 5, 1, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(5):
            out = carafe(features, masks, 5, 1, 2)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    features, masks = cuda_inputs(WIDE, torch.float32)
    expected = carafe(features, masks, 5, 1, 2)
    f1, m1 = features.detach().to("cuda:1").requires_grad_(), masks.detach().to("cuda:1").requires_grad_()
    out = carafe(f1, m1, 5, 1, 2)
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out.cpu(), expected.cpu())
    out.sum().backward()
    assert f1.grad.device == torch.device("cuda:1")


def test_torch_compile_with_inductor():
    from carafe_ultra import CARAFE

    module = CARAFE(64, kernel_size=5).cuda()
    x = torch.randn(2, 64, 16, 16, device="cuda", requires_grad=True)
    expected = module(x)
    torch._dynamo.reset()
    out = torch.compile(module, fullgraph=True)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert x.grad is not None


def test_no_memory_growth():
    features, masks = cuda_inputs((4, 64, 20, 20, 5, 1, 2), torch.float16)
    for _ in range(3):
        carafe(features, masks, 5, 1, 2).sum().backward()
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(50):
        features.grad = masks.grad = None
        carafe(features, masks, 5, 1, 2).sum().backward()
    features.grad = masks.grad = None
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before


def test_warns_once_and_falls_back_without_cupy(monkeypatch, recwarn):
    import carafe_ultra.backends as backends
    from carafe_ultra.backends.cupy_launcher import CupyLauncher

    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    monkeypatch.setattr("carafe_ultra.backends.cupy_launcher.cupy_importable", lambda: False)
    backends._warn_once.cache_clear()
    assert "CuPy is not installed" in CupyLauncher().unavailable(torch.device("cuda"))
    features, masks = cuda_inputs(SHAPES[0], torch.float32, requires_grad=False)
    for _ in range(3):
        out = carafe(features, masks, 3, 1, 2)
    assert sum("CuPy is not installed" in str(w.message) for w in recwarn) == 1
    torch.testing.assert_close(out, carafe_torch(features, masks, 3, 1, 2))

"""CARAFE++ downsampling, the functional op, against the float64 reference of its formula: values, gradients to
second order, dtypes, layouts, edge cases, the export form, memory."""

import pytest
import torch

from carafe_ultra import carafe_downsample
from carafe_ultra.backends import select_backend, torch_backend
from carafe_ultra.backends.torch_downsample import carafe_downsample_torch, carafe_downsample_traceable
from tests.helpers import DOWN_SHAPES, random_down_inputs
from tests.reference import carafe_downsample_reference


def assert_matches_reference(function, features, masks, k, g, s, tol=1e-10):
    out = function(features, masks, k, g, s)
    expected = carafe_downsample_reference(features, masks, k, g, s)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    grad_out = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (features, masks), grad_out),
                         torch.autograd.grad(expected, (features, masks), grad_out)):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(6, 8), (7, 5)], ids=["even", "odd"])
def test_forward_and_gradients_match_reference(kernel, scale, size):
    features, masks = random_down_inputs(2, 4, *size, kernel, 2, scale, requires_grad=True)
    assert_matches_reference(carafe_downsample, features, masks, kernel, 2, scale)


@pytest.mark.parametrize("shape", DOWN_SHAPES, ids=str)
@pytest.mark.parametrize("function", [carafe_downsample, carafe_downsample_traceable], ids=["op", "export form"])
def test_odd_tiny_and_grouped_shapes(shape, function):
    n, c, h, w, k, g, s = shape
    features, masks = random_down_inputs(n, c, h, w, k, g, s, requires_grad=True)
    assert function(features, masks, k, g, s).shape == (n, c, -(-h // s), -(-w // s))
    assert_matches_reference(function, features, masks, k, g, s)


@pytest.mark.parametrize("shape", [(2, 4, 5, 4, 3, 1, 2), (1, 6, 4, 3, 5, 3, 3), (1, 2, 3, 3, 3, 2, 1)], ids=str)
def test_gradcheck(shape):
    features, masks = random_down_inputs(*shape, requires_grad=True)
    k, g, s = shape[4:]
    assert torch.autograd.gradcheck(lambda f, m: carafe_downsample(f, m, k, g, s), (features, masks))


def test_gradgradcheck():
    features, masks = random_down_inputs(1, 4, 5, 4, 3, 2, 2, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda f, m: carafe_downsample(f, m, 3, 2, 2), (features, masks))


def test_out_of_bounds_taps_get_zero_mask_gradient():
    # A 1x1 input with k=3: only the centre tap ever reads a pixel.
    features, masks = random_down_inputs(1, 2, 1, 1, 3, 1, 2, requires_grad=True)
    carafe_downsample(features, masks, 3, 1, 2).sum().backward()
    outside = [t for t in range(9) if t != 4]
    assert torch.all(masks.grad[:, outside] == 0) and torch.all(masks.grad[:, 4] != 0)


def test_chunked_path_matches_reference(monkeypatch):
    # Many small chunks, some that do not divide the group evenly.
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 2 * 3 * 4 * 3)
    features, masks = random_down_inputs(2, 14, 7, 8, 5, 2, 2, requires_grad=True)
    assert_matches_reference(carafe_downsample, features, masks, 5, 2, 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float32, 1e-5)])
def test_low_precision_on_cpu(dtype, tol):
    features, masks = random_down_inputs(2, 8, 9, 7, 5, 2, 2)
    f, m = features.to(dtype).requires_grad_(), masks.to(dtype).requires_grad_()
    out = carafe_downsample(f, m, 5, 2, 2)
    assert out.dtype == dtype
    expected = carafe_downsample_reference(f.detach(), m.detach(), 5, 2, 2)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert f.grad.dtype == dtype and m.grad.dtype == dtype
    assert torch.isfinite(f.grad).all() and torch.isfinite(m.grad).all()


def test_mixed_dtypes_compute_wide_and_return_features_dtype():
    # What autocast hands it: float16 features, float32 masks from a softmax.
    features, masks = random_down_inputs(1, 4, 6, 5, 3, 1, 2)
    f16, m32 = features.half().requires_grad_(), masks.float().requires_grad_()
    out = carafe_downsample(f16, m32, 3, 1, 2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), carafe_downsample_reference(f16.detach(), m32.detach(), 3, 1, 2),
                               rtol=2e-3, atol=2e-3)
    out.sum().backward()
    assert f16.grad.dtype == torch.float16 and m32.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and under CPU autocast
        assert carafe_downsample(features.float(), masks.float(), 3, 1, 2).dtype == torch.float32


def test_non_contiguous_and_channels_last_inputs():
    features, masks = random_down_inputs(2, 6, 7, 6, 3, 3, 2)
    expected = carafe_downsample_reference(features, masks, 3, 3, 2)
    channels_last = carafe_downsample(features.to(memory_format=torch.channels_last),
                                      masks.to(memory_format=torch.channels_last), 3, 3, 2)
    torch.testing.assert_close(channels_last, expected, rtol=1e-10, atol=1e-10)
    views = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (features, masks))
    torch.testing.assert_close(carafe_downsample(*views, 3, 3, 2), expected, rtol=1e-10, atol=1e-10)


def test_empty_batch():
    features, masks = random_down_inputs(0, 4, 5, 6, 3, 2, 2, requires_grad=True)
    out = carafe_downsample(features, masks, 3, 2, 2)
    assert out.shape == (0, 4, 3, 3)
    out.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


def test_masks_of_ones_with_k1_is_strided_sampling():
    features = torch.randn(2, 3, 7, 8)
    torch.testing.assert_close(carafe_downsample(features, torch.ones(2, 1, 3, 3), 1, 1, 3), features[..., ::3, ::3])


def test_uniform_masks_are_average_pooling_inside_the_input():
    # Uniform 1/k² weights over the window, zero padding counted: avg_pool2d with count_include_pad.
    features = torch.randn(1, 4, 8, 10)
    uniform = torch.full((1, 9, 4, 5), 1 / 9)
    pooled = torch.nn.functional.avg_pool2d(features, 3, stride=2, padding=1, count_include_pad=True)
    torch.testing.assert_close(carafe_downsample(features, uniform, 3, 1, 2), pooled)


def test_deterministic():
    features, masks = random_down_inputs(2, 8, 9, 6, 5, 2, 2, dtype=torch.float32, requires_grad=True)
    runs = []
    for _ in range(2):
        out = carafe_downsample(features, masks, 5, 2, 2)
        runs.append((out, *torch.autograd.grad(out, (features, masks), torch.ones_like(out))))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_cpu_tensors_take_the_pytorch_path_and_exports_the_traceable_form():
    features, masks = random_down_inputs(1, 4, 6, 6, 3, 1, 2, dtype=torch.float32)
    assert select_backend(features, masks, downsample=True) is carafe_downsample_torch
    traced = torch.jit.trace(lambda f, m: carafe_downsample(f, m, 3, 1, 2), (features, masks))
    torch.testing.assert_close(traced(features, masks), carafe_downsample_torch(features, masks, 3, 1, 2))
    assert "aten::addcmul_" not in str(traced.graph) and "aten::mul" in str(traced.graph)


def test_export_form_has_rank_5_tensors_at_most():
    features, masks = random_down_inputs(2, 6, 9, 8, 5, 3, 2, dtype=torch.float32)
    traced = torch.jit.trace(lambda f, m: carafe_downsample_traceable(f, m, 5, 3, 2), (features, masks))
    ranks = [len(v.type().sizes()) for node in traced.graph.nodes() for v in node.outputs()
             if v.type().kind() == "TensorType" and v.type().sizes() is not None]
    assert ranks and max(ranks) <= 5

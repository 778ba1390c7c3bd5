"""The functional op against the float64 reference: values, gradients, dtypes, layouts, edge cases."""

import pytest
import torch

from carafe_ultra import carafe
from carafe_ultra.backends import torch_backend
from tests.helpers import SHAPES, random_inputs
from tests.reference import carafe_reference


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2])
def test_forward_and_gradients_match_reference(kernel, scale, groups):
    features, masks = random_inputs(2, 4, 5, 3, kernel, groups, scale, requires_grad=True)
    out = carafe(features, masks, kernel, groups, scale)
    expected = carafe_reference(features, masks, kernel, groups, scale)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (features, masks), grad_out)
    want = torch.autograd.grad(expected, (features, masks), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_odd_tiny_and_grouped_shapes(shape):
    n, c, h, w, k, g, s = shape
    features, masks = random_inputs(n, c, h, w, k, g, s, requires_grad=True)
    out = carafe(features, masks, k, g, s)
    assert out.shape == (n, c, h * s, w * s)
    torch.testing.assert_close(out, carafe_reference(features, masks, k, g, s), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 4, 3, 4, 3, 1, 2), (1, 6, 2, 3, 5, 3, 3), (1, 4, 3, 2, 7, 2, 1), (1, 2, 1, 1, 3, 2, 4)], ids=str)
def test_gradcheck(shape):
    n, c, h, w, k, g, s = shape
    features, masks = random_inputs(n, c, h, w, k, g, s, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, m: carafe(f, m, k, g, s), (features, masks))


def test_gradgradcheck():
    features, masks = random_inputs(1, 4, 3, 4, 3, 2, 2, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda f, m: carafe(f, m, 3, 2, 2), (features, masks))


def test_out_of_bounds_taps_get_zero_mask_gradient():
    # A 1x1 input with k=3: only the centre tap ever reads a pixel.
    features, masks = random_inputs(1, 2, 1, 1, 3, 1, 2, requires_grad=True)
    carafe(features, masks, 3, 1, 2).sum().backward()
    centre = 4
    outside = [t for t in range(9) if t != centre]
    assert torch.all(masks.grad[:, outside] == 0)
    assert torch.all(masks.grad[:, centre] != 0)


def test_chunked_path_matches_reference(monkeypatch):
    # Force many small chunks, including chunks that do not divide the group evenly.
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 3 * 2 * 4 * 6 * 5)
    features, masks = random_inputs(2, 14, 6, 5, 3, 2, 2, requires_grad=True)
    out = carafe(features, masks, 3, 2, 2)
    expected = carafe_reference(features, masks, 3, 2, 2)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (features, masks), grad_out),
                    torch.autograd.grad(expected, (features, masks), grad_out)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float32, 1e-5)])
def test_low_precision_on_cpu(dtype, tol):
    features, masks = random_inputs(2, 8, 6, 7, 5, 2, 2)
    f, m = features.to(dtype).requires_grad_(), masks.to(dtype).requires_grad_()
    out = carafe(f, m, 5, 2, 2)
    assert out.dtype == dtype
    expected = carafe_reference(f.detach(), m.detach(), 5, 2, 2)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert f.grad.dtype == dtype and m.grad.dtype == dtype
    assert torch.isfinite(f.grad).all() and torch.isfinite(m.grad).all()


def test_mixed_dtypes_compute_wide_and_return_features_dtype():
    # What autocast produces: float16 features, float32 masks from a softmax.
    features, masks = random_inputs(1, 4, 5, 5, 3, 1, 2)
    f16 = features.half().requires_grad_()
    m32 = masks.float().requires_grad_()
    out = carafe(f16, m32, 3, 1, 2)
    assert out.dtype == torch.float16
    expected = carafe_reference(f16.detach(), m32.detach(), 3, 1, 2)
    torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=2e-3)
    out.sum().backward()
    assert f16.grad.dtype == torch.float16 and m32.grad.dtype == torch.float32


def test_non_contiguous_and_channels_last_inputs():
    features, masks = random_inputs(2, 6, 5, 4, 3, 3, 2)
    expected = carafe_reference(features, masks, 3, 3, 2)
    cl = carafe(features.to(memory_format=torch.channels_last), masks.to(memory_format=torch.channels_last), 3, 3, 2)
    torch.testing.assert_close(cl, expected, rtol=1e-10, atol=1e-10)
    # A transposed-and-back view has the same values with odd strides.
    f_view = features.transpose(2, 3).contiguous().transpose(2, 3)
    m_view = masks.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(carafe(f_view, m_view, 3, 3, 2), expected, rtol=1e-10, atol=1e-10)


def test_empty_batch():
    features, masks = random_inputs(0, 4, 5, 6, 3, 2, 2, requires_grad=True)
    out = carafe(features, masks, 3, 2, 2)
    assert out.shape == (0, 4, 10, 12)
    out.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


def test_masks_of_ones_with_k1_is_nearest_upsampling():
    features = torch.randn(2, 3, 4, 5)
    masks = torch.ones(2, 1, 12, 15)
    nearest = torch.nn.functional.interpolate(features, scale_factor=3, mode="nearest")
    torch.testing.assert_close(carafe(features, masks, 1, 1, 3), nearest)


def test_deterministic():
    features, masks = random_inputs(2, 8, 7, 6, 5, 2, 2, dtype=torch.float32, requires_grad=True)
    runs = []
    for _ in range(2):
        out = carafe(features, masks, 5, 2, 2)
        grads = torch.autograd.grad(out, (features, masks), torch.ones_like(out))
        runs.append((out, *grads))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("form", ["carafe_traceable", "carafe_einsum", "carafe_matmul"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_export_forms_match_reference(shape, form):
    # What exports record: carafe_matmul (ONNX), carafe_einsum (other tracing), carafe_traceable (NCNN).
    n, c, h, w, k, g, s = shape
    features, masks = random_inputs(n, c, h, w, k, g, s, requires_grad=True)
    export_form = getattr(torch_backend, form)
    out = export_form(features, masks, k, g, s)
    expected = carafe_reference(features, masks, k, g, s)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (features, masks), grad_out),
                         torch.autograd.grad(expected, (features, masks), grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    mixed = export_form(features.detach().half(), masks.detach().float(), k, g, s)
    assert mixed.dtype == torch.float16


@pytest.mark.parametrize("form", ["carafe_traceable", "carafe_einsum", "carafe_matmul"])
def test_export_forms_have_rank_5_tensors_at_most(form):
    # Core ML converts tensors of rank <= 5 only.
    features, masks = random_inputs(1, 8, 5, 6, 5, 2, 2, dtype=torch.float32)
    graph = torch.jit.trace(lambda f, m: getattr(torch_backend, form)(f, m, 5, 2, 2), (features, masks)).graph
    ranks = [len(v.type().sizes()) for node in graph.nodes() for v in node.outputs()
             if isinstance(v.type(), torch._C.TensorType) and v.type().sizes() is not None]
    assert ranks and max(ranks) <= 5


@pytest.mark.parametrize("product,softmax_last", [("matmul", True), ("einsum", False)])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_export_forms_from_logits_match_the_reference(shape, product, softmax_last):
    # What a CARAFE module records while exporting: the encoder's channels taken taps last, the softmax in the
    # export form's own layout.
    n, c, h, w, k, g, s = shape
    features = torch.randn(n, c, h, w, dtype=torch.float64)
    logits = torch.randn(n, g * k * k * s * s, h, w, dtype=torch.float64)
    by_pixel = torch_backend.logits_by_pixel(logits[:, torch_backend.taps_last_order(k, g, s)], k, g, s, softmax_last)
    masks = torch_backend.masks_from_logits(logits, k, g, s)
    torch.testing.assert_close(by_pixel, torch_backend.masks_by_pixel(masks, k, g, s), rtol=1e-12, atol=1e-12)
    contraction = torch.matmul if product == "matmul" else torch_backend.einsum_product
    out = torch_backend.tiled_windows_product(features, by_pixel, k, g, s, contraction)
    torch.testing.assert_close(out, carafe_reference(features, masks, k, g, s), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tile_width", [1, 2, 3, 7, 10, 16])
@pytest.mark.parametrize("width", [1, 6, 10, 13, 20])
def test_tiled_product_at_every_tile_width(tile_width, width):
    # Widths that are and are not multiples of the tile (the last tile zero-padded, then cropped), tiles wider than
    # the row, and several groups, sub-pixels and window sizes.
    for k, g, s in ((5, 1, 2), (3, 2, 2), (7, 3, 3), (1, 1, 2)):
        features, masks = random_inputs(2, 6, 3, width, k, g, s)
        by_pixel = torch_backend.masks_by_pixel(masks, k, g, s)
        out = torch_backend.tiled_windows_product(features, by_pixel, k, g, s, torch.matmul, tile_width)
        torch.testing.assert_close(out, carafe_reference(features, masks, k, g, s), rtol=1e-10, atol=1e-10)
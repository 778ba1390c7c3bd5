"""The CUDA kernel source itself, built with g++ through kernels/host_shim.cpp and run on the CPU.

Every entry point (forward, both gradients) for every pair of storage types of features and masks (float32,
float16, bfloat16) against the float64 reference, with the launch geometry the CUDA path uses, on odd sizes,
groups and borders. This is what catches indexing and boundary bugs in CI, where there is no GPU.
"""

import math
import shutil

import pytest
import torch

from carafe_ultra.backends.cuda_backend import THREADS_PER_BLOCK, launch_geometry
from carafe_ultra.backends.kernel_types import Specialisation
from tests.helpers import SHAPES, random_inputs
from tests.host_launcher import HostShimLauncher
from tests.reference import carafe_reference

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
CASES = [*SHAPES, (1, 130, 3, 2, 3, 1, 2)]  # 130 channels: more than one forward chunk, several grid rows
MIXED = [(f, m) for f in DTYPES for m in DTYPES if f != m]
# Every case with one storage type for both, and two cases with every mixed pair.
RUNS = [(case, (d, d)) for case in CASES for d in DTYPES] + [(case, pair) for case in CASES[:2] for pair in MIXED]


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return HostShimLauncher(tmp_path_factory.mktemp("shim"))


def emulate(shim, spec, name, features_shape, group_size, *tensors):
    threads, grid_y, sizes = launch_geometry(name, features_shape, group_size, spec.scale_factor)
    shim.launch(spec, name, (math.ceil(threads / THREADS_PER_BLOCK), grid_y), THREADS_PER_BLOCK, (*tensors, *sizes))


def name(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("case,dtypes", RUNS, ids=[f"{c}-{name(f)}-{name(m)}" for c, (f, m) in RUNS])
def test_kernels_match_reference(case, dtypes, shim):
    n, c, h, w, k, g, s = case
    feature_dtype, mask_dtype = dtypes
    spec = Specialisation(feature_dtype, mask_dtype, k, s)
    features, masks = random_inputs(n, c, h, w, k, g, s, requires_grad=True)
    expected = carafe_reference(features, masks, k, g, s)
    grad_out = torch.randn_like(expected)
    want_features, want_masks = torch.autograd.grad(expected, (features, masks), grad_out)

    f, go = (t.detach().to(feature_dtype).contiguous() for t in (features, grad_out))
    m = masks.detach().to(mask_dtype).contiguous()
    out = torch.full(expected.shape, float("nan"), dtype=feature_dtype)  # poisoned: every element must be written
    grad_f = torch.full(f.shape, float("nan"), dtype=feature_dtype)
    grad_m = torch.full(m.shape, float("nan"), dtype=mask_dtype)
    emulate(shim, spec, "forward", f.shape, g, f, m, out)
    emulate(shim, spec, "backward_masks", f.shape, g, go, f, grad_m)
    emulate(shim, spec, "backward_features", f.shape, g, go, m, grad_f)

    # The reference on the same (rounded) inputs isolates the kernels' own error from input rounding.
    rounded = [t.double() for t in (f, m, go)]
    ref_out = carafe_reference(rounded[0].requires_grad_(), rounded[1].requires_grad_(), k, g, s)
    ref_gf, ref_gm = torch.autograd.grad(ref_out, rounded[:2], rounded[2])
    for got, want, dtype in ((out, ref_out, feature_dtype), (grad_f, ref_gf, feature_dtype), (grad_m, ref_gm, mask_dtype)):
        assert got.dtype == dtype and not torch.isnan(got).any()
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol * 4)
    if dtypes == (torch.float32, torch.float32):  # and the float32 kernels against the exact float64 answer
        torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_f.double(), want_features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_m.double(), want_masks, rtol=1e-5, atol=1e-5)


def test_out_of_bounds_taps_get_exactly_zero_mask_gradient(shim):
    spec = Specialisation(torch.float32, torch.float32, 5, 2)
    f, m = (t.float().contiguous() for t in random_inputs(1, 3, 1, 2, 5, 1, 2))
    go = torch.randn(1, 3, 2, 4)
    grad_m = torch.full_like(m, float("nan"))
    emulate(shim, spec, "backward_masks", f.shape, 1, go, f, grad_m)
    taps = grad_m.view(1, 5, 5, 2, 4)
    assert torch.all(taps[:, [0, 1, 3, 4]] == 0)  # rows outside a 1-pixel-high input
    assert torch.all(taps[:, 2, 2] != 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=name)
def test_16_bit_store_rounds_like_torch(dtype, shim):
    # k=1, s=1, float32 masks of one: each output is one input value times 1.0, rounded once by the store.
    spec = Specialisation(dtype, torch.float32, 1, 1)
    f = (torch.randn(1, 1, 64, 64) * 1e3).to(dtype)
    out = torch.empty_like(f)
    emulate(shim, spec, "forward", f.shape, 1, f, torch.ones(f.shape), out)
    assert torch.equal(out, f)
    if dtype == torch.bfloat16:
        nan = torch.full((1, 1, 1, 1), float("nan"), dtype=dtype)
        out = torch.empty_like(nan)
        emulate(shim, spec, "forward", nan.shape, 1, nan, torch.ones(nan.shape), out)
        assert torch.isnan(out).all()

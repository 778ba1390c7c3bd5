"""The CUDA kernel source itself, built with g++ through kernels/host_shim.cpp and run on the CPU.

Every entry point (forward, both gradients; float32, float16, bfloat16) against the float64 reference, with the
launch geometry the CUDA path uses, on odd sizes, groups and borders. This is what catches indexing and
boundary bugs in CI, where there is no GPU.
"""

import ctypes
import math
import shutil
import subprocess

import pytest
import torch
from tests.helpers import SHAPES, random_inputs
from tests.reference import carafe_reference

from carafe_ultra.backends.cuda_backend import KERNEL_DIR, THREADS_PER_BLOCK, launch_geometry

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
_LIBRARIES = {}


def library(kernel_size, scale, tmp_dir):
    key = (kernel_size, scale)
    if key not in _LIBRARIES:
        path = tmp_dir / f"carafe_k{kernel_size}_s{scale}.so"
        subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", f"-DCARAFE_K={kernel_size}",
                        f"-DCARAFE_S={scale}", str(KERNEL_DIR / "host_shim.cpp"), "-o", str(path)],
                       check=True, capture_output=True, text=True)
        _LIBRARIES[key] = ctypes.CDLL(str(path))
    return _LIBRARIES[key]


def emulate(lib, name, like, group_size, scale, *tensors):
    threads, grid_y, sizes = launch_geometry(name, tuple(like.shape), group_size, scale)
    blocks = math.ceil(threads / THREADS_PER_BLOCK)
    fn = getattr(lib, f"emulate_carafe_{name}_{SUFFIX[like.dtype]}")
    fn(ctypes.c_uint(blocks), ctypes.c_uint(grid_y), ctypes.c_uint(THREADS_PER_BLOCK),
       *(ctypes.c_void_p(t.data_ptr()) for t in tensors), *(ctypes.c_longlong(v) for v in sizes))


CASES = [*SHAPES, (1, 130, 3, 2, 3, 1, 2)]  # 130 channels: more than one forward chunk, several grid rows


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shim")


@pytest.mark.parametrize("dtype", list(SUFFIX), ids=lambda d: SUFFIX[d])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels_match_reference(case, dtype, build_dir):
    n, c, h, w, k, g, s = case
    lib = library(k, s, build_dir)
    features, masks = random_inputs(n, c, h, w, k, g, s, requires_grad=True)
    expected = carafe_reference(features, masks, k, g, s)
    grad_out = torch.randn_like(expected)
    want_features, want_masks = torch.autograd.grad(expected, (features, masks), grad_out)

    f, m, go = (t.detach().to(dtype).contiguous() for t in (features, masks, grad_out))
    out = torch.full(expected.shape, float("nan"), dtype=dtype)  # poisoned: every element must be written
    grad_f = torch.full(f.shape, float("nan"), dtype=dtype)
    grad_m = torch.full(m.shape, float("nan"), dtype=dtype)
    emulate(lib, "forward", f, g, s, f, m, out)
    emulate(lib, "backward_masks", f, g, s, go, f, grad_m)
    emulate(lib, "backward_features", f, g, s, go, m, grad_f)

    # The reference on the same (rounded) inputs isolates the kernels' own error from input rounding.
    rounded = [t.double() for t in (f, m, go)]
    ref_out = carafe_reference(rounded[0].requires_grad_(), rounded[1].requires_grad_(), k, g, s)
    ref_gf, ref_gm = torch.autograd.grad(ref_out, rounded[:2], rounded[2])
    tol = TOLERANCE[dtype]
    for got, want in ((out, ref_out), (grad_f, ref_gf), (grad_m, ref_gm)):
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol * 4)
    if dtype == torch.float32:  # and the float32 kernels against the exact float64 answer
        torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_f.double(), want_features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_m.double(), want_masks, rtol=1e-5, atol=1e-5)


def test_out_of_bounds_taps_get_exactly_zero_mask_gradient(build_dir):
    lib = library(5, 2, build_dir)
    f, m = (t.float().contiguous() for t in random_inputs(1, 3, 1, 2, 5, 1, 2))
    go = torch.randn(1, 3, 2, 4)
    grad_m = torch.full_like(m, float("nan"))
    emulate(lib, "backward_masks", f, 1, 2, go, f, grad_m)
    taps = grad_m.view(1, 5, 5, 2, 4)
    assert torch.all(taps[:, [0, 1, 3, 4]] == 0)  # rows outside a 1-pixel-high input
    assert torch.all(taps[:, 2, 2] != 0)


def test_16_bit_store_rounds_like_torch(build_dir):
    # k=1, s=1, masks of one: each output is one input value times 1.0, rounded once by the kernel's store.
    lib = library(1, 1, build_dir)
    values = torch.randn(1, 1, 64, 64) * 1e3
    for dtype in (torch.float16, torch.bfloat16):
        f = values.to(dtype)
        out = torch.empty_like(f)
        emulate(lib, "forward", f, 1, 1, f, torch.ones_like(f), out)
        assert torch.equal(out, f)
    nan = torch.full((1, 1, 1, 1), float("nan"), dtype=torch.bfloat16)
    out = torch.empty_like(nan)
    emulate(lib, "forward", nan, 1, 1, nan, torch.ones_like(nan), out)
    assert torch.isnan(out).all()

"""The CUDA kernel source itself, built with g++ through kernels/host_shim.cpp and run on the CPU.

Every variant of every kernel (forward, both gradients) for every pair of storage types of features and masks
(float32, float16, bfloat16) against the float64 reference, with the launch geometry the CUDA path uses, on odd
sizes, groups and borders; bitwise deterministic; 64-bit safe. This is what catches indexing and boundary bugs in
CI, where there is no GPU.
"""

import ctypes
import math
import os
import shutil
import signal
import subprocess

import pytest
import torch

from carafe_ultra.backends.cupy_launcher import KERNEL_DIR
from carafe_ultra.backends.kernel_types import Specialisation
from carafe_ultra.backends.kernel_variants import (
    DOWN_KERNELS,
    DOWN_VARIANTS,
    SELECTED,
    THREADS_PER_BLOCK,
    VARIANTS,
    fits_32_bit_offsets,
    variant,
    variant_sets,
    variants_for,
)
from carafe_ultra.experiments.host_shim import HostShimLauncher
from tests.helpers import DOWN_SHAPES, SHAPES, random_down_inputs, random_inputs
from tests.reference import carafe_downsample_reference, carafe_reference

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
CASES = [*SHAPES, (1, 130, 3, 2, 3, 1, 2), (2, 8, 9, 10, 5, 2, 2)]  # 130 channels: several chunks and grid rows
MIXED = [(f, m) for f in DTYPES for m in DTYPES if f != m]
# Every case with one storage type for both, and two cases with every mixed pair.
RUNS = [(case, (d, d)) for case in CASES for d in DTYPES] + [(case, pair) for case in CASES[:2] for pair in MIXED]
ALL_VARIANTS = [v for kernel in VARIANTS.values() for v in kernel.values()]


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return HostShimLauncher(tmp_path_factory.mktemp("shim"))


def specialisation(chosen, feature_dtype, mask_dtype, kernel_size, scale):
    """A module that builds ``chosen``: the variant set holding it, so that few modules build every variant."""
    variants = next(table for table in variant_sets() if table[chosen.kernel] == chosen.name)
    return Specialisation(feature_dtype, mask_dtype, kernel_size, scale, **variants)


def emulate(shim, spec, kernel, features_shape, group_size, *tensors):
    threads, grid_y, sizes = spec.variant(kernel).geometry(features_shape, group_size, spec.scale_factor)
    shim.launch(spec, kernel, (math.ceil(threads / THREADS_PER_BLOCK), grid_y), THREADS_PER_BLOCK, (*tensors, *sizes))


def name(dtype):
    return str(dtype).removeprefix("torch.")


def poisoned(shape, dtype):
    """NaN everywhere: every element the kernel should write must be written."""
    return torch.full(shape, float("nan"), dtype=dtype)


def kernel_arguments(kernel, f, m, go):
    """The three pointer arguments of ``kernel`` (or of its downsampling counterpart), its result poisoned."""
    return {"forward": (f, m, poisoned(go.shape, f.dtype)),
            "backward_masks": (go, f, poisoned(m.shape, m.dtype)),
            "backward_features": (go, m, poisoned(f.shape, f.dtype))}[kernel.removeprefix("down_")]


def run_kernel(shim, spec, kernel, group_size, f, m, go):
    """What ``kernel`` of ``spec`` computes: the output (forward), the masks' or the features' gradient."""
    args = kernel_arguments(kernel, f, m, go)
    emulate(shim, spec, kernel, f.shape, group_size, *args)
    return args[2]


@pytest.mark.parametrize("chosen", ALL_VARIANTS, ids=lambda v: f"{v.kernel}_{v.name}")
@pytest.mark.parametrize("case,dtypes", RUNS, ids=[f"{c}-{name(f)}-{name(m)}" for c, (f, m) in RUNS])
def test_every_variant_matches_the_reference_and_is_deterministic(case, dtypes, chosen, shim):
    n, c, h, w, k, g, s = case
    feature_dtype, mask_dtype = dtypes
    spec = specialisation(chosen, feature_dtype, mask_dtype, k, s)
    features, masks = random_inputs(n, c, h, w, k, g, s)
    f = features.to(feature_dtype).contiguous()
    m = masks.to(mask_dtype).contiguous()
    go = torch.randn(n, c, h * s, w * s).to(feature_dtype)

    got = run_kernel(shim, spec, chosen.kernel, g, f, m, go)
    assert not torch.isnan(got).any()
    assert torch.equal(run_kernel(shim, spec, chosen.kernel, g, f, m, go), got)  # bitwise the same, run after run

    # The reference on the same (rounded) inputs isolates the kernels' own error from input rounding.
    f64, m64 = f.double().requires_grad_(), m.double().requires_grad_()
    out64 = carafe_reference(f64, m64, k, g, s)
    want = {"forward": lambda: out64,
            "backward_masks": lambda: torch.autograd.grad(out64, m64, go.double())[0],
            "backward_features": lambda: torch.autograd.grad(out64, f64, go.double())[0]}[chosen.kernel]()
    tol = TOLERANCE[mask_dtype if chosen.kernel == "backward_masks" else feature_dtype]
    torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("chosen", VARIANTS["backward_masks"].values(), ids=lambda v: v.name)
def test_out_of_bounds_taps_get_exactly_zero_mask_gradient(chosen, shim):
    spec = specialisation(chosen, torch.float32, torch.float32, 5, 2)
    f, m = (t.float().contiguous() for t in random_inputs(1, 3, 1, 2, 5, 1, 2))
    go = torch.randn(1, 3, 2, 4)
    taps = run_kernel(shim, spec, "backward_masks", 1, f, m, go).view(1, 5, 5, 2, 4)
    assert torch.all(taps[:, [0, 1, 3, 4]] == 0)  # rows outside a 1-pixel-high input
    assert torch.all(taps[:, 2, 2] != 0)


@pytest.mark.parametrize("chosen", VARIANTS["forward"].values(), ids=lambda v: v.name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=name)
def test_16_bit_store_rounds_like_torch(dtype, chosen, shim):
    # k=1, s=1, float32 masks of one: each output is one input value times 1.0, rounded once by the store.
    spec = specialisation(chosen, dtype, torch.float32, 1, 1)
    f = (torch.randn(1, 1, 64, 64) * 1e3).to(dtype)
    out = torch.empty_like(f)
    emulate(shim, spec, "forward", f.shape, 1, f, torch.ones(f.shape), out)
    assert torch.equal(out, f)
    if dtype == torch.bfloat16:
        nan = torch.full((1, 1, 1, 1), float("nan"), dtype=dtype)
        out = torch.empty_like(nan)
        emulate(shim, spec, "forward", nan.shape, 1, nan, torch.ones(nan.shape), out)
        assert torch.isnan(out).all()


# A batch this large puts the last item's offsets into every tensor past 2**32 elements ((N - 1) * C * H * W > 2**32
# for the features, the smallest), and its threads' numbers too. G * H * W = 128 makes every variant's threads of
# one batch item fill whole blocks.
HUGE_BATCH, TAIL_CASE = 2**32 // 256 + 3, (4, 8, 8, 3, 2, 2)  # channels, height, width, kernel, groups, scale


def in_a_child(check) -> str:
    """Run ``check()`` (true: it passed) in a forked child, so that a wild memory access fails the test instead of
    crashing the test run; "passed", "failed", or how the child died."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if check() else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return {0: "passed", 1: "failed"}.get(os.WEXITSTATUS(status), "raised")


@pytest.mark.parametrize("chosen", ALL_VARIANTS, ids=lambda v: f"{v.kernel}_{v.name}")
def test_offsets_are_64_bit_safe(chosen, shim):
    # Only the last batch item exists: its pointers are moved back by (N - 1) items, and only the blocks that cover
    # it run. A kernel that lost the high bits of an offset would read or write far outside it.
    c, h, w, k, g, s = TAIL_CASE
    spec = specialisation(chosen, torch.float32, torch.float32, k, s)
    features, masks = (t.float().contiguous() for t in random_inputs(1, c, h, w, k, g, s))
    go = torch.randn(1, c, h * s, w * s)
    expected = run_kernel(shim, spec, chosen.kernel, g, features, masks, go)

    args = kernel_arguments(chosen.kernel, features, masks, go)
    shifted = [t.data_ptr() - (HUGE_BATCH - 1) * t.numel() * t.element_size() for t in args]
    threads, grid_y, sizes = chosen.geometry((HUGE_BATCH, c, h, w), g, s)
    per_item = threads // HUGE_BATCH
    assert per_item % THREADS_PER_BLOCK == 0 and min((HUGE_BATCH - 1) * t.numel() for t in args) > 2**32
    shim.library(spec)  # built here, not in the child

    def last_item_is_right() -> bool:
        shim.launch(spec, chosen.kernel, (threads // THREADS_PER_BLOCK, grid_y), THREADS_PER_BLOCK,
                    (*shifted, *sizes), first_block=(threads - per_item) // THREADS_PER_BLOCK)
        return torch.equal(args[2], expected)

    assert in_a_child(last_item_is_right) == "passed"


DOWN_CASES = [*DOWN_SHAPES, (1, 130, 7, 6, 3, 1, 2)]  # 130 channels: several chunks and grid rows
DOWN_RUNS = [(case, (torch.float32,) * 2) for case in DOWN_CASES] + [
    (case, pair) for case in DOWN_CASES[:2] for pair in [(d, d) for d in DTYPES[1:]] + MIXED]


def down_expected(kernel, f, m, go, k, g, s):
    f64, m64 = f.double().requires_grad_(), m.double().requires_grad_()
    out64 = carafe_downsample_reference(f64, m64, k, g, s)
    if kernel == "down_forward":
        return out64.detach()
    return torch.autograd.grad(out64, m64 if kernel == "down_backward_masks" else f64, go.double())[0]


@pytest.mark.parametrize("kernel", DOWN_KERNELS)
@pytest.mark.parametrize("case,dtypes", DOWN_RUNS, ids=[f"{c}-{name(f)}-{name(m)}" for c, (f, m) in DOWN_RUNS])
def test_downsampling_kernels_match_the_reference_and_are_deterministic(case, dtypes, kernel, shim):
    n, c, h, w, k, g, s = case
    spec = Specialisation(*dtypes, k, s)
    features, masks = random_down_inputs(n, c, h, w, k, g, s)
    f, m = features.to(dtypes[0]), masks.to(dtypes[1])
    go = torch.randn(n, c, -(-h // s), -(-w // s)).to(dtypes[0])

    got = run_kernel(shim, spec, kernel, g, f, m, go)
    assert not torch.isnan(got).any()
    assert torch.equal(run_kernel(shim, spec, kernel, g, f, m, go), got)  # bitwise the same, run after run
    tol = TOLERANCE[dtypes[1] if kernel == "down_backward_masks" else dtypes[0]]
    torch.testing.assert_close(got.double(), down_expected(kernel, f, m, go, k, g, s), rtol=tol, atol=tol * 4)


DOWN_TAIL_CASE = (4, 16, 16, 3, 2, 2)  # G * ceil(H/S) * ceil(W/S) = 128 and C * H * W = 1024: whole blocks per item


@pytest.mark.parametrize("kernel", DOWN_KERNELS)
def test_downsampling_offsets_are_64_bit_safe(kernel, shim):
    c, h, w, k, g, s = DOWN_TAIL_CASE
    spec = Specialisation(torch.float32, torch.float32, k, s)
    features, masks = (t.float() for t in random_down_inputs(1, c, h, w, k, g, s))
    go = torch.randn(1, c, h // s, w // s)
    expected = run_kernel(shim, spec, kernel, g, features, masks, go)

    args = kernel_arguments(kernel, features, masks, go)
    shifted = [t.data_ptr() - (HUGE_BATCH - 1) * t.numel() * t.element_size() for t in args]
    threads, grid_y, sizes = DOWN_VARIANTS[kernel].geometry((HUGE_BATCH, c, h, w), g, s)
    per_item = threads // HUGE_BATCH
    assert per_item % THREADS_PER_BLOCK == 0 and min((HUGE_BATCH - 1) * t.numel() for t in args) > 2**32
    shim.library(spec)

    def last_item_is_right() -> bool:
        shim.launch(spec, kernel, (threads // THREADS_PER_BLOCK, grid_y), THREADS_PER_BLOCK, (*shifted, *sizes),
                    first_block=(threads - per_item) // THREADS_PER_BLOCK)
        return torch.equal(args[2], expected)

    assert in_a_child(last_item_is_right) == "passed"


def test_the_table_names_a_variant_of_every_kernel():
    assert set(SELECTED) == set(VARIANTS) == {"forward", "backward_masks", "backward_features"}
    # Until a GPU has measured the others, the first designs run.
    assert all(name == next(iter(VARIANTS[kernel])) for kernel, name in SELECTED.items())
    with pytest.raises(ValueError, match="no kernel variant forward/tiled; known: forward: pixel/pixel_interior"):
        variant("forward", "tiled")


def test_planes_too_large_for_32_bit_offsets_run_the_64_bit_design():
    table = {"forward": "row", "backward_masks": "split", "backward_features": "gather_channels"}
    assert fits_32_bit_offsets(4096, 4096, 9, 4) and not fits_32_bit_offsets(40000, 20000, 5, 2)
    assert variants_for((1, 8, 4096, 4096), 9, 4, table) == table
    assert variants_for((1, 8, 40000, 20000), 5, 2, table) == SELECTED


def test_a_few_modules_build_every_variant():
    sets = variant_sets()
    assert len(sets) == max(map(len, VARIANTS.values())) and sets[0] == SELECTED
    assert {(kernel, table[kernel]) for table in sets for kernel in table} == {
        (kernel, name) for kernel, names in VARIANTS.items() for name in names}


@pytest.fixture(scope="module")
def self_test(tmp_path_factory):
    """The shim built with its own test kernels (CARAFE_SHIM_SELF_TEST)."""
    path = tmp_path_factory.mktemp("self-test") / "shim.so"
    spec = Specialisation(torch.float32, torch.float32, 3, 2)
    subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-DCARAFE_SHIM_SELF_TEST", *spec.defines(),
                    str(KERNEL_DIR / "host_shim.cpp"), "-o", str(path)], check=True)  # the table's variants too
    return ctypes.CDLL(str(path))


def test_shim_runs_the_phases_between_barriers_in_order(self_test):
    # Each thread writes shared memory, waits at a barrier, then reads what its neighbour wrote: right only if
    # every thread finished the first phase before any started the second.
    out = torch.zeros(3 * THREADS_PER_BLOCK, dtype=torch.int64)
    assert self_test.emulate_self_test_neighbours(3, 1, THREADS_PER_BLOCK, 0, ctypes.c_void_p(out.data_ptr())) == 0
    index = torch.arange(3 * THREADS_PER_BLOCK)
    block, thread = index // THREADS_PER_BLOCK, index % THREADS_PER_BLOCK
    assert torch.equal(out, block * 1000 + (thread + 1) % THREADS_PER_BLOCK)


def test_shim_reports_threads_that_skip_a_barrier(self_test):
    out = torch.zeros(THREADS_PER_BLOCK, dtype=torch.int64)
    assert self_test.emulate_self_test_divergent(1, 1, THREADS_PER_BLOCK, 0, ctypes.c_void_p(out.data_ptr())) == 1

"""Every kernel specialisation compiles through NVRTC (no GPU or driver needed): the table's variants for sm_70,
sm_80 and sm_90, every (kernel size, scale) with float32 storage and every pair of storage types of features and
masks; every variant of every kernel for sm_90, where ptxas also says whether its register arrays fit. Every module
holds CARAFE++ downsampling's three kernels too, so each check covers them."""

import os
import re

import pytest
import torch

from carafe_ultra.backends.cupy_launcher import KERNEL_SOURCE, nvrtc_options
from carafe_ultra.backends.kernel_types import STORAGE_TYPES, Specialisation
from carafe_ultra.backends.kernel_variants import DOWN_KERNELS, ENTRY_POINTS, KERNELS, variant_sets
from carafe_ultra.experiments import nvrtc

if os.environ.get("CI"):  # CI installs the cuda12 extra: a missing CuPy there is a failure, not a skip
    import cupy  # noqa: F401
else:
    pytest.importorskip("cupy")
from cupy.cuda import nvrtc as cupy_nvrtc  # noqa: E402

SPECIALISATIONS = [Specialisation(torch.float32, torch.float32, k, s) for k in (1, 3, 5, 7, 9) for s in (1, 2, 3, 4)]
SPECIALISATIONS += [Specialisation(f, m, 5, 2) for f in STORAGE_TYPES for m in STORAGE_TYPES if (f, m) != (torch.float32,) * 2]
NO_SPILL_FLOATS = 150  # register arrays up to this size stay in registers (benchmarks/NOTES.md)
EVERY_VARIANT = [Specialisation(spec.features, spec.masks, spec.kernel_size, spec.scale_factor, **table)
                 for spec in SPECIALISATIONS for table in variant_sets()]
PAPER_DEFAULTS = [Specialisation(torch.float32, torch.float32, 5, 2, **table) for table in variant_sets()]


def compile_with_cupy_nvrtc(options):
    """What CuPy's RawModule does on a GPU: its own NVRTC bindings."""
    program = cupy_nvrtc.createProgram(KERNEL_SOURCE.read_text(), "carafe.cu", [], [])
    try:
        try:
            cupy_nvrtc.compileProgram(program, list(options))
        except cupy_nvrtc.NVRTCError as error:
            raise AssertionError(f"{error}\n{cupy_nvrtc.getProgramLog(program)}") from error
        if any("compute_" in o for o in options):
            return cupy_nvrtc.getPTX(program)
        return cupy_nvrtc.getCUBIN(program)
    finally:
        cupy_nvrtc.destroyProgram(program)


@pytest.mark.parametrize("spec", SPECIALISATIONS, ids=str)
def test_every_entry_point_is_in_the_ptx(spec):
    ptx = compile_with_cupy_nvrtc(["--gpu-architecture=compute_80", *nvrtc_options(spec)])
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(ENTRY_POINTS)


@pytest.mark.parametrize("spec", SPECIALISATIONS, ids=str)
def test_compiles_to_sass_for_sm_80(spec):
    cubin = compile_with_cupy_nvrtc(["--gpu-architecture=sm_80", *nvrtc_options(spec)])
    assert len(cubin) > 1000


@pytest.mark.parametrize("spec", EVERY_VARIANT, ids=str)
def test_every_variant_compiles_for_sm_90_with_its_arrays_in_registers(spec):
    # ptxas reports each entry point's stack frame: a register array it could not keep in registers lives there.
    lib = nvrtc.load(13) or nvrtc.load(12)
    program = nvrtc.compile_program(lib, KERNEL_SOURCE.read_text(),
                                    ["--gpu-architecture=sm_90", "--ptxas-options=--verbose", *nvrtc_options(spec)])
    assert len(program.binary) > 1000
    frames = dict(re.findall(r"Function properties for (\w+)\s+ptxas\s+\.\s+(\d+) bytes stack frame", program.log))
    assert set(frames) == set(ENTRY_POINTS)
    for kernel in (*KERNELS, *DOWN_KERNELS):
        if spec.variant(kernel).register_floats(spec.kernel_size, spec.scale_factor) <= NO_SPILL_FLOATS:
            assert frames[f"carafe_{kernel}"] == "0", kernel


@pytest.mark.parametrize("spec", SPECIALISATIONS + PAPER_DEFAULTS[1:], ids=str)
def test_compiles_for_volta_with_cuda12_nvrtc(spec):
    lib = nvrtc.load(12)
    if lib is None:
        if os.environ.get("CI"):
            pytest.fail("nvidia-cuda-nvrtc-cu12 (cuda12 extra) is missing: sm_70 cannot be checked")
        pytest.skip("needs nvidia-cuda-nvrtc-cu12 for sm_70")
    program = nvrtc.compile_program(lib, KERNEL_SOURCE.read_text(), ["--gpu-architecture=sm_70", *nvrtc_options(spec)])
    assert len(program.binary) > 1000

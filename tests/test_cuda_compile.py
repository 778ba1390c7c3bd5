"""Every kernel specialisation compiles through NVRTC for sm_70, sm_80 and sm_90 (no GPU or driver needed):
every (kernel size, scale) with float32 storage, and every pair of storage types of features and masks."""

import os
import re

import pytest
import torch

from carafe_ultra.backends.cupy_launcher import KERNEL_SOURCE, nvrtc_options
from carafe_ultra.backends.kernel_types import STORAGE_TYPES, Specialisation

if os.environ.get("CI"):  # CI installs the cuda12 extra: a missing CuPy there is a failure, not a skip
    import cupy  # noqa: F401
else:
    pytest.importorskip("cupy")
from cupy.cuda import nvrtc  # noqa: E402

from tests import nvrtc12  # noqa: E402

ENTRY_POINTS = {"carafe_forward", "carafe_backward_masks", "carafe_backward_features"}
SPECIALISATIONS = [Specialisation(torch.float32, torch.float32, k, s) for k in (1, 3, 5, 7, 9) for s in (1, 2, 3, 4)]
SPECIALISATIONS += [Specialisation(f, m, 5, 2) for f in STORAGE_TYPES for m in STORAGE_TYPES if (f, m) != (torch.float32,) * 2]


def compile_with_cupy_nvrtc(options):
    program = nvrtc.createProgram(KERNEL_SOURCE.read_text(), "carafe.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(program, list(options))
        except nvrtc.NVRTCError as error:
            raise AssertionError(f"{error}\n{nvrtc.getProgramLog(program)}") from error
        return nvrtc.getPTX(program) if any("compute_" in o for o in options) else nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("spec", SPECIALISATIONS, ids=str)
def test_every_entry_point_is_in_the_ptx(spec):
    ptx = compile_with_cupy_nvrtc(["--gpu-architecture=compute_80", *nvrtc_options(spec)])
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == ENTRY_POINTS
    assert ".local" not in ptx or spec.kernel_size > 7  # register arrays stay in registers up to k=7


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("spec", SPECIALISATIONS, ids=str)
def test_compiles_to_sass(arch, spec):
    cubin = compile_with_cupy_nvrtc([f"--gpu-architecture={arch}", *nvrtc_options(spec)])
    assert len(cubin) > 1000


@pytest.mark.parametrize("spec", SPECIALISATIONS, ids=str)
def test_compiles_for_volta_with_cuda12_nvrtc(spec):
    lib = nvrtc12.load()
    if lib is None:
        if os.environ.get("CI"):
            pytest.fail("nvidia-cuda-nvrtc-cu12 (cuda12 extra) is missing: sm_70 cannot be checked")
        pytest.skip("needs nvidia-cuda-nvrtc-cu12 for sm_70")
    cubin = nvrtc12.compile_cubin(lib, KERNEL_SOURCE.read_text(), ["--gpu-architecture=sm_70", *nvrtc_options(spec)])
    assert len(cubin) > 1000

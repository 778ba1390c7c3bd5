"""CUDA 12's NVRTC through ctypes, for the one target CUDA 13's NVRTC dropped (sm_70, Volta).

CuPy loads whichever NVRTC its library finder prefers; with PyTorch's CUDA 13 wheels present that is NVRTC 13,
which no longer compiles for sm_70. The ``nvidia-cuda-nvrtc-cu12`` wheel (in the cuda12 extra) still does.
"""

from __future__ import annotations

import ctypes
from pathlib import Path


def load() -> ctypes.CDLL | None:
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    for folder in nvidia.cuda_nvrtc.__path__:
        path = Path(folder) / "lib" / "libnvrtc.so.12"
        if path.is_file():
            return ctypes.CDLL(str(path))
    return None


def compile_cubin(lib: ctypes.CDLL, source: str, options: list[str]) -> bytes:
    program = ctypes.c_void_p()
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"carafe.cu", 0, None, None))
    try:
        opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        if lib.nvrtcCompileProgram(program, len(options), opts) != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            raise RuntimeError(log.value.decode())
        size = ctypes.c_size_t()
        check(lib, lib.nvrtcGetCUBINSize(program, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetCUBIN(program, cubin))
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(lib.nvrtcGetErrorString(status).decode())

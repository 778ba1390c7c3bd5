"""NVRTC through ctypes: compile kernels/carafe.cu for a GPU architecture with no GPU or driver present.

CuPy compiles with whichever NVRTC its library finder prefers (with PyTorch's CUDA 13 wheels present, NVRTC 13) and
hands back a cubin one byte short (cuobjdump then finds no code in it), and CUDA 13 dropped Volta (sm_70). This
module loads a chosen NVRTC release from the ``nvidia-*`` wheels directly: 13 for what CuPy builds on current GPUs,
12 (``nvidia-cuda-nvrtc-cu12``, in the cuda12 extra) for sm_70. The compile checks and the static kernel budget use it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path


class NvrtcError(RuntimeError):
    """NVRTC refused the source or the options; the message holds its log."""


@functools.cache
def load(major: int) -> ctypes.CDLL | None:
    """NVRTC ``major`` (12 or 13) from the installed ``nvidia-*`` wheels, or None if none is installed."""
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else ():
        for path in sorted(Path(root).glob(f"*/lib/libnvrtc.so.{major}")):
            return ctypes.CDLL(str(path))
    return None


@dataclass(frozen=True)
class Program:
    """What NVRTC made of one compilation: the binary (PTX text or cubin) and its log."""

    binary: bytes
    log: str


def compile_program(lib: ctypes.CDLL, source: str, options: list[str], name: str = "carafe.cu") -> Program:
    """Compile ``source`` with ``options``; a cubin for ``--gpu-architecture=sm_XX``, PTX for ``compute_XX``."""
    program = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None))
    try:
        opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(program, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        if status != 0:
            raise NvrtcError(log.value.decode(errors="replace"))
        ptx = any(o.startswith("--gpu-architecture=compute_") for o in options)
        get_size, get = (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX) if ptx else (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN)
        _check(lib, get_size(program, ctypes.byref(size)))
        binary = ctypes.create_string_buffer(size.value)
        _check(lib, get(program, binary))
        return Program(binary.raw.rstrip(b"\0") if ptx else binary.raw, log.value.decode(errors="replace"))
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def version(lib: ctypes.CDLL) -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
    return major.value, minor.value


def _check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcError(lib.nvrtcGetErrorString(status).decode())

"""CARAFE on CUDA through CuPy RawKernels (kernels/carafe.cu), registered as torch.library custom ops.

The ops are opaque to torch.compile (their fake implementations give it shapes, so there is no graph break)
and carry their own autograd formula. Kernels are compiled once per (device, kernel size, scale) and cached
at module level, so CARAFE modules stay picklable and deep-copyable. Launches go to PyTorch's current stream
on the tensors' own device.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

KERNEL_DIR = Path(__file__).parent / "kernels"
KERNEL_SOURCE = KERNEL_DIR / "carafe.cu"
THREADS_PER_BLOCK = 128
# Channels per thread in the forward kernel: fewer means more threads (parallelism) and more mask re-reads.
FORWARD_CHANNEL_CHUNK = 64
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535
_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
SUPPORTED_DTYPES = tuple(_SUFFIX)


def nvrtc_options(kernel_size: int, scale_factor: int) -> tuple[str, ...]:
    """Compiler options of one specialisation; the tests compile with exactly these."""
    return ("-DCARAFE_K=%d" % kernel_size, "-DCARAFE_S=%d" % scale_factor, "--std=c++14")


@functools.lru_cache(maxsize=None)
def _module(kernel_size: int, scale_factor: int):
    """One specialisation of kernels/carafe.cu, compiled on first use (CuPy also caches the binary on disk)."""
    import cupy

    return cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=nvrtc_options(kernel_size, scale_factor))


@functools.lru_cache(maxsize=None)
def _kernel(device_index: int, kernel_size: int, scale_factor: int, name: str):
    """One entry point loaded on one device, cached for the process (never on module instances)."""
    import cupy

    with cupy.cuda.Device(device_index):
        return _module(kernel_size, scale_factor).get_function(name)


def _launch(name: str, like: Tensor, kernel_size: int, scale_factor: int, threads: int, grid_y: int, *args) -> None:
    """Run carafe_<name>_<dtype> over ``threads`` x ``grid_y`` on ``like``'s device and current torch stream."""
    import cupy
    import numpy as np

    if threads == 0:
        return
    blocks = -(-threads // THREADS_PER_BLOCK)
    if blocks > MAX_GRID_X or grid_y > MAX_GRID_Y:
        raise ValueError(f"CARAFE input too large for one launch ({blocks} x {grid_y} blocks of {THREADS_PER_BLOCK})")
    device = like.device.index
    kernel = _kernel(device, kernel_size, scale_factor, f"carafe_{name}_{_SUFFIX[like.dtype]}")
    # Pointers travel as 64-bit integers (bfloat16 tensors have no __cuda_array_interface__), sizes as int64.
    params = tuple(np.uint64(a.data_ptr()) if isinstance(a, Tensor) else np.int64(a) for a in args)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(like.device).cuda_stream, device)
    with cupy.cuda.Device(device), stream:
        kernel((blocks, grid_y), (THREADS_PER_BLOCK,), params)


def launch_geometry(name: str, shape: tuple[int, int, int, int], group_size: int, scale_factor: int) -> tuple[int, int, tuple[int, ...]]:
    """(threads, grid_y, trailing int args) of one kernel launch for features of ``shape`` (N, C, H, W).

    Shared by the CUDA launches and the CPU emulation in the tests, so both run the same geometry.
    """
    n, channels, height, width = shape
    dims = (n, channels, height, width, group_size)
    if name == "backward_features":
        return n * channels * height * width, 1, dims
    pixels = n * group_size * height * width * scale_factor**2
    if name == "backward_masks":
        return pixels, 1, dims
    per_group = channels // group_size
    chunks = max(1, -(-per_group // FORWARD_CHANNEL_CHUNK))
    return pixels, chunks, (*dims, -(-per_group // chunks))


def _run(name: str, like: Tensor, kernel_size: int, group_size: int, scale_factor: int, *tensors: Tensor) -> None:
    threads, grid_y, sizes = launch_geometry(name, tuple(like.shape), group_size, scale_factor)
    _launch(name, like, kernel_size, scale_factor, threads, grid_y, *tensors, *sizes)


@torch.library.custom_op("carafe_ultra::carafe_forward", mutates_args=())
def carafe_forward(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    features, masks = features.contiguous(), masks.contiguous()
    n, channels, height, width = features.shape
    out = features.new_empty(n, channels, height * scale_factor, width * scale_factor)
    _run("forward", features, kernel_size, group_size, scale_factor, features, masks, out)
    return out


@carafe_forward.register_fake
def _(features, masks, kernel_size, group_size, scale_factor):
    n, channels, height, width = features.shape
    return features.new_empty(n, channels, height * scale_factor, width * scale_factor)


@torch.library.custom_op("carafe_ultra::carafe_backward", mutates_args=())
def carafe_backward(
    grad_out: Tensor, features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int
) -> tuple[Tensor, Tensor]:
    grad_out, features, masks = grad_out.contiguous(), features.contiguous(), masks.contiguous()
    grad_features, grad_masks = torch.empty_like(features), torch.empty_like(masks)
    _run("backward_masks", features, kernel_size, group_size, scale_factor, grad_out, features, grad_masks)
    _run("backward_features", features, kernel_size, group_size, scale_factor, grad_out, masks, grad_features)
    return grad_features, grad_masks


@carafe_backward.register_fake
def _(grad_out, features, masks, kernel_size, group_size, scale_factor):
    return torch.empty_like(features), torch.empty_like(masks)


def _setup_context(ctx, inputs, output) -> None:
    features, masks, kernel_size, group_size, scale_factor = inputs
    ctx.save_for_backward(features, masks)
    ctx.config = (kernel_size, group_size, scale_factor)


def _backward(ctx, grad_out: Tensor):
    features, masks = ctx.saved_tensors
    grad_features, grad_masks = carafe_backward(grad_out, features, masks, *ctx.config)
    return grad_features, grad_masks, None, None, None


carafe_forward.register_autograd(_backward, setup_context=_setup_context)


@functools.lru_cache(maxsize=None)
def cupy_importable() -> bool:
    """Whether CuPy can be imported (looked up once per process)."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def carafe_cuda(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """CARAFE with the CUDA kernels. Inputs are checked by the caller: CUDA tensors of SUPPORTED_DTYPES."""
    compute = torch.promote_types(features.dtype, masks.dtype)
    out = carafe_forward(features.to(compute), masks.to(compute), kernel_size, group_size, scale_factor)
    return out.to(features.dtype)

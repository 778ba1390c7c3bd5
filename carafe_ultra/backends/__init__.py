"""The one place that decides which implementation runs a CARAFE call.

- Exports and tracing record one Gather of the windows and one batched matrix product over the taps per tile of a
  row (modules that predict masks hand their predictor to :func:`exported_from_predictor`, which orders its channels
  and takes the softmax in that form's layout):
  ONNX export :func:`carafe_matmul` (a MatMul, fast in ONNX Runtime), every other tracing (OpenVINO, TorchScript,
  CoreML) and scripting :func:`carafe_einsum` (an Einsum, which NNCF's INT8 quantization leaves in floating point).
  Converters without Gather (NCNN's pnnx) get :func:`carafe_traceable`, the taps' multiply-adds, with a warning that
  says so.
- Features and masks of float32/float16/bfloat16 (each its own) on a device the kernel launcher serves (CUDA
  with CuPy importable): the kernels, :func:`carafe_cuda` (which falls back to the PyTorch path by itself for a
  specialisation that fails its first-use check).
- Everything else (CPU, float64): the PyTorch path, :func:`carafe_torch`. CUDA tensors that land here for want
  of CuPy say so, once.
- ``CARAFE_ULTRA_BACKEND=torch`` or ``=cupy`` forces one (``auto``, the default, decides as above); forcing
  ``cupy`` where the kernels cannot run raises an error saying why.

CARAFE++ downsampling (``downsample=True``) is chosen the same way, between :func:`carafe_downsample_cuda` and
:func:`carafe_downsample_torch`; every export records :func:`carafe_downsample_traceable` (strided slices and
multiply-adds of output-sized tensors, which every converter runs).

Callers go through :func:`carafe_ultra.carafe` and :func:`carafe_ultra.carafe_downsample`; backends receive checked
inputs.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .choice import BACKEND_VARIABLE, backend_choice
from .cuda_backend import SUPPORTED_DTYPES, carafe_cuda, carafe_downsample_cuda, launcher_unavailable
from .torch_backend import (
    carafe_einsum,
    carafe_matmul,
    carafe_torch,
    carafe_traceable,
    einsum_product,
    logits_by_pixel,
    masks_from_logits,
    taps_last_order,
    tiled_windows_product,
)
from .torch_downsample import carafe_downsample_torch, carafe_downsample_traceable

Backend = Callable[[Tensor, Tensor, int, int, int], Tensor]


def is_exporting() -> bool:
    """True while TorchScript traces/scripts or ONNX exports: only plain torch ops may run then."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"carafe-ultra: CARAFE runs its (slower) PyTorch path on CUDA tensors: {reason}.", stacklevel=4)


# Converters that trace the model themselves and have no Gather layer, by the Python package that traces.
_WITHOUT_GATHER = {"pnnx": "NCNN (pnnx) has no Gather layer"}


def _export_form() -> Backend:
    """The form to record for the exporter that is tracing: the MatMul form for ONNX, the Einsum form for the others,
    unless a converter that cannot run them traces (found among the calling frames), which gets the multiply-add form
    and a warning naming it."""
    frame = sys._getframe(1)
    while frame is not None:
        package = frame.f_globals.get("__name__", "").partition(".")[0]
        if package in _WITHOUT_GATHER:
            _warn_export_once(f"{_WITHOUT_GATHER[package]}: CARAFE exports as k² multiply-adds (slower) instead of "
                              "one Gather and one Einsum")
            return carafe_traceable
        frame = frame.f_back
    return carafe_matmul if torch.onnx.is_in_onnx_export() else carafe_einsum


@functools.cache
def _warn_export_once(reason: str) -> None:
    warnings.warn(f"carafe-ultra: {reason}.", stacklevel=5)


def exported_from_predictor(features: Tensor, compressed: Tensor, encoder: nn.Conv2d, kernel_size: int,
                            group_size: int, scale_factor: int) -> Tensor:
    """While exporting: CARAFE of ``features`` with the masks a CARAFE module predicts, its ``encoder`` (whose
    output channels are the logits, (g·k² + tap)·s² + sub-pixel) applied to the ``compressed`` input. The export
    forms take the encoder's channels in :func:`taps_last_order` (a reordered copy of its weights, a constant in the
    exported graph), skip the pixel shuffle and take the softmax where their runtime computes it fastest (ONNX
    Runtime: taps last; OpenVINO: over the channels, as the logits come); the multiply-add form gets the masks as
    usual."""
    form = _export_form()
    if form is carafe_traceable:
        masks = masks_from_logits(encoder(compressed), kernel_size, group_size, scale_factor)
        return form(features, masks, kernel_size, group_size, scale_factor)
    order = taps_last_order(kernel_size, group_size, scale_factor).to(encoder.weight.device)
    bias = None if encoder.bias is None else encoder.bias[order]
    logits = F.conv2d(compressed, encoder.weight[order], bias, encoder.stride, encoder.padding, encoder.dilation)
    onnx = form is carafe_matmul
    by_pixel = logits_by_pixel(logits, kernel_size, group_size, scale_factor, softmax_last=onnx)
    return tiled_windows_product(features, by_pixel, kernel_size, group_size, scale_factor,
                                 torch.matmul if onnx else einsum_product)


def select_backend(features: Tensor, masks: Tensor, downsample: bool = False) -> Backend:
    """Return the implementation for these (already checked) inputs: of CARAFE, or of CARAFE++ downsampling."""
    torch_path, cuda_path = ((carafe_downsample_torch, carafe_downsample_cuda) if downsample
                             else (carafe_torch, carafe_cuda))
    choice = backend_choice()
    exporting = is_exporting()
    if choice == "torch" or (choice == "auto" and exporting):
        if not exporting:
            return torch_path
        return carafe_downsample_traceable if downsample else _export_form()
    if exporting:
        reason = "tracers and exporters record plain PyTorch ops only"
    elif features.dtype not in SUPPORTED_DTYPES or masks.dtype not in SUPPORTED_DTYPES:
        reason = (f"the CUDA kernels take float32, float16 or bfloat16, got {features.dtype} features and "
                  f"{masks.dtype} masks")  # float64 takes the PyTorch path by design: no warning
    else:
        reason = launcher_unavailable(features.device)
        if reason is None:
            return cuda_path
        if features.is_cuda and choice == "auto":
            _warn_once(reason)
    if choice == "cupy":
        raise ValueError(f"{BACKEND_VARIABLE}=cupy, but {reason}")
    return torch_path


__all__ = ["BACKEND_VARIABLE", "Backend", "backend_choice", "carafe_cuda", "carafe_downsample_cuda",
           "carafe_downsample_torch", "carafe_downsample_traceable", "carafe_einsum", "carafe_matmul", "carafe_torch",
           "carafe_traceable", "exported_from_predictor", "is_exporting", "masks_from_logits", "select_backend"]

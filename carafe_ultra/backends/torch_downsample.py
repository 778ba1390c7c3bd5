"""CARAFE++ content-aware downsampling in plain PyTorch ops: the path for CPUs and float64, and (as
:func:`carafe_downsample_traceable`) for tracing and exports.

Output pixel (oh, ow) reassembles the k×k window around input pixel (s·oh, s·ow). Tap (i, j) of every output pixel
reads the zero-padded input at rows i, i+s, i+2s, ... and columns j, j+s, ...: one strided view of it (the export
form reads the same values from the input's s×s phases instead). So the op is k² multiply-adds of output-sized
tensors (1/s² of the input), never the k²-times unfold. Channels are processed in
chunks whose accumulator stays near cache size; float16/bfloat16 accumulate in float32; the backward pass is written
out, and autograd runs through it for the second order. Mixed input dtypes are computed in the wider one and returned
in the features' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .torch_backend import accumulator_dtype, channel_chunks, promoted, pytorch_path


def downsampled_size(height: int, width: int, scale_factor: int) -> tuple[int, int]:
    """The output's (height, width): ceil(H / s), ceil(W / s)."""
    return -(-height // scale_factor), -(-width // scale_factor)


def carafe_downsample_traceable(features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                                scale_factor: int) -> Tensor:
    """CARAFE++ downsampling for tracers and exporters, in pad, reshape, contiguous slices, mul and add, tensors of
    rank <= 5 with the batch first (no strided slice: NCNN's converter gets those wrong).

    The zero-padded input is split into its s×s phases (rows ≡ p, columns ≡ q modulo s) by reshapes and size-1
    slices. Tap (i, j) of every output pixel then reads phase (i mod s, j mod s) at a contiguous window offset by
    (i // s, j // s), times that tap's masks: k² multiply-adds of output-sized tensors, never the k²-times unfold.
    Autograd, if any, runs through the ops."""
    wide_features, wide_masks = promoted(features, masks)
    n, channels, height, width = features.shape
    k, s, g = kernel_size, scale_factor, group_size
    r = (k - 1) // 2
    out_h, out_w = downsampled_size(height, width, s)
    # Phase rows (cols) 0 .. out + ceil((k-1)/s) - 1 cover every tap of every output pixel.
    phase_h, phase_w = out_h + -(-(k - 1) // s), out_w + -(-(k - 1) // s)
    padded = F.pad(wide_features, (r, s * phase_w - width - r, r, s * phase_h - height - r))
    rows = padded.reshape(n, channels * phase_h, s, s * phase_w)
    phases = {}
    for p in range(s):
        row_phase = rows[:, :, p].reshape(n, channels * phase_h, phase_w, s)
        for q in range(s):
            phases[p, q] = row_phase[..., q].reshape(n, g, channels // g, phase_h, phase_w)
    taps = wide_masks.reshape(n, g, k * k, out_h, out_w).split(1, dim=2)
    out = None
    for tap, weight in enumerate(taps):
        i, j = divmod(tap, k)
        window = phases[i % s, j % s][..., i // s : i // s + out_h, j // s : j // s + out_w]
        term = window * weight
        out = term if out is None else out + term
    return out.reshape(n, channels, out_h, out_w).to(features.dtype)


def _padded(features: Tensor, kernel_size: int) -> Tensor:
    """The input zero-padded by r on every side: enough for every output pixel's window, since the last one centres on
    row s·(ceil(H/s) - 1) <= H - 1."""
    r = (kernel_size - 1) // 2
    return F.pad(features, (r, r, r, r))


def _tap_window(tap: int, kernel_size: int, scale_factor: int, out_h: int, out_w: int) -> tuple[slice, slice]:
    """The rows and columns of the zero-padded input that tap ``tap`` reads for every output pixel."""
    i, j = divmod(tap, kernel_size)
    s = scale_factor
    return slice(i, i + s * (out_h - 1) + 1, s), slice(j, j + s * (out_w - 1) + 1, s)


def _reassemble(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    n, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    out_h, out_w = downsampled_size(height, width, s)
    acc_dtype = accumulator_dtype(features.dtype)
    padded = _padded(features, k)
    taps = masks.reshape(n, group_size, k * k, 1, out_h, out_w).to(acc_dtype)
    out = features.new_empty(n, channels, out_h, out_w)
    for group, start, end in channel_chunks(channels, group_size, n * out_h * out_w):
        window = padded[:, start:end].to(acc_dtype)
        acc = window.new_zeros(n, end - start, out_h, out_w)
        for tap in range(k * k):
            acc.addcmul_(window[(..., *_tap_window(tap, k, s, out_h, out_w))], taps[:, group, tap])
        out[:, start:end] = acc
    return out


def _reassemble_backward(
    grad_out: Tensor,
    features: Tensor,
    masks: Tensor,
    kernel_size: int,
    group_size: int,
    scale_factor: int,
    want_features: bool,
    want_masks: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of the downsampling reassembly w.r.t. features and masks (None where not wanted).

    grad_features[c, s·oh+i-r, s·ow+j-r] += grad_out[c, oh, ow] · mask_tap(i, j)[oh, ow]
    grad_masks[tap(i, j), oh, ow]         = Σ_{c in group} grad_out[c, oh, ow] · features[c, s·oh+i-r, s·ow+j-r]
    """
    n, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    r = (k - 1) // 2
    out_h, out_w = downsampled_size(height, width, s)
    acc_dtype = accumulator_dtype(features.dtype)
    padded = _padded(features, k)
    taps = masks.reshape(n, group_size, k * k, 1, out_h, out_w).to(acc_dtype)
    grad_padded = torch.zeros_like(padded, dtype=acc_dtype) if want_features else None
    grad_taps = torch.zeros_like(taps) if want_masks else None

    for group, start, end in channel_chunks(channels, group_size, n * out_h * out_w):
        grad = grad_out[:, start:end].to(acc_dtype)
        window = padded[:, start:end].to(acc_dtype)
        for tap in range(k * k):
            rows, cols = _tap_window(tap, k, s, out_h, out_w)
            if grad_padded is not None:
                grad_padded[:, start:end, rows, cols].addcmul_(grad, taps[:, group, tap])
            if grad_taps is not None:
                grad_taps[:, group, tap] += (grad * window[:, :, rows, cols]).sum(1, keepdim=True)

    grad_features = grad_masks = None
    if grad_padded is not None:
        grad_features = grad_padded[:, :, r : r + height, r : r + width].to(features.dtype)
    if grad_taps is not None:
        grad_masks = grad_taps.reshape(masks.shape).to(masks.dtype)
    return grad_features, grad_masks


# CARAFE++ downsampling with standard ops and a hand-written backward pass (inputs checked by the caller), and its
# forward values and gradients without autograd (the CUDA path falls back to them).
carafe_downsample_torch, downsample_reassemble, downsample_reassemble_backward = pytorch_path(_reassemble,
                                                                                             _reassemble_backward)

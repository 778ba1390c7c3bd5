"""CARAFE in plain PyTorch ops: the path for CPUs, float64, and (as :func:`carafe_matmul`, :func:`carafe_einsum` and
:func:`carafe_traceable`) for TorchScript tracing and exports.

The widely copied formulation unfolds the input into a tensor k² times its size and multiplies it with the
masks. This one never does: channels are processed in chunks whose accumulator stays near cache size, and
each chunk adds up the k² taps as shifted multiply-adds. Work happens in an (N, c, s, s, H·Wp) layout over
the zero-padded width Wp = W + 2r: there every tap's window is one contiguous slice of the flattened padded
input, so each op streams over H·Wp elements instead of rows of W (the 2r extra columns per row are computed
and dropped). float16/bfloat16 accumulate in float32. The backward pass is written out too (:func:`pytorch_path`, which CARAFE++
downsampling's path shares). Mixed input dtypes are computed in the wider one and returned in the features' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Elements per chunk accumulator (8 MiB in float32): large enough to amortise per-op overhead,
# small enough to stay close to the cache of one core.
CHUNK_ELEMENTS = 1 << 21


def promoted(features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Both inputs in the wider of their dtypes (the PyTorch path's rule for mixed dtypes)."""
    compute = torch.promote_types(features.dtype, masks.dtype)
    return features.to(compute), masks.to(compute)


def carafe_traceable(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """CARAFE for tracers and exporters, in the plainest ops converters know (pad, reshape, expand, slice, mul,
    add) and tensors of rank <= 5 (Core ML's limit): the zero-padded input is upsampled by repetition once, and
    each of the k² taps is one shifted window of it times that tap's masks. It holds output-sized tensors, never
    the k²-times-larger unfolded input; autograd, if any, runs through the ops."""
    wide_features, wide_masks = promoted(features, masks)
    n, channels, height, width = features.shape
    k, s, g = kernel_size, scale_factor, group_size
    r = (k - 1) // 2
    out_h, out_w = height * s, width * s
    source = _repeated(F.pad(wide_features, (r, r, r, r)), s)  # pixel (y, x) of the padded input at (y·s.., x·s..)
    source = source.reshape(n, g, channels // g, (height + 2 * r) * s, (width + 2 * r) * s)
    taps = wide_masks.reshape(n, g, k * k, out_h, out_w).split(1, dim=2)  # one node for all k² taps
    out = None
    for tap, weight in enumerate(taps):
        i, j = divmod(tap, k)
        term = source[..., i * s : i * s + out_h, j * s : j * s + out_w] * weight
        out = term if out is None else out + term
    return out.reshape(n, channels, out_h, out_w).to(features.dtype)


def _repeated(x: Tensor, scale: int) -> Tensor:
    """(N, C, H, W) -> (N, C, H·s, W·s), every pixel repeated s×s times: nearest upsampling that is exact for any
    integer s, in rank-4 reshapes and expands."""
    n, channels, height, width = x.shape
    planes = n * channels
    rows = x.reshape(planes, height, 1, width).expand(planes, height, scale, width).reshape(planes, height * scale, width)
    return rows.reshape(planes, height * scale, width, 1).expand(planes, height * scale, width, scale).reshape(
        n, channels, height * scale, width * scale)


def carafe_matmul(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """CARAFE for ONNX export: :func:`tiled_windows_product` with the product as a batched MatMul, which ONNX
    Runtime runs about 4× faster than the same Einsum."""
    return tiled_windows_product(features, masks_by_pixel(masks, kernel_size, group_size, scale_factor), kernel_size,
                                 group_size, scale_factor, torch.matmul)


def carafe_einsum(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """CARAFE for the other exports (OpenVINO, TorchScript, CoreML): :func:`tiled_windows_product` with the product
    as an Einsum, which INT8 quantizers leave in floating point (NNCF quantizes MatMul inputs, and OpenVINO's CPU
    plugin then cannot compile that MatMul in bfloat16); OpenVINO runs it as fast as the MatMul."""
    return tiled_windows_product(features, masks_by_pixel(masks, kernel_size, group_size, scale_factor), kernel_size,
                                 group_size, scale_factor, einsum_product)


def einsum_product(a: Tensor, b: Tensor) -> Tensor:
    """The batched matrix products of :func:`tiled_windows_product` as Einsums, batch axes spelt out (Core ML's
    converter takes no ellipsis of rank 3)."""
    batch = "abcdef"[: a.dim() - 2]
    return torch.einsum(f"{batch}ij,{batch}jk->{batch}ik", a, b)


def masks_by_pixel(masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """Masks (N, G·k², H·s, W·s) -> (N, H·W, G, s², k²): each input pixel's s×s block of masks, taps last."""
    n, _, out_h, out_w = masks.shape
    k, s, g = kernel_size, scale_factor, group_size
    height, width = out_h // s, out_w // s
    by_pixel = masks.reshape(n, g * k * k * height, s, width, s).permute(0, 1, 3, 2, 4)
    by_pixel = by_pixel.reshape(n, g * k * k, height * width * s * s).transpose(1, 2)
    return by_pixel.reshape(n, height * width, s * s, g, k * k).transpose(2, 3)


def masks_from_logits(logits: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """The mask predictor's logits (N, G·k²·s², H, W), channel (g·k² + tap)·s² + sub-pixel, to CARAFE's masks
    (N, G·k², H·s, W·s): ``pixel_shuffle``, then a softmax over each group's k² taps (mmcv's convention)."""
    shuffled = F.pixel_shuffle(logits, scale_factor)
    return shuffled.unflatten(1, (group_size, kernel_size**2)).softmax(dim=2).flatten(1, 2)


def taps_last_order(kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """The mask predictor's output channels reordered taps last: entry (g·s² + sub-pixel)·k² + tap holds channel
    (g·k² + tap)·s² + sub-pixel. Logits of an encoder whose output channels are taken in this order come out as
    :func:`logits_by_pixel` reads them, with no transpose of their own."""
    k2, sub_pixels = kernel_size**2, scale_factor**2
    return torch.arange(group_size * k2 * sub_pixels).reshape(group_size, k2, sub_pixels).transpose(1, 2).reshape(-1)


def logits_by_pixel(logits: Tensor, kernel_size: int, group_size: int, scale_factor: int,
                    softmax_last: bool = True) -> Tensor:
    """The masks of :func:`masks_from_logits` in the layout of :func:`masks_by_pixel`, (N, H·W, G, s², k²), from
    logits (N, G·s²·k², H, W) whose channels are in :func:`taps_last_order`, without the pixel shuffle.
    ``softmax_last``: the softmax is taken there, over the last axis (ONNX Runtime's fast case); else over the taps'
    axis of the logits as they come, channels first (OpenVINO's fast case)."""
    n, _, height, width = logits.shape
    k, s, g = kernel_size, scale_factor, group_size
    if not softmax_last:
        logits = logits.reshape(n, g * s * s, k * k, height * width).softmax(dim=2)
    by_pixel = logits.reshape(n, g * s * s * k * k, height * width).transpose(1, 2)
    by_pixel = by_pixel.reshape(n, height * width, g, s * s, k * k)
    return by_pixel.softmax(dim=-1) if softmax_last else by_pixel


# Tile width of the export forms: each GEMM covers t consecutive input pixels of a row, whose windows share
# t + k - 1 input columns. 10 divides the widths of 320/640/1280 px models' feature maps.
TILE_WIDTH = 10


def tiled_windows_product(features: Tensor, by_pixel: Tensor, kernel_size: int, group_size: int, scale_factor: int,
                          product: Callable[[Tensor, Tensor], Tensor], tile_width: int = TILE_WIDTH) -> Tensor:
    """CARAFE in standard operators (Pad, Transpose, Reshape, Slice, Gather and the batched matrix ``product``),
    tensors of rank <= 5 with the batch on the first axis, shaped for exported graphs on CPUs (docs/exports.md
    measures it against the alternatives). ``by_pixel`` holds the masks as :func:`masks_by_pixel` lays them out.

    The contraction over the k² taps is one batched matrix product per tile of t consecutive input pixels of a row:
    their windows cover k rows of t + k - 1 input columns, so the tile's (s·t·s) output pixels are a banded
    (s·t·s × k·(t + k - 1)) mask matrix times those k·(t + k - 1) input pixels' channels, the channels being the
    product's wide dimension. The input is gathered once per tile (about (t + k - 1)·k / t copies of each pixel
    instead of k² per pixel). ``product`` lays out the band too: the masks of every tile's u-th pixel times a 0/1
    matrix that puts tap j in column u + j. Rows whose width is no multiple of t get a zero-padded last tile, cropped
    from the output; the padding is computed from the traced width, so ``dynamic=True`` exports hold at every size.
    Mixed dtypes are computed in the wider one, and the result has the features' dtype. Autograd, if any, runs
    through the ops."""
    wide_features, by_pixel = promoted(features, by_pixel)
    n, channels, height, width = features.shape
    k, g, s, t = kernel_size, group_size, scale_factor, tile_width
    r = (k - 1) // 2
    tiles = (width + t - 1) // t
    extra = tiles * t - width  # zero columns that complete the last tile
    band = t + k - 1  # input columns a tile's windows cover
    blocks = n * height * tiles
    masks = F.pad(by_pixel.reshape(n, height, width, g * s * s * k * k), (0, 0, 0, extra))
    masks = masks.reshape(blocks, t, -1).transpose(0, 1).reshape(t, blocks * g * s * s * k, k)  # (u, rows, tap j)
    # The band: pixel u's taps j go to columns u + j, one 0/1 placement matrix per u (a constant of the graph).
    device = features.device
    placement = torch.arange(band, device=device) == (
        torch.arange(t, device=device).reshape(t, 1, 1) + torch.arange(k, device=device).reshape(k, 1))
    masks = product(masks, placement.to(masks.dtype))  # (u, rows, band), rows: (blocks, G, dy, dx, i)
    masks = masks.reshape(t, blocks * g * s, s * k * band).transpose(0, 1)  # ((blocks, G, dy), u, (dx, i, band))
    masks = masks.reshape(n, height * tiles, g, s * t * s, k * band)
    flat = F.pad(wide_features, (r, r + extra, r, r)).permute(0, 2, 3, 1).reshape(n, -1, channels)  # (N, Hp·Wp, C)
    windows = flat.index_select(1, _tile_window_index(height, tiles, k, t, device))
    windows = windows.reshape(n, height * tiles, k * band, g, channels // g).transpose(2, 3) if g > 1 else (
        windows.reshape(n, height * tiles, 1, k * band, channels))  # (N, H·tiles, G, k·band, C/G)
    out = product(masks, windows)  # (N, H·tiles, G, s·t·s, C/G)
    if g > 1:
        out = out.transpose(2, 3)
    out = out.reshape(n * height, tiles, s, t * s * channels).transpose(1, 2)  # (N·H, s, tiles, t·s·C)
    out = out.reshape(n, height * s, tiles * t * s, channels)[:, :, : width * s]  # channels last
    return out.permute(0, 3, 1, 2).to(features.dtype)


def _tile_window_index(height: int, tiles: int, kernel_size: int, tile_width: int, device: torch.device) -> Tensor:
    """Positions in the flattened zero-padded (H + k - 1)×(tiles·t + k - 1) plane of each tile's k×(t + k - 1) input
    pixels, tile-major: (H·tiles·k·(t + k - 1),)."""
    padded_width = tiles * tile_width + kernel_size - 1
    starts = (torch.arange(height, device=device) * padded_width)[:, None] + (
        torch.arange(tiles, device=device) * tile_width)
    covered = (torch.arange(kernel_size, device=device) * padded_width)[:, None] + torch.arange(
        tile_width + kernel_size - 1, device=device)
    # Integer positions whatever the converter made of the traced tile count (Core ML's floor division is float).
    return (starts.reshape(-1, 1) + covered.reshape(1, -1)).reshape(-1).long()


class PyTorchPath(NamedTuple):
    """One operation's PyTorch path, made by :func:`pytorch_path`: ``op`` (differentiable, to second order), and its
    ``values`` and ``gradients`` without autograd (what the CUDA path falls back to and checks against). Each takes
    inputs of any floating dtypes, computes in the wider one and returns each result in its input's dtype."""

    op: Callable[..., Tensor]
    values: Callable[..., Tensor]
    gradients: Callable[..., tuple[Tensor | None, Tensor | None]]


def pytorch_path(forward: Callable[..., Tensor], backward: Callable[..., tuple[Tensor | None, Tensor | None]]
                 ) -> PyTorchPath:
    """The path of an operation written as ``forward(features, masks, k, G, s)`` and ``backward(grad_out, features,
    masks, k, G, s, want_features, want_masks)`` on inputs of one dtype. The backward pass is written out (autograd
    through a tap loop is ~3× slower); autograd runs through it for the second order."""

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                    scale_factor: int) -> Tensor:
            ctx.save_for_backward(features, masks)
            ctx.config = (kernel_size, group_size, scale_factor)
            return forward(features, masks, kernel_size, group_size, scale_factor)

        @staticmethod
        def backward(ctx, grad_out: Tensor):
            features, masks = ctx.saved_tensors
            want_features, want_masks = ctx.needs_input_grad[:2]
            return (*backward(grad_out, features, masks, *ctx.config, want_features, want_masks), None, None, None)

    def op(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
        return Function.apply(*promoted(features, masks), kernel_size, group_size, scale_factor).to(features.dtype)

    def values(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
        return forward(*promoted(features, masks), kernel_size, group_size, scale_factor).to(features.dtype)

    def gradients(grad_out: Tensor, features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                  scale_factor: int, want_features: bool, want_masks: bool) -> tuple[Tensor | None, Tensor | None]:
        wide_features, wide_masks = promoted(features, masks)
        grads = backward(grad_out.to(wide_features.dtype), wide_features, wide_masks, kernel_size, group_size,
                         scale_factor, want_features, want_masks)
        return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, (features, masks)))

    return PyTorchPath(op, values, gradients)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def channel_chunks(channels: int, groups: int, elements_per_channel: int) -> Iterator[tuple[int, int, int]]:
    """Yield (group, first channel, end channel): balanced chunks that never straddle a group."""
    per_group = channels // groups
    limit = max(1, CHUNK_ELEMENTS // max(1, elements_per_channel))
    n_chunks = -(-per_group // limit)
    size = -(-per_group // n_chunks)
    for group in range(groups):
        end = (group + 1) * per_group
        for start in range(group * per_group, end, size):
            yield group, start, min(start + size, end)


def _flat_padded(features: Tensor, r: int) -> Tensor:
    """(N, C, H, W) -> (N, C, (H+2r+1)·(W+2r)): zero-padded planes, flattened; the spare bottom row keeps the
    last tap's slice in bounds."""
    return F.pad(features, (r, r, r, r + 1)).flatten(2)


def _tap_offset(tap: int, kernel_size: int, padded_width: int) -> int:
    i, j = divmod(tap, kernel_size)
    return i * padded_width + j


def _masks_by_tap(masks: Tensor, kernel_size: int, group_size: int, scale_factor: int, dtype: torch.dtype) -> Tensor:
    """(N, G·k², sH, sW) -> (N, G, k², s, s, H·Wp), contiguous, zero in the 2r extra columns of each row."""
    n, _, out_h, out_w = masks.shape
    s, r = scale_factor, (kernel_size - 1) // 2
    grid = masks.reshape(n, group_size, kernel_size**2, out_h // s, s, out_w // s, s).permute(0, 1, 2, 4, 6, 3, 5)
    return F.pad(grid, (0, 2 * r)).contiguous().flatten(-2).to(dtype)


def _reassemble(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    n, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    r = (k - 1) // 2
    padded_width, span = width + 2 * r, height * (width + 2 * r)
    acc_dtype = accumulator_dtype(features.dtype)
    padded = _flat_padded(features, r)
    taps = _masks_by_tap(masks, k, group_size, s, acc_dtype)
    out = features.new_empty(n, channels, height * s, width * s)
    for group, start, end in channel_chunks(channels, group_size, n * s * s * span):
        window = padded[:, start:end, None, None].to(acc_dtype)  # (N, c, 1, 1, (H+2r+1)·Wp)
        acc = window.new_zeros(n, end - start, s, s, span)
        for tap in range(k * k):
            offset = _tap_offset(tap, k, padded_width)
            acc.addcmul_(window[..., offset : offset + span], taps[:, group, tap, None])
        # Drop the extra columns; (N, c, H, s, W, s) is the output's memory order.
        blocks = acc.view(n, end - start, s, s, height, padded_width)[..., :width].permute(0, 1, 4, 2, 5, 3)
        out[:, start:end].view(n, end - start, height, s, width, s).copy_(blocks)
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
    """Gradients of the reassembly w.r.t. features and masks (None where not wanted).

    grad_features[c, h+i-r, w+j-r] += Σ_{s×s block of (h, w)} grad_out · mask_tap(i, j)
    grad_masks[tap(i, j), oh, ow]  = Σ_{c in group} grad_out[c, oh, ow] · features[c, oh//s+i-r, ow//s+j-r]
    """
    n, channels, height, width = features.shape
    k, s = kernel_size, scale_factor
    r = (k - 1) // 2
    padded_width, span = width + 2 * r, height * (width + 2 * r)
    acc_dtype = accumulator_dtype(features.dtype)
    padded = _flat_padded(features, r)
    taps = _masks_by_tap(masks, k, group_size, s, acc_dtype)
    grad_padded = torch.zeros_like(padded, dtype=acc_dtype) if want_features else None
    grad_taps = torch.zeros_like(taps) if want_masks else None

    for group, start, end in channel_chunks(channels, group_size, n * s * s * span):
        blocks = grad_out[:, start:end].reshape(n, end - start, height, s, width, s).permute(0, 1, 3, 5, 2, 4)
        # Zero in the extra columns, so they add nothing to grad_features.
        blocks = F.pad(blocks, (0, 2 * r)).contiguous().flatten(-2).to(acc_dtype)  # (N, c, s, s, H·Wp)
        window = padded[:, start:end].to(acc_dtype)
        for tap in range(k * k):
            offset = _tap_offset(tap, k, padded_width)
            if grad_padded is not None:
                grad_padded[:, start:end, offset : offset + span] += (blocks * taps[:, group, tap, None]).sum((2, 3))
            if grad_taps is not None:
                grad_taps[:, group, tap] += (blocks * window[:, :, None, None, offset : offset + span]).sum(1)

    grad_features = grad_masks = None
    if grad_padded is not None:
        planes = grad_padded.view(n, channels, height + 2 * r + 1, padded_width)
        grad_features = planes[:, :, r : r + height, r : r + width].to(features.dtype)
    if grad_taps is not None:
        grid = grad_taps.view(n, group_size, k * k, s, s, height, padded_width)[..., :width]
        grad_masks = grid.permute(0, 1, 2, 5, 3, 6, 4).reshape(masks.shape).to(masks.dtype)
    return grad_features, grad_masks


# CARAFE with standard ops and a hand-written backward pass (inputs checked by the caller), and its forward values and
# gradients without autograd (the CUDA path falls back to them).
carafe_torch, reassemble, reassemble_backward = pytorch_path(_reassemble, _reassemble_backward)

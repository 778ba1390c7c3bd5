"""The functional CARAFE operators: upsampling (CARAFE) and downsampling (CARAFE++)."""

from __future__ import annotations

from torch import Tensor

from ._checks import check_carafe_downsample_inputs, check_carafe_inputs
from .backends import select_backend


def carafe(features: Tensor, masks: Tensor, kernel_size: int, group_size: int = 1, scale_factor: int = 2) -> Tensor:
    r"""Content-aware reassembly of features (CARAFE, Wang et al., ICCV 2019), mmcv's convention.

    Each output pixel is a weighted sum of the k×k input neighbourhood around its source pixel:

    .. math::
        out[n, c, o_h, o_w] = \sum_{i,j<k} X[n, c, o_h/\!/s + i - r, o_w/\!/s + j - r]
                              \cdot M[n, g(c) k^2 + i k + j, o_h, o_w]

    with r = (k - 1) / 2 and g(c) the group of channel c (contiguous blocks of C / G channels). Taps that
    fall outside the input count as zero; the weights are not renormalised.

    Args:
        features (Tensor[N, C, H, W]): the features to upsample.
        masks (Tensor[N, group_size * kernel_size**2, H * scale_factor, W * scale_factor]): reassembly
            weights, usually softmax-normalised over each group's k² taps.
        kernel_size (int): odd reassembly window k >= 1.
        group_size (int): number of channel groups G sharing a mask; must divide C. Default: 1.
        scale_factor (int): integer upsampling factor s >= 1. Default: 2.

    Returns:
        Tensor[N, C, H * scale_factor, W * scale_factor] in the dtype of ``features``.

    Mixed floating dtypes are accepted (autocast hands float16 features with float32 masks) and the result has
    the features' dtype: the CUDA kernels read each input in its own dtype and accumulate in float32, the PyTorch
    path computes in the wider of the two. Differentiable w.r.t. both inputs, to second order.
    """
    check_carafe_inputs(features, masks, kernel_size, group_size, scale_factor)
    return select_backend(features, masks)(features, masks, kernel_size, group_size, scale_factor)


def carafe_downsample(features: Tensor, masks: Tensor, kernel_size: int, group_size: int = 1,
                      scale_factor: int = 2) -> Tensor:
    r"""Content-aware downsampling (the reassembly of CARAFE++, Wang et al., TPAMI 2021, arXiv 2012.04733).

    Each output pixel is a weighted sum of the k×k input neighbourhood around the input pixel it samples:

    .. math::
        out[n, c, o_h, o_w] = \sum_{i,j<k} X[n, c, s\,o_h + i - r, s\,o_w + j - r]
                              \cdot M[n, g(c) k^2 + i k + j, o_h, o_w]

    with r = (k - 1) / 2 and g(c) the group of channel c (contiguous blocks of C / G channels). Taps that fall
    outside the input count as zero; the weights are not renormalised. This is the definition the public
    implementations that cite the paper agree on (docs/operator.md).

    Args:
        features (Tensor[N, C, H, W]): the features to downsample.
        masks (Tensor[N, group_size * kernel_size**2, ceil(H / scale_factor), ceil(W / scale_factor)]): reassembly
            weights, usually softmax-normalised over each group's k² taps.
        kernel_size (int): odd reassembly window k >= 1.
        group_size (int): number of channel groups G sharing a mask; must divide C. Default: 1.
        scale_factor (int): integer stride s >= 1. Default: 2.

    Returns:
        Tensor[N, C, ceil(H / scale_factor), ceil(W / scale_factor)] in the dtype of ``features``.

    Dtypes, backends and gradients as for :func:`carafe`: mixed floating dtypes are accepted, the CUDA kernels
    accumulate in float32, and the result is differentiable w.r.t. both inputs, to second order.
    """
    check_carafe_downsample_inputs(features, masks, kernel_size, group_size, scale_factor)
    return select_backend(features, masks, downsample=True)(features, masks, kernel_size, group_size, scale_factor)

"""Tensor inputs shared by the tests (torch only: the GPU tests import this on machines without Ultralytics)."""

import torch

# (n, channels, height, width, kernel, groups, scale): odd, non-square, tiny (every pixel a border), grouped.
SHAPES = [
    (2, 4, 5, 7, 3, 1, 2),
    (1, 6, 3, 4, 5, 3, 3),
    (2, 8, 6, 5, 7, 4, 1),
    (1, 4, 1, 1, 5, 2, 4),
    (3, 2, 2, 3, 7, 1, 3),
    (1, 4, 4, 4, 1, 4, 2),
    (2, 3, 9, 2, 3, 3, 4),
]


def random_inputs(n, channels, height, width, kernel, groups, scale, dtype=torch.float64, requires_grad=False):
    """Features and softmax-normalised masks for one CARAFE call."""
    return _features_and_masks(n, channels, height, width, kernel, groups, (height * scale, width * scale), dtype,
                               requires_grad)


def _features_and_masks(n, channels, height, width, kernel, groups, masks_size, dtype, requires_grad):
    """Features (n, channels, height, width) and masks (n, groups·kernel², *masks_size), each group's taps
    softmax-normalised."""
    features = torch.randn(n, channels, height, width, dtype=dtype)
    logits = torch.randn(n, groups, kernel * kernel, *masks_size, dtype=dtype)
    masks = logits.softmax(dim=2).reshape(n, groups * kernel * kernel, *masks_size)
    return features.requires_grad_(requires_grad), masks.requires_grad_(requires_grad)


# (n, channels, height, width, kernel, groups, scale) for the downsampling: odd and even sizes, sizes the stride does
# not divide, tiny inputs (every window crosses a border), groups, k 1..9, s 1..4.
DOWN_SHAPES = [
    (2, 4, 5, 7, 3, 1, 2),
    (1, 6, 6, 8, 5, 3, 2),
    (1, 6, 7, 4, 5, 3, 3),
    (2, 8, 6, 5, 7, 4, 1),
    (1, 4, 1, 1, 5, 2, 4),
    (1, 4, 9, 10, 1, 4, 4),
    (2, 3, 9, 2, 9, 3, 3),
    (1, 2, 8, 8, 9, 1, 4),
]


def random_down_inputs(n, channels, height, width, kernel, groups, scale, dtype=torch.float64, requires_grad=False):
    """Features and softmax-normalised masks for one CARAFE++ downsampling call."""
    return _features_and_masks(n, channels, height, width, kernel, groups, (-(-height // scale), -(-width // scale)),
                               dtype, requires_grad)

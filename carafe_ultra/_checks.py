"""Argument checks shared by the functional op and the module.

Every public entry point calls these before touching a tensor, so a wrong argument fails with a message
that names it and says what was expected, instead of a shape error deep inside a kernel.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def check_int(name: str, value: object, *, minimum: int, odd: bool = False) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (and odd when asked), else raise."""
    # bool is an int subclass; True as a kernel size is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if odd and value % 2 == 0:
        raise ValueError(f"{name} must be odd so the window has a centre, got {value}")
    return value


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or float, and not a bool (a flag is not a weight)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_divides(name: str, divisor: int, channels_name: str, channels: int) -> None:
    """Raise unless ``divisor`` splits ``channels`` into equal groups."""
    if channels % divisor:
        raise ValueError(f"{channels_name} ({channels}) must be divisible by {name} ({divisor})")


def checked_input(x: Tensor, channels: int, module: str) -> Tensor:
    """``x`` itself, once it is known to be (N, channels, H, W), else an error naming ``module``. It flows on, so graph
    passes keep the check; modules call it through ``torch.fx.wrap("checked_input")`` in their own namespace, so that
    torch.fx records the call instead of tracing into shapes it does not have."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{module} expects input of shape (N, {channels}, H, W), got {got}")
    return x


def _check_tensor(name: str, tensor: object) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {tensor.dtype}")
    return tensor


def _check_reassembly_inputs(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int,
                             masks_size: Callable[[int, int, int], tuple[int, int]], size_formula: str) -> None:
    """The checks both operators share; ``masks_size(H, W, s)`` is the masks' (H, W), ``size_formula`` says it."""
    _check_tensor("features", features)
    _check_tensor("masks", masks)
    check_int("kernel_size", kernel_size, minimum=1, odd=True)
    check_int("group_size", group_size, minimum=1)
    check_int("scale_factor", scale_factor, minimum=1)
    if features.device != masks.device:
        raise ValueError(f"features and masks must be on the same device, got {features.device} and {masks.device}")
    if masks.shape[0] != features.shape[0]:
        raise ValueError(f"masks batch size ({masks.shape[0]}) must match features batch size ({features.shape[0]})")
    check_divides("group_size", group_size, "features channels", features.shape[1])
    expected = (group_size * kernel_size**2, *masks_size(*features.shape[2:], scale_factor))
    if tuple(masks.shape[1:]) != expected:
        raise ValueError(
            f"masks must have shape (N, group_size*kernel_size**2, {size_formula}) = "
            f"(N, {expected[0]}, {expected[1]}, {expected[2]}) for features {tuple(features.shape)}, "
            f"kernel_size={kernel_size}, group_size={group_size}, scale_factor={scale_factor}; "
            f"got {tuple(masks.shape)}"
        )


def check_carafe_inputs(
    features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int
) -> None:
    """Validate the arguments of :func:`carafe_ultra.carafe`; see its docstring for the contract."""
    _check_reassembly_inputs(features, masks, kernel_size, group_size, scale_factor,
                             lambda height, width, s: (height * s, width * s), "H*scale_factor, W*scale_factor")


def check_carafe_downsample_inputs(
    features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int
) -> None:
    """Validate the arguments of :func:`carafe_ultra.carafe_downsample`; see its docstring for the contract."""
    _check_reassembly_inputs(features, masks, kernel_size, group_size, scale_factor,
                             lambda height, width, s: (-(-height // s), -(-width // s)),
                             "ceil(H/scale_factor), ceil(W/scale_factor)")

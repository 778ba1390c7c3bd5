"""The CUDA path: CARAFE (upsampling) and CARAFE++ downsampling through the kernels of kernels/carafe.cu, as
torch.library custom ops (one forward and one backward op per operation, see :class:`Reassembly`).

- The ops are opaque to torch.compile (their fake implementations give it shapes, so there is no graph break)
  and carry their own autograd formulas, down to second order. A gradient nobody asked for is not computed.
- Features and masks keep their own dtypes (float32, float16, bfloat16 each): under autocast float16 features
  meet float32 masks and neither is converted. Accumulation is in float32, the output in the features' dtype.
- Kernels run through a launcher (:mod:`.cupy_launcher` on GPUs). That seam lets the tests run these very ops
  on CPU tensors through the host shim, and inject faults. Which design of each kernel runs comes from the table in
  :mod:`.kernel_variants`.
- Checked on first use: the first call of each specialisation (dtype pair, kernel size, scale, the variants the
  table picks) of each operation on each device runs its kernels on a small input with groups, borders and odd sizes, forward and both gradients, and compares them
  with the PyTorch path. Any failure (compile, library, launch, wrong numbers, NaN), then or later, warns once,
  naming the cause, the specialisation and the remedy; that specialisation then runs the PyTorch path for the rest
  of the process. ``CARAFE_ULTRA_BACKEND=cupy`` turns the failure into an error.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from .choice import backend_choice
from .cupy_launcher import CupyLauncher
from .kernel_types import STORAGE_TYPES, KernelError, Launcher, Specialisation
from .kernel_variants import THREADS_PER_BLOCK, variants_for
from .torch_backend import reassemble, reassemble_backward
from .torch_downsample import downsample_reassemble, downsample_reassemble_backward, downsampled_size

MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535
SUPPORTED_DTYPES = tuple(STORAGE_TYPES)

# The first-use check: N, C, H, W with C in CHECK_GROUPS groups; odd sizes so every window crosses a border.
CHECK_SHAPE = (2, 6, 5, 7)
CHECK_GROUPS = 3
# Largest error allowed against the float64 PyTorch path, relative to the largest value, by storage dtype.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
REMEDIES = {
    "compile": "NVRTC could not build the kernels for this GPU: upgrade CuPy and the CUDA toolkit it uses "
               '(pip install -U "carafe-ultra[cuda12]", or [cuda13] to match your driver).',
    "library": "CuPy could not load a CUDA library: install the CuPy extra that matches your CUDA driver "
               '(pip install "carafe-ultra[cuda12]" or "carafe-ultra[cuda13]").',
    "launch": "The GPU or its driver refused the kernels: check the driver; if it persists, report it with this message.",
    "wrong": "This is a kernel bug: please report it with this message.",
}

_launcher: Launcher = CupyLauncher()
_failures: dict[tuple[torch.device, Specialisation, str], str | None] = {}  # None: passed its first-use check
_lock = threading.RLock()
T = TypeVar("T")


@contextlib.contextmanager
def use_launcher(launcher: Launcher) -> Iterator[Launcher]:
    """Run the CUDA path's kernels through ``launcher`` inside the block; first-use verdicts start afresh there."""
    global _launcher, _failures
    saved = _launcher, _failures
    _launcher, _failures = launcher, {}
    try:
        yield launcher
    finally:
        _launcher, _failures = saved


def launcher_unavailable(device: torch.device) -> str | None:
    """Why the kernel launcher cannot run on ``device`` (not CUDA, no CuPy), or None when it can."""
    return _launcher.unavailable(device)


@dataclass(frozen=True)
class Reassembly:
    """One operation of the kernels, as the CUDA path runs it: the prefix of its kernels' names, its output's size,
    and the PyTorch path's forward and backward (the fallback, and the reference of the first-use check)."""

    name: str
    prefix: str
    output_size: Callable[[int, int, int], tuple[int, int]]  # (H, W, scale) -> the output's (and masks') H, W
    torch_forward: Callable[..., Tensor]
    torch_backward: Callable[..., tuple[Tensor | None, Tensor | None]]


UPSAMPLING = Reassembly("upsampling", "", lambda height, width, scale: (height * scale, width * scale),
                        reassemble, reassemble_backward)
DOWNSAMPLING = Reassembly("downsampling", "down_", downsampled_size, downsample_reassemble,
                          downsample_reassemble_backward)


def carafe_cuda(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    """CARAFE with the kernels. Inputs are checked by the caller: SUPPORTED_DTYPES on a device the launcher
    serves."""
    return carafe_forward(features, masks, kernel_size, group_size, scale_factor)


def carafe_downsample_cuda(features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                           scale_factor: int) -> Tensor:
    """CARAFE++ downsampling with the kernels. Inputs are checked by the caller, as for :func:`carafe_cuda`."""
    return carafe_down_forward(features, masks, kernel_size, group_size, scale_factor)


def launch(spec: Specialisation, kernel: str, shape: tuple[int, int, int, int], group_size: int,
           *tensors: Tensor) -> None:
    """Run ``kernel`` (the variant ``spec`` builds) on ``tensors``, its three pointer arguments, for features of
    ``shape``, through the current launcher."""
    threads, grid_y, sizes = spec.variant(kernel).geometry(shape, group_size, spec.scale_factor)
    if threads == 0:
        return
    blocks = -(-threads // THREADS_PER_BLOCK)
    if blocks > MAX_GRID_X or grid_y > MAX_GRID_Y:
        raise KernelError("launch", f"input too large for one launch ({blocks} x {grid_y} blocks of {THREADS_PER_BLOCK})")
    _launcher.launch(spec, kernel, (blocks, grid_y), THREADS_PER_BLOCK, (*tensors, *sizes))


def run_forward(spec: Specialisation, features: Tensor, masks: Tensor, group_size: int,
                operation: Reassembly = UPSAMPLING) -> Tensor:
    """The forward kernel's output, on contiguous inputs."""
    n, channels, height, width = features.shape
    out = features.new_empty(n, channels, *operation.output_size(height, width, spec.scale_factor))
    launch(spec, operation.prefix + "forward", tuple(features.shape), group_size, features, masks, out)
    return out


def run_backward_masks(spec: Specialisation, grad_out: Tensor, features: Tensor, masks: Tensor,
                       group_size: int, operation: Reassembly = UPSAMPLING) -> Tensor:
    """The masks' gradient (in the masks' dtype) from the backward_masks kernel."""
    grad_masks = torch.empty_like(masks)
    launch(spec, operation.prefix + "backward_masks", tuple(features.shape), group_size, grad_out, features,
           grad_masks)
    return grad_masks


def run_backward_features(spec: Specialisation, grad_out: Tensor, features: Tensor, masks: Tensor,
                          group_size: int, operation: Reassembly = UPSAMPLING) -> Tensor:
    """The features' gradient (in the features' dtype) from the backward_features kernel; of ``features`` only the
    shape and dtype matter."""
    grad_features = torch.empty_like(features)
    launch(spec, operation.prefix + "backward_features", tuple(features.shape), group_size, grad_out, masks,
           grad_features)
    return grad_features


def _kernel_backward(spec: Specialisation, operation: Reassembly, grad_out: Tensor, features: Tensor, masks: Tensor,
                     group_size: int, need_features: bool, need_masks: bool) -> tuple[Tensor | None, Tensor | None]:
    grad_masks = run_backward_masks(spec, grad_out, features, masks, group_size, operation) if need_masks else None
    grad_features = (run_backward_features(spec, grad_out, features, masks, group_size, operation)
                     if need_features else None)
    return grad_features, grad_masks


def first_use_check(device: torch.device, spec: Specialisation, operation: Reassembly = UPSAMPLING) -> str | None:
    """None if the kernels of ``spec`` for ``operation`` agree with the PyTorch path on ``device``, else the cause and
    its remedy."""
    k, s, groups = spec.kernel_size, spec.scale_factor, CHECK_GROUPS
    n, channels, height, width = CHECK_SHAPE
    out_size = operation.output_size(height, width, s)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, channels, height, width, generator=generator)
    logits = torch.randn(n, groups, k * k, *out_size, generator=generator)
    grad_out = torch.randn(n, channels, *out_size, generator=generator)
    inputs = (features.to(device, spec.features), logits.softmax(2).flatten(1, 2).to(device, spec.masks),
              grad_out.to(device, spec.features))
    try:
        out = run_forward(spec, inputs[0], inputs[1], groups, operation)
        grad_features, grad_masks = _kernel_backward(spec, operation, inputs[2], inputs[0], inputs[1], groups, True,
                                                     True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous launch failure surfaces here
    except KernelError as error:
        return f"{error.kind} failure: {error}. {REMEDIES[error.kind]}"
    except Exception as error:  # a driver error at synchronisation, or anything a launcher did not expect
        return f"launch failure: {type(error).__name__}: {error}. {REMEDIES['launch']}"

    f64, m64, g64 = (t.cpu().double() for t in inputs)  # the same rounded inputs, exactly in float64
    want_features, want_masks = operation.torch_backward(g64, f64, m64, k, groups, s, True, True)
    for name, got, want, dtype in (("output", out, operation.torch_forward(f64, m64, k, groups, s), spec.features),
                                   ("features gradient", grad_features, want_features, spec.features),
                                   ("masks gradient", grad_masks, want_masks, spec.masks)):
        got = got.cpu().double()
        if got.isnan().any():  # the reference, from finite inputs, has none
            return f"wrong numbers: NaN in the {name} where the PyTorch path has none. {REMEDIES['wrong']}"
        error, limit = (got - want).abs().max().item(), CHECK_TOLERANCE[dtype] * max(1.0, want.abs().max().item())
        if error > limit:
            return (f"wrong numbers: the {name} differs from the PyTorch path by up to {error:.3g} "
                    f"(tolerance {limit:.3g}). {REMEDIES['wrong']}")
    return None


def _strict() -> bool:
    return backend_choice() == "cupy"


def _fail(key: tuple[torch.device, Specialisation, str], cause: str) -> None:
    """Record that a specialisation failed on a device: warn once, or raise when the kernels were forced."""
    device, spec, operation = key
    if _strict():
        raise RuntimeError(f"CARAFE_ULTRA_BACKEND=cupy, but the CUDA {operation} kernels failed for {spec} on "
                           f"{device}: {cause}")
    with _lock:
        if _failures.get(key) is not None:
            return  # already said
        _failures[key] = cause
    warnings.warn(
        f"carafe-ultra: the CUDA {operation} kernels failed for {spec} on {device}: {cause} This specialisation runs the "
        "PyTorch path for the rest of the process (correct results, slower). Set CARAFE_ULTRA_BACKEND=torch to "
        "always use the PyTorch path, or =cupy to make this an error.",
        RuntimeWarning,
        stacklevel=2,
    )


def _kernels_or_torch(device: torch.device, spec: Specialisation, operation: Reassembly, kernels: Callable[[], T],
                      torch_path: Callable[[], T]) -> T:
    """``kernels()`` if the specialisation passed its first-use check for ``operation`` (running it now if it is due)
    and still runs, else ``torch_path()``."""
    key = (device, spec, operation.name)
    with _lock:
        if key not in _failures:
            cause = first_use_check(device, spec, operation)
            if cause is None:
                _failures[key] = None
            else:
                _fail(key, cause)
    if _failures[key] is not None:
        if _strict():
            _fail(key, _failures[key])
        return torch_path()
    try:
        return kernels()
    except KernelError as error:
        _fail(key, f"{error.kind} failure: {error}. {REMEDIES[error.kind]}")
        return torch_path()


def _specialisation(features: Tensor, masks: Tensor, kernel_size: int, scale_factor: int) -> Specialisation:
    """The module these inputs run: their dtypes, the window, the scale and the table's variants for their size."""
    variants = variants_for(tuple(features.shape), kernel_size, scale_factor)
    return Specialisation(features.dtype, masks.dtype, kernel_size, scale_factor, **variants)


def _forward(operation: Reassembly, features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
             scale_factor: int) -> Tensor:
    features, masks = features.contiguous(), masks.contiguous()
    spec = _specialisation(features, masks, kernel_size, scale_factor)
    return _kernels_or_torch(
        features.device, spec, operation,
        lambda: run_forward(spec, features, masks, group_size, operation),
        lambda: operation.torch_forward(features, masks, kernel_size, group_size, scale_factor),
    )


def _backward(operation: Reassembly, grad_out: Tensor, features: Tensor, masks: Tensor, kernel_size: int,
              group_size: int, scale_factor: int, need_features: bool, need_masks: bool) -> tuple[Tensor, Tensor]:
    """(gradient w.r.t. features, gradient w.r.t. masks); one not asked for is an empty tensor."""
    grad_out, features, masks = grad_out.contiguous(), features.contiguous(), masks.contiguous()
    spec = _specialisation(features, masks, kernel_size, scale_factor)
    grads = _kernels_or_torch(
        features.device, spec, operation,
        lambda: _kernel_backward(spec, operation, grad_out, features, masks, group_size, need_features, need_masks),
        lambda: operation.torch_backward(grad_out, features, masks, kernel_size, group_size, scale_factor,
                                         need_features, need_masks),
    )
    return (grads[0] if need_features else features.new_empty(0), grads[1] if need_masks else masks.new_empty(0))


def _fake_forward(operation: Reassembly, features: Tensor, scale_factor: int) -> Tensor:
    n, channels, height, width = features.shape
    return features.new_empty(n, channels, *operation.output_size(height, width, scale_factor))


def _fake_backward(features: Tensor, masks: Tensor, need_features: bool, need_masks: bool) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(features) if need_features else features.new_empty(0),
            torch.empty_like(masks) if need_masks else masks.new_empty(0))


@torch.library.custom_op("carafe_ultra::carafe_forward", mutates_args=())
def carafe_forward(features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int) -> Tensor:
    return _forward(UPSAMPLING, features, masks, kernel_size, group_size, scale_factor)


@carafe_forward.register_fake
def _(features, masks, kernel_size, group_size, scale_factor):
    return _fake_forward(UPSAMPLING, features, scale_factor)


@torch.library.custom_op("carafe_ultra::carafe_backward", mutates_args=())
def carafe_backward(
    grad_out: Tensor, features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int,
    need_features: bool, need_masks: bool,
) -> tuple[Tensor, Tensor]:
    """(gradient w.r.t. features, gradient w.r.t. masks); one not asked for is an empty tensor."""
    return _backward(UPSAMPLING, grad_out, features, masks, kernel_size, group_size, scale_factor, need_features,
                     need_masks)


@carafe_backward.register_fake
def _(grad_out, features, masks, kernel_size, group_size, scale_factor, need_features, need_masks):
    return _fake_backward(features, masks, need_features, need_masks)


@torch.library.custom_op("carafe_ultra::carafe_down_forward", mutates_args=())
def carafe_down_forward(features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                        scale_factor: int) -> Tensor:
    return _forward(DOWNSAMPLING, features, masks, kernel_size, group_size, scale_factor)


@carafe_down_forward.register_fake
def _(features, masks, kernel_size, group_size, scale_factor):
    return _fake_forward(DOWNSAMPLING, features, scale_factor)


@torch.library.custom_op("carafe_ultra::carafe_down_backward", mutates_args=())
def carafe_down_backward(
    grad_out: Tensor, features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int,
    need_features: bool, need_masks: bool,
) -> tuple[Tensor, Tensor]:
    """(gradient w.r.t. features, gradient w.r.t. masks) of the downsampling; one not asked for is an empty tensor."""
    return _backward(DOWNSAMPLING, grad_out, features, masks, kernel_size, group_size, scale_factor, need_features,
                     need_masks)


@carafe_down_backward.register_fake
def _(grad_out, features, masks, kernel_size, group_size, scale_factor, need_features, need_masks):
    return _fake_backward(features, masks, need_features, need_masks)


def _register_autograd(forward_op, backward_op) -> None:
    """The autograd formulas of one operation's ops, down to second order."""

    def setup_forward(ctx, inputs, output) -> None:
        features, masks, kernel_size, group_size, scale_factor = inputs
        ctx.save_for_backward(features, masks)
        ctx.config = (kernel_size, group_size, scale_factor)

    def forward_grads(ctx, grad_out: Tensor):
        features, masks = ctx.saved_tensors
        need_features, need_masks = ctx.needs_input_grad[:2]
        grad_features, grad_masks = backward_op(grad_out, features, masks, *ctx.config, need_features, need_masks)
        return (grad_features if need_features else None), (grad_masks if need_masks else None), None, None, None

    def setup_backward(ctx, inputs, output) -> None:
        grad_out, features, masks, kernel_size, group_size, scale_factor, need_features, need_masks = inputs
        ctx.save_for_backward(grad_out, features, masks)
        ctx.config = (kernel_size, group_size, scale_factor)
        ctx.computed = (need_features, need_masks)

    def backward_grads(ctx, grad_of_features_grad: Tensor | None, grad_of_masks_grad: Tensor | None):
        """Second order. The features gradient is linear in (grad_out, masks) and the masks gradient in
        (grad_out, features); each is the other pair's adjoint of the forward, so the ops themselves express it."""
        grad_out, features, masks = ctx.saved_tensors
        config = ctx.config
        u = grad_of_features_grad if ctx.computed[0] else None  # an empty output has no gradient to pass on
        v = grad_of_masks_grad if ctx.computed[1] else None
        want_grad_out, want_features, want_masks = ctx.needs_input_grad[:3]
        result_grad_out = result_features = result_masks = None
        if want_grad_out and u is not None:
            result_grad_out = forward_op(u, masks, *config)
        if want_grad_out and v is not None:
            term = forward_op(features, v, *config)
            result_grad_out = term if result_grad_out is None else result_grad_out + term
        if want_features and v is not None:
            result_features = backward_op(grad_out, features, v, *config, True, False)[0]
        if want_masks and u is not None:
            result_masks = backward_op(grad_out, u, masks, *config, False, True)[1]
        return result_grad_out, result_features, result_masks, None, None, None, None, None

    forward_op.register_autograd(forward_grads, setup_context=setup_forward)
    backward_op.register_autograd(backward_grads, setup_context=setup_backward)


_register_autograd(carafe_forward, carafe_backward)
_register_autograd(carafe_down_forward, carafe_down_backward)

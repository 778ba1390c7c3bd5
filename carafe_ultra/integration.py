"""Ultralytics glue: make our modules (the upsamplers ``CARAFE``, ``DySample``, ``EUCB`` and the ResNet-18 stage
``ResNetBasicLayer``) YAML modules that parse_model treats like ``Conv``.

Ultralytics has no module registry: ``parse_model`` resolves YAML names from the globals of
``ultralytics.nn.tasks`` and decides which modules get ``c1`` prepended and ``c2`` width-scaled from a
frozenset (``base_modules``) that it builds locally on every call (since 8.3.65). So :func:`register`
injects our modules (the table in :mod:`carafe_ultra.upsamplers`) into those globals and rebuilds
``parse_model`` from its own source with them added to that set: their rows then get exactly Conv's channel
handling at every model scale. Anything that does not match the expected source fails with a message naming the
Ultralytics version.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from .downsample import CARAFEDown
from .module import CARAFE
from .resnet import BasicBlock, ResNetBasicLayer
from .upsamplers import UPSAMPLERS

# Ours, by YAML module name: what register() injects into Ultralytics (the upsamplers of the table, CARAFE++'s
# downsampler, then the layers of the base models we ship).
OUR_MODULES: dict[str, type[nn.Module]] = {
    **{u.module: u.module_class for u in UPSAMPLERS.values() if u.module_class}, "CARAFEDown": CARAFEDown,
    "ResNetBasicLayer": ResNetBasicLayer}
# Classes a checkpoint of ours pickles: what safe loading must allow besides torch's and Ultralytics' own.
_CHECKPOINT_CLASSES = [*OUR_MODULES.values(), BasicBlock]

SUPPORTED_ULTRALYTICS = ">=8.3.65,<8.5"
_MIN_VERSION, _MAX_VERSION = (8, 3, 65), (8, 5)


class UnsupportedUltralyticsError(RuntimeError):
    """The installed Ultralytics cannot be taught our modules by this version of carafe-ultra."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _unsupported(version: str, why: str) -> UnsupportedUltralyticsError:
    return UnsupportedUltralyticsError(
        f"carafe-ultra supports Ultralytics {SUPPORTED_ULTRALYTICS}, found {version}: {why}. "
        f'Install a supported release (pip install "ultralytics{SUPPORTED_ULTRALYTICS}") or a newer carafe-ultra.'
    )


def register() -> None:
    """Teach Ultralytics our YAML modules, :data:`OUR_MODULES` (idempotent).

    Runs automatically when ``ultralytics.nn.tasks`` is imported in an environment where carafe-ultra is
    installed (see ``_carafe_ultra_autoload``); call it yourself only with ``CARAFE_ULTRA_AUTOREGISTER=0``.

    Raises:
        UnsupportedUltralyticsError: the installed Ultralytics is outside the supported range or its
            ``parse_model`` no longer has the shape this registration relies on.
    """
    import ultralytics
    from ultralytics.nn import tasks

    if getattr(tasks.parse_model, "_carafe_ultra", False):
        return
    version = ultralytics.__version__
    if not _MIN_VERSION <= _version_tuple(version) < _MAX_VERSION:
        raise _unsupported(version, "outside the supported range")

    for name, module_class in OUR_MODULES.items():
        setattr(tasks, name, module_class)  # parse_model resolves YAML names from these globals
    parse_model = _with_row_checks(_parse_model_with_ours(tasks, version))
    tasks.parse_model = parse_model
    sys.modules["ultralytics.nn"].parse_model = parse_model  # the package re-exports it
    # ULTRALYTICS_SAFE_LOAD=1 loads checkpoints weights-only, allowing torch's and Ultralytics' classes; ours join
    # that allow-list (process-wide, as Ultralytics' own entries are).
    torch.serialization.add_safe_globals(_CHECKPOINT_CLASSES)
    _register_flops_rule()


def _parse_model_source(tasks, version: str) -> tuple[str, ast.Set]:
    """The dedented source of ``tasks.parse_model`` and the set literal inside its ``base_modules = frozenset(...)``."""
    try:
        # getsource unwraps our wrapper; the recompiled function's lines are the file's own.
        source = textwrap.dedent(inspect.getsource(tasks.parse_model))
    except (OSError, TypeError) as error:
        raise _unsupported(version, f"the source of parse_model is not available ({error})") from error
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == "base_modules" for target in node.targets)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "frozenset"
            and node.value.args
            and isinstance(node.value.args[0], ast.Set)
        ):
            return source, node.value.args[0]
    raise _unsupported(version, "parse_model no longer builds a base_modules frozenset")


def _parse_model_with_ours(tasks, version: str):
    """``tasks.parse_model`` recompiled from its source with our modules in ``base_modules``."""
    original = tasks.parse_model
    source, base_modules = _parse_model_source(tasks, version)
    lines = source.splitlines(keepends=True)
    first = base_modules.elts[0]
    line = lines[first.lineno - 1].encode()  # ast column offsets count UTF-8 bytes
    insertion = "".join(f"{name}, " for name in OUR_MODULES).encode()
    lines[first.lineno - 1] = (line[: first.col_offset] + insertion + line[first.col_offset :]).decode()
    # Pad with blank lines so tracebacks point at the real lines of tasks.py.
    code = compile("\n" * (original.__code__.co_firstlineno - 1) + "".join(lines), original.__code__.co_filename, "exec")
    namespace: dict = {}
    exec(code, vars(tasks), namespace)
    return namespace[original.__name__]


@functools.cache
def conv_like_modules() -> frozenset[type[nn.Module]]:
    """Modules whose YAML rows parse_model treats like Conv's (args[0] is the nominal output channels):
    Ultralytics' own ``base_modules``, read from its source, and ours."""
    import ultralytics
    from ultralytics.nn import tasks

    register()
    _, base_modules = _parse_model_source(tasks, ultralytics.__version__)
    namespace = vars(tasks)
    classes = set()
    for element in base_modules.elts:
        first, *rest = ast.unparse(element).split(".")  # "Conv" or "torch.nn.ConvTranspose2d"
        classes.add(functools.reduce(getattr, rest, namespace[first]))
    return frozenset(classes | set(OUR_MODULES.values()))


def yaml_module_class(name: str) -> type[nn.Module]:
    """The class a YAML module name stands for, resolved the way parse_model resolves it."""
    from ultralytics.nn import tasks

    register()
    if name.startswith("nn."):
        return getattr(nn, name[3:])
    if name.startswith("torchvision.ops."):
        return getattr(importlib.import_module("torchvision.ops"), name[len("torchvision.ops."):])
    return getattr(tasks, name)


def _with_row_checks(parse_model):
    """Check our modules' rows up front and name the YAML layer in any error they raise while being built."""

    @functools.wraps(parse_model)
    def parse_model_with_ours(d, *args, **kwargs):
        rows = list(d.get("backbone", [])) + list(d.get("head", []))
        for index, row in enumerate(rows):
            if len(row) == 4 and row[2] in OUR_MODULES:
                _check_row(index, row, OUR_MODULES[row[2]])
        try:
            return parse_model(d, *args, **kwargs)
        except (TypeError, ValueError) as error:
            layer = _failing_layer(error.__traceback__, parse_model.__code__)
            if layer is None:
                raise
            index, module_class, built_args = layer
            raise type(error)(
                f"model YAML layer {index} {rows[index]} -> {module_class.__name__}{tuple(built_args)}: {error}"
            ) from error

    parse_model_with_ours._carafe_ultra = True
    return parse_model_with_ours


def _check_row(index: int, row: list, module_class: type[nn.Module]) -> None:
    """Raise ``ValueError`` naming the layer if a row of one of our modules cannot be what it means."""
    source, repeats, _, args = row
    names = list(inspect.signature(module_class).parameters)[1:]  # parse_model prepends c1
    problem = None
    if not isinstance(source, int):
        problem = f"'from' must be a single layer index ({module_class.__name__} takes one input), got {source!r}"
    elif repeats != 1:
        problem = f"'repeats' must be 1, got {repeats!r}"
    elif not isinstance(args, list) or not args:
        problem = "args must be a list starting with the output channels, e.g. [256]"
    elif isinstance(args[0], bool) or not isinstance(args[0], int) or args[0] < 1:
        problem = f"args[0] must be the output channels (a positive int, scaled like Conv's), got {args[0]!r}"
    elif len(args) > len(names):
        problem = f"at most {len(names)} args: [{', '.join(names)}], got {len(args)}"
    if problem:
        raise ValueError(f"model YAML layer {index} {row}: {problem}")


def _failing_layer(traceback, parse_model_code):
    """(layer index, module class, constructor args) if the error came from building one of ours, else None."""
    ours = set(OUR_MODULES.values())
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is parse_model_code and frame.f_locals.get("m") in ours:
            return frame.f_locals.get("i"), frame.f_locals["m"], frame.f_locals.get("args", ())
        traceback = traceback.tb_next
    return None


def _count_reassembly_macs(module: CARAFE, inputs, output) -> None:
    """thop rule: the reassembly's own multiply-adds (its convs are counted as children)."""
    module.total_ops += int(output.numel()) * module.kernel_size**2


def _count_downsampling_macs(module: CARAFEDown, inputs, output) -> None:
    """thop rule: the downsampling reassembly's multiply-adds, k² per element of its (c1-channel) output."""
    n, _, height, width = output.shape
    module.total_ops += n * module.c1 * height * width * module.kernel_size**2


def _register_flops_rule() -> None:
    """Let thop (what ``model.info()`` uses for GFLOPs) count the reassembly, which no conv hook sees."""
    try:
        thop_profile = importlib.import_module("thop.profile")
    except ImportError:
        return
    thop_profile.register_hooks[CARAFE] = _count_reassembly_macs
    thop_profile.register_hooks[CARAFEDown] = _count_downsampling_macs


def ultralytics_model(model: str | Path):
    """The Ultralytics model object for a YAML or checkpoint, chosen as the ``yolo`` command chooses it
    (``RTDETR`` when "rtdetr" is in the file name, else ``YOLO``, which picks the task)."""
    from ultralytics import RTDETR, YOLO

    return RTDETR(model) if "rtdetr" in Path(model).stem.lower() else YOLO(model)


__all__ = ["OUR_MODULES", "SUPPORTED_ULTRALYTICS", "UnsupportedUltralyticsError", "conv_like_modules", "register",
           "ultralytics_model", "yaml_module_class"]

"""Ultralytics glue: make ``CARAFE`` a YAML module that parse_model treats like ``Conv``, and find our YAMLs.

Ultralytics has no module registry: ``parse_model`` resolves YAML names from the globals of
``ultralytics.nn.tasks`` and decides which modules get ``c1`` prepended and ``c2`` width-scaled from a
frozenset (``base_modules``) that it builds locally on every call (since 8.3.65). So :func:`register`
injects ``CARAFE`` (and the ``DySample`` baseline, for the ablation) into those globals and rebuilds
``parse_model`` from its own source with both added to that set: their rows then get exactly Conv's channel
handling at every model scale. Anything that does
not match the expected source fails with a message naming the Ultralytics version.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

from .module import CARAFE

SUPPORTED_ULTRALYTICS = ">=8.3.65,<8.5"
_MIN_VERSION, _MAX_VERSION = (8, 3, 65), (8, 5)
_BASE_MODULES = re.compile(r"(base_modules\s*=\s*frozenset\(\s*\{)")


class UnsupportedUltralyticsError(RuntimeError):
    """The installed Ultralytics cannot be taught CARAFE by this version of carafe-ultra."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _unsupported(version: str, why: str) -> UnsupportedUltralyticsError:
    return UnsupportedUltralyticsError(
        f"carafe-ultra supports Ultralytics {SUPPORTED_ULTRALYTICS}, found {version}: {why}. "
        f'Install a supported release (pip install "ultralytics{SUPPORTED_ULTRALYTICS}") or a newer carafe-ultra.'
    )


def register() -> None:
    """Teach Ultralytics the ``CARAFE`` YAML module (idempotent).

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

    from .baselines import DySample

    tasks.CARAFE, tasks.DySample = CARAFE, DySample  # parse_model resolves YAML names from these globals
    parse_model = _with_layer_errors(_parse_model_with_carafe(tasks, version))
    tasks.parse_model = parse_model
    sys.modules["ultralytics.nn"].parse_model = parse_model  # the package re-exports it
    _register_flops_rule()


def _parse_model_with_carafe(tasks, version: str):
    """``tasks.parse_model`` recompiled from its source with CARAFE in ``base_modules``."""
    original = tasks.parse_model
    try:
        source = textwrap.dedent(inspect.getsource(original))
    except (OSError, TypeError) as error:
        raise _unsupported(version, f"the source of parse_model is not available ({error})") from error
    patched, count = _BASE_MODULES.subn(r"\1CARAFE, DySample, ", source, count=1)
    if count != 1:
        raise _unsupported(version, "parse_model no longer builds a base_modules frozenset")
    # Pad with blank lines so tracebacks point at the real lines of tasks.py.
    code = compile("\n" * (original.__code__.co_firstlineno - 1) + patched, original.__code__.co_filename, "exec")
    namespace: dict = {}
    exec(code, vars(tasks), namespace)
    return namespace[original.__name__]


def _with_layer_errors(parse_model):
    """Check CARAFE rows up front and name the YAML layer in any error CARAFE raises while building."""

    @functools.wraps(parse_model)
    def parse_model_with_carafe(d, *args, **kwargs):
        rows = list(d.get("backbone", [])) + list(d.get("head", []))
        for index, row in enumerate(rows):
            if len(row) == 4 and row[2] == "CARAFE":
                _check_row(index, row)
        try:
            return parse_model(d, *args, **kwargs)
        except (TypeError, ValueError) as error:
            layer = _failing_carafe_layer(error.__traceback__, parse_model.__code__)
            if layer is None:
                raise
            index, built_args = layer
            raise type(error)(f"model YAML layer {index} {rows[index]} -> CARAFE{tuple(built_args)}: {error}") from error

    parse_model_with_carafe._carafe_ultra = True
    return parse_model_with_carafe


def _check_row(index: int, row: list) -> None:
    source, repeats, _, args = row
    problem = None
    if not isinstance(source, int):
        problem = f"'from' must be a single layer index (CARAFE takes one input), got {source!r}"
    elif repeats != 1:
        problem = f"'repeats' must be 1, got {repeats!r}"
    elif not isinstance(args, list) or not args:
        problem = "args must be a list starting with the output channels, e.g. [256] or [256, 3, 2]"
    elif isinstance(args[0], bool) or not isinstance(args[0], int) or args[0] < 1:
        problem = f"args[0] must be the output channels (a positive int, scaled like Conv's), got {args[0]!r}"
    elif len(args) > 6:
        problem = (
            "at most 6 args: [c2, kernel_size, up_factor, encoder_kernel, compressed_channels, groups], "
            f"got {len(args)}"
        )
    if problem:
        raise ValueError(f"model YAML layer {index} {row}: {problem}")


def _failing_carafe_layer(traceback, parse_model_code):
    """(layer index, constructor args) if the error came from building a CARAFE layer, else None."""
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is parse_model_code and frame.f_locals.get("m") is CARAFE:
            return frame.f_locals.get("i"), frame.f_locals.get("args", ())
        traceback = traceback.tb_next
    return None


def _count_reassembly_macs(module: CARAFE, inputs, output) -> None:
    """thop rule: the reassembly's own multiply-adds (its convs are counted as children)."""
    module.total_ops += int(output.numel()) * module.kernel_size**2


def _register_flops_rule() -> None:
    """Let thop (what ``model.info()`` uses for GFLOPs) count the reassembly, which no conv hook sees."""
    try:
        thop_profile = importlib.import_module("thop.profile")
    except ImportError:
        return
    thop_profile.register_hooks[CARAFE] = _count_reassembly_macs


def model_dir() -> Path:
    """Folder of the model YAMLs that ship with carafe-ultra."""
    packaged = Path(__file__).parent / "models"  # wheels carry them inside the package
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "models"  # source checkout


def model_yaml(name: str) -> str:
    """Path of a shipped model YAML, by file name; a YOLO scale letter may be added as usual.

    ``model_yaml("yolov8n-carafe.yaml")`` returns ``.../yolov8n-carafe.yaml`` in the shipped folder: Ultralytics
    reads the scale ``n`` from that name and loads ``yolov8-carafe.yaml`` beside it.
    """
    name = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = model_dir() / name
    unscaled = model_dir() / re.sub(r"(\d+)([nslmx])(-.+)?\.ya?ml$", r"\1\3.yaml", name)
    if not (path.is_file() or unscaled.is_file()):
        available = ", ".join(sorted(p.name for p in model_dir().glob("*.yaml")))
        raise FileNotFoundError(f"no shipped model YAML named {name!r}; available: {available}")
    return str(path)

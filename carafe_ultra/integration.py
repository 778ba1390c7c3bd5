"""Ultralytics glue: make our modules (the upsamplers ``CARAFE``, ``DySample``, ``EUCB``, CARAFE++'s ``CARAFEDown`` and
the ResNet-18 stage ``ResNetBasicLayer``) YAML modules that parse_model treats like ``Conv``, and our segmentation
heads (:mod:`carafe_ultra.heads`) YAML modules that it treats like the stock heads they extend.

Ultralytics has no module registry: ``parse_model`` resolves YAML names from the globals of
``ultralytics.nn.tasks``, decides which modules get ``c1`` prepended and ``c2`` width-scaled from a frozenset
(``base_modules``) that it builds locally on every call (since 8.3.65), and gives the heads their input channels and
extra arguments through sets and identity tests that name each head class. So :func:`register` injects ours into
those globals and rebuilds ``parse_model`` from its own source with our modules added to ``base_modules`` and each of
our heads added wherever its stock head is named in a set or an ``m is ...`` test: their rows then get exactly the
handling of the rows they replace, at every model scale. Anything that does not match the expected source fails
with a message naming the Ultralytics version.
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
from .heads import HEAD_ROWS, head_classes
from .module import CARAFE
from .resnet import BasicBlock, ResNetBasicLayer
from .upsamplers import UPSAMPLERS

# Ours, by YAML module name: what register() injects into Ultralytics as Conv-like modules (the upsamplers of the
# table, CARAFE++'s downsampler, then the layers of the base models we ship).
OUR_MODULES: dict[str, type[nn.Module]] = {
    **{u.module: u.module_class for u in UPSAMPLERS.values() if u.module_class}, "CARAFEDown": CARAFEDown,
    "ResNetBasicLayer": ResNetBasicLayer}
# Classes a checkpoint of ours pickles: what safe loading must allow besides torch's and Ultralytics' own (and our
# heads, made when registering).
_CHECKPOINT_CLASSES = [*OUR_MODULES.values(), BasicBlock]


def our_heads() -> dict[str, type[nn.Module]]:
    """Our heads by YAML module name, those the installed Ultralytics has the stock heads of (see
    :mod:`carafe_ultra.heads`); each is treated like the stock head it extends."""
    return {name: made for name, made in head_classes().items() if name in HEAD_ROWS}

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

    for name, module_class in {**OUR_MODULES, **our_heads()}.items():
        setattr(tasks, name, module_class)  # parse_model resolves YAML names from these globals
    parse_model = _with_row_checks(_parse_model_with_ours(tasks, version))
    tasks.parse_model = parse_model
    sys.modules["ultralytics.nn"].parse_model = parse_model  # the package re-exports it
    # ULTRALYTICS_SAFE_LOAD=1 loads checkpoints weights-only, allowing torch's and Ultralytics' classes; ours join
    # that allow-list (process-wide, as Ultralytics' own entries are).
    torch.serialization.add_safe_globals([*_CHECKPOINT_CLASSES, *head_classes().values()])
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


class _OursInParseModel(ast.NodeTransformer):
    """parse_model's syntax tree with our Conv-like modules in ``base_modules``, and each of our heads in every set
    that names its stock head and beside every ``m is <stock head>`` test of an ``or``."""

    def __init__(self, base_modules: ast.Set, twins: dict[str, list[str]]) -> None:
        self.base_modules, self.twins, self.taught = base_modules, twins, set()

    def visit_Set(self, node: ast.Set) -> ast.Set:
        named = {element.id for element in node.elts if isinstance(element, ast.Name)}
        ours = OUR_MODULES if node is self.base_modules else []
        ours = [*ours, *(twin for stock in self.twins if stock in named for twin in self.twins[stock])]
        self.taught |= {stock for stock in self.twins if stock in named}
        node.elts += [ast.Name(name, ast.Load()) for name in ours if name not in named]
        return node

    def _stock_tested(self, test: ast.expr) -> str | None:
        """The stock head of a ``m is <stock head>`` test that has twins of ours, else None."""
        if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Is)
                and isinstance(test.comparators[0], ast.Name) and test.comparators[0].id in self.twins):
            return test.comparators[0].id
        return None

    def _or_twins(self, test: ast.Compare, stock: str) -> list[ast.expr]:
        self.taught.add(stock)
        return [ast.Compare(test.left, [ast.Is()], [ast.Name(twin, ast.Load())]) for twin in self.twins[stock]]

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.BoolOp:
        self.generic_visit(node)
        if isinstance(node.op, ast.Or):
            for test in list(node.values):
                stock = self._stock_tested(test)
                if stock is not None:
                    node.values += self._or_twins(test, stock)
        return node

    def visit_If(self, node: ast.If) -> ast.If:
        """A branch of its own for a stock head (``elif m is Depth:``) takes our twins too; where it rebuilds
        ``args`` from the row's first ones (Depth keeps only ``c_mid``), our heads keep their upsampler and options
        (the two row arguments after the stock head's), put back before the channels the branch appends last."""
        self.generic_visit(node)
        stock = self._stock_tested(node.test)
        if stock is None:
            return node
        twins = self.twins[stock]
        node.test = ast.BoolOp(ast.Or(), [node.test, *self._or_twins(node.test, stock)])
        if any(isinstance(statement, ast.Assign) and any(getattr(target, "id", None) == "args"
                                                         for target in statement.targets) for statement in node.body):
            kept = " else ".join(f"args[{HEAD_ROWS[twin][1]}:{HEAD_ROWS[twin][1] + 2}] if m is {twin}"
                                 for twin in twins)
            node.body = [*ast.parse(f"_carafe_ultra_kept = {kept} else []").body, *node.body,
                         *ast.parse("args[-1:-1] = _carafe_ultra_kept").body]
        return node


def _parse_model_with_ours(tasks, version: str):
    """``tasks.parse_model`` recompiled from its source with our modules in ``base_modules`` and our heads treated
    like theirs (:class:`_OursInParseModel`)."""
    original = tasks.parse_model
    source, base_modules = _parse_model_source(tasks, version)
    tree = ast.parse(source)
    for node in ast.walk(tree):  # the base_modules set of this tree (_parse_model_source parsed its own)
        if isinstance(node, ast.Set) and ast.dump(node) == ast.dump(base_modules):
            base_modules = node
    twins: dict[str, list[str]] = {}
    for name in our_heads():
        twins.setdefault(HEAD_ROWS[name][0], []).append(name)
    teacher = _OursInParseModel(base_modules, twins)
    tree = ast.fix_missing_locations(teacher.visit(tree))
    untaught = sorted(set(twins) - teacher.taught)
    if untaught:
        raise _unsupported(version, f"parse_model no longer names {', '.join(untaught)} in a set or test of heads")
    ast.increment_lineno(tree, original.__code__.co_firstlineno - 1)  # tracebacks point at the lines of tasks.py
    namespace: dict = {}
    exec(compile(tree, original.__code__.co_filename, "exec"), vars(tasks), namespace)
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
            elif len(row) == 4 and row[2] in HEAD_ROWS:
                _complete_head_row(index, row)
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


def _complete_head_row(index: int, row: list) -> None:
    """Check a row of one of our heads and write out, in place, the upsampler and options it leaves to their defaults
    (parse_model appends its own arguments after the row's, so those positions must be filled); raise ``ValueError``
    naming the layer if they cannot be what they mean."""
    stock, position, part = HEAD_ROWS[row[2]]
    args = row[3]
    if not isinstance(args, list) or not position <= len(args) <= position + 2:
        raise ValueError(f"model YAML layer {index} {row}: args must be {stock}'s {position} arguments, then the "
                         f"{part}'s upsampler (default carafe) and its options, e.g. [..., carafe, {{kernel_size: 3}}]")
    args += [None] * (position + 2 - len(args))
    name, options = args[position] or "carafe", args[position + 1] or {}
    args[position : position + 2] = [name, options]
    problem = None
    if not isinstance(name, str) or name not in UPSAMPLERS:
        problem = f"unknown {part} upsampler {name!r}; choose from {', '.join(UPSAMPLERS)}"
    elif not isinstance(options, dict):
        problem = f"the upsampler's options must be a mapping such as {{kernel_size: 3}}, got {options!r}"
    if problem:
        raise ValueError(f"model YAML layer {index} {row}: {problem}")


def _failing_layer(traceback, parse_model_code):
    """(layer index, module class, constructor args) if the error came from building one of ours, else None."""
    ours = {*OUR_MODULES.values(), *our_heads().values()}
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


__all__ = ["OUR_MODULES", "SUPPORTED_ULTRALYTICS", "UnsupportedUltralyticsError", "conv_like_modules",
           "our_heads", "register", "ultralytics_model", "yaml_module_class"]

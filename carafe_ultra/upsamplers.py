"""Every upsampler carafe-ultra knows, in one table that the Ultralytics integration, the YAML conversion and
the ablation all read.

An entry says how the upsampler is written as a row of an Ultralytics model YAML. Entries with a ``module_class``
are ours: :func:`carafe_ultra.register` teaches them to Ultralytics, whose ``parse_model`` then treats their rows
like ``Conv`` rows (``c1`` prepended, ``c2`` scaled with the model's width). Adding an upsampler is one module
file and one entry here.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from .dysample import DySample
from .eucb import EUCB
from .module import CARAFE


@dataclass(frozen=True)
class Upsampler:
    """How one upsampler appears in a model YAML.

    Attributes:
        name: what users call it (``--arms``, ``convert_yaml(..., upsampler=name)``).
        module: the YAML module column, e.g. ``"nn.Upsample"`` or ``"CARAFE"``.
        args_for: the YAML args for an upsampling of ``scale`` of a feature with ``channels`` nominal channels.
        scale_at: where the scale sits in the row's args (2, the default of every upsampler here, when a row
            omits it); ``None``: rows of this module are not recognised as upsampling rows (a transposed
            convolution may be anything).
        module_class: our module class, registered with Ultralytics; ``None`` for torch's own modules.
        conv_like: whether parse_model reads its rows like ``Conv`` rows (input channels prepended): ours, and the
            torch modules in Ultralytics' ``base_modules`` (a test holds this to Ultralytics' set).
    """

    name: str
    module: str
    args_for: Callable[[int, int], list]
    scale_at: int | None
    module_class: type[nn.Module] | None = None
    conv_like: bool = True

    def scale_of(self, args: list) -> int:
        """The scale of a row of this upsampler, from its args."""
        return int(args[self.scale_at]) if len(args) > self.scale_at else 2

    def yaml_args(self, channels: int, scale: int, options: Mapping[str, object] | None = None) -> list:
        """The row's args, with ``options`` (keyword arguments of our module class) set at their positions.

        ``UPSAMPLERS["carafe"].yaml_args(256, 2, {"compressed_channels": 32})`` is ``[256, 5, 2, 3, 32]``: the
        arguments in between keep their defaults.
        """
        args = self.args_for(channels, scale)
        if not options:
            return args
        if self.module_class is None:
            raise ValueError(f"{self.name} takes no options, got {dict(options)}")
        parameters = list(inspect.signature(self.module_class).parameters.values())[1:]  # parse_model adds c1
        names = [p.name for p in parameters]
        settable = [name for position, name in enumerate(names) if position not in (0, self.scale_at)]
        unknown = sorted(set(options) - set(settable))
        if unknown:  # the channels and the scale come from the model
            raise ValueError(f"{self.name} options must be among {', '.join(settable)}; got {', '.join(unknown)}")
        last = max(names.index(name) for name in options)
        args += [p.default for p in parameters[len(args) : last + 1]]
        for name, value in options.items():
            args[names.index(name)] = value
        return args

    def module_defaults(self) -> dict[str, object]:
        """Every keyword argument of our module class after c1 and c2 (which come from the model), with its default;
        empty for torch's own modules."""
        if self.module_class is None:
            return {}
        parameters = list(inspect.signature(self.module_class).parameters.values())[2:]
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

    def build(self, channels: int, scale: int = 2, options: Mapping[str, object] | None = None) -> nn.Module:
        """The module a row of this upsampler builds for an input of ``channels`` channels (kept) and ``scale``,
        made the way ``parse_model`` makes it from :meth:`yaml_args`: strings read as literals where they are one
        (``"None"``), and the input channels first for Conv-like modules. What the task heads' own upsampling uses."""
        module_class = self.module_class or getattr(nn, self.module.removeprefix("nn."))
        args = [_literal(arg) for arg in self.yaml_args(channels, scale, options)]
        return module_class(channels, *args) if self.conv_like else module_class(*args)


def _literal(value: object) -> object:
    """A row argument as parse_model reads it: a string that is a Python literal becomes that literal."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


UPSAMPLERS: dict[str, Upsampler] = {
    entry.name: entry
    for entry in (
        # "None" is how the stock YAMLs write nn.Upsample's size argument.
        Upsampler("nearest", "nn.Upsample", lambda c, s: ["None", s, "nearest"], 1, conv_like=False),
        Upsampler("bilinear", "nn.Upsample", lambda c, s: ["None", s, "bilinear"], 1, conv_like=False),
        Upsampler("convtranspose", "nn.ConvTranspose2d", lambda c, s: [c, s, s], None),  # learned 2×2 stride-2
        Upsampler("carafe", "CARAFE", lambda c, s: [c, 5, s], 2, CARAFE),
        Upsampler("dysample", "DySample", lambda c, s: [c, s], 1, DySample),
        Upsampler("eucb", "EUCB", lambda c, s: [c, s], 1, EUCB),
    )
}


def upsampler(name: str) -> Upsampler:
    """The table entry called ``name``; raises ``ValueError`` listing the known names otherwise."""
    try:
        return UPSAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown upsampler {name!r}; choose from {', '.join(UPSAMPLERS)}") from None


def row_scale(module: str, args: list) -> int | None:
    """The scale of a YAML row if it is an upsampling row (module and args as written), else None."""
    for entry in UPSAMPLERS.values():
        if entry.module == module and entry.scale_at is not None:
            return entry.scale_of(args)
    return None

"""Every upsampler carafe-ultra knows, in one table that the Ultralytics integration, the YAML conversion and
the ablation all read.

An entry says how the upsampler is written as a row of an Ultralytics model YAML. Entries with a ``module_class``
are ours: :func:`carafe_ultra.register` teaches them to Ultralytics, whose ``parse_model`` then treats their rows
like ``Conv`` rows (``c1`` prepended, ``c2`` scaled with the model's width). Adding an upsampler is one module
file and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .dysample import DySample
from .module import CARAFE


def _arg(position: int, default: int) -> Callable[[list], int]:
    """Reads the scale from a row's args: the value at ``position``, or ``default`` when the row omits it."""
    return lambda args: int(args[position]) if len(args) > position else default


@dataclass(frozen=True)
class Upsampler:
    """How one upsampler appears in a model YAML.

    Attributes:
        name: what users call it (``--arms``, ``convert_yaml(..., upsampler=name)``).
        module: the YAML module column, e.g. ``"nn.Upsample"`` or ``"CARAFE"``.
        row_args: the YAML args for an upsampling of ``scale`` of a feature with ``channels`` nominal channels.
        scale_of: the scale of an existing row, from its args; ``None`` when rows of this module are not
            recognised as upsampling rows (a transposed convolution may be anything).
        module_class: our module class, registered with Ultralytics; ``None`` for torch's own modules.
    """

    name: str
    module: str
    row_args: Callable[[int, int], list]
    scale_of: Callable[[list], int] | None
    module_class: type[nn.Module] | None = None


UPSAMPLERS: dict[str, Upsampler] = {
    entry.name: entry
    for entry in (
        # "None" is how the stock YAMLs write nn.Upsample's size argument.
        Upsampler("nearest", "nn.Upsample", lambda c, s: ["None", s, "nearest"], _arg(1, 2)),
        Upsampler("bilinear", "nn.Upsample", lambda c, s: ["None", s, "bilinear"], _arg(1, 2)),
        Upsampler("convtranspose", "nn.ConvTranspose2d", lambda c, s: [c, s, s], None),  # learned 2×2 stride-2
        Upsampler("carafe", "CARAFE", lambda c, s: [c, 5, s], _arg(2, 2), CARAFE),
        Upsampler("dysample", "DySample", lambda c, s: [c, s], _arg(1, 2), DySample),
    )
}

# Ours, by YAML module name: what register() injects into Ultralytics.
OUR_MODULES: dict[str, type[nn.Module]] = {u.module: u.module_class for u in UPSAMPLERS.values() if u.module_class}


def upsampler(name: str) -> Upsampler:
    """The table entry called ``name``; raises ``ValueError`` listing the known names otherwise."""
    try:
        return UPSAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown upsampler {name!r}; choose from {', '.join(UPSAMPLERS)}") from None


def row_scale(module: str, args: list) -> int | None:
    """The scale of a YAML row if it is an upsampling row (module and args as written), else None."""
    for entry in UPSAMPLERS.values():
        if entry.module == module and entry.scale_of is not None:
            return entry.scale_of(args)
    return None

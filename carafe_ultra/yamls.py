"""Model YAMLs: the ones we ship, finding any model YAML by name, and rewriting its upsampling rows.

:func:`convert_yaml` is the one implementation of row rewriting: ``python -m carafe_ultra convert``, the shipped
YAMLs and the ablation's arms all come from it. It edits the file's text row by row, so the scales, comments and
header stay as they were.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .heads import HEAD_ROWS
from .integration import conv_like_modules, yaml_module_class
from .upsamplers import UPSAMPLERS, row_scale, upsampler

# Ultralytics' rule (nn.tasks.yaml_model_load): "yolo26n-seg.yaml" is "yolo26-seg.yaml" at scale "n".
_SCALE_LETTER = re.compile(r"(\d+)([nslmx])(.+)?$")


def model_dir() -> Path:
    """Folder of the model YAMLs that ship with carafe-ultra: the checkout's top-level ``models/`` (a plain checkout
    or an editable install), which a wheel carries as ``carafe_ultra/models/``."""
    packaged = Path(__file__).parent / "models"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "models"


def model_yaml(name: str) -> str:
    """Path of a shipped model YAML, by file name; a YOLO scale letter may be added as usual.

    ``model_yaml("yolov8n-carafe.yaml")`` returns ``.../yolov8n-carafe.yaml`` in the shipped folder: Ultralytics
    reads the scale ``n`` from that name and loads ``yolov8-carafe.yaml`` beside it.
    """
    name = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = model_dir() / name
    if _family_file(path) is None:
        raise FileNotFoundError(f"no shipped model YAML named {name!r}; available: {', '.join(_shipped())}")
    return str(path)


def _shipped() -> list[str]:
    return sorted(p.name for p in model_dir().glob("*.yaml"))


def _family_file(path: Path) -> Path | None:
    """The file Ultralytics builds ``path`` from: ``path`` itself or its family's file without the scale letter,
    each looked up as Ultralytics looks it up (check_yaml: a file, else a search of its own model folders)."""
    from ultralytics.utils.checks import check_yaml

    for candidate in (path, path.with_name(_SCALE_LETTER.sub(r"\1\3", path.name))):
        found = check_yaml(str(candidate), hard=False)
        if found:
            return Path(found)
    return None


def find_model_yaml(model: str | Path) -> Path:
    """The YAML file that a model path, a name we ship or an Ultralytics model name builds from."""
    path = Path(model)
    if not path.is_file() and _family_file(model_dir() / path.name) is not None:
        path = model_dir() / path.name
    source = _family_file(path)
    if source is None:
        raise FileNotFoundError(
            f"no model YAML {str(model)!r}: not a file, not one carafe-ultra ships ({', '.join(_shipped())}) "
            f"and not one Ultralytics ships"
        )
    return source


def carafe_yaml(model: str | Path, out_dir: str | Path | None = None) -> str:
    """Write ``model`` with every ``nn.Upsample`` row replaced by a ``CARAFE`` row; return the new file's path.

    Args:
        model: a stock Ultralytics name (``"yolo26n-seg.yaml"``, scale letter as usual), one of ours or a path.
        out_dir: where to write it. Default: the current directory.

    Returns:
        The path of the written file, e.g. ``./yolo26n-seg-carafe.yaml``: a YOLO scale letter in ``model`` stays in
        the name, so Ultralytics builds that scale from it.

    Raises:
        FileNotFoundError: no such model. ValueError: the model has no upsampling row.
    """
    return convert_yaml(model, "carafe", out_dir)


# What convert_yaml(..., downsample=True) writes for a neck's stride-s Conv row [c2, 3, s]: CARAFE++'s downsampler,
# with the same output channels and stride and the paper's 5x5 reassembly window.
DOWNSAMPLER = "CARAFEDown"
DOWN_KERNEL_SIZE = 5
# File suffixes of converted YAMLs besides the upsamplers' names: the downsampling swap alone, and with CARAFE.
DOWN_SUFFIX, BOTH_SUFFIX = "carafe-down", "carafe-both"
# Suffix words of the task head's swap: "-carafe-head" (the neck's upsampler in the head too), "-carafe-head-only".
HEAD_SUFFIX, HEAD_ONLY_SUFFIX = "head", "head-only"
# The stock heads with an upsampling of their own, by YAML name: ours that replaces it, and where its row's upsampler
# argument goes.
HEAD_TWINS = {row.stock: (ours, row.position) for ours, row in HEAD_ROWS.items()}


def _our_head(module: str) -> str | None:
    """Our head that a row of ``module`` is or becomes with ``heads`` (``Segment`` -> ``SegmentUp``), else None."""
    return HEAD_TWINS[module][0] if module in HEAD_TWINS else (module if module in HEAD_ROWS else None)


def convert_yaml(
    model: str | Path, upsampler_name: str | None, out_dir: str | Path | None = None, options: dict | None = None,
    downsample: bool = False, heads: bool | str = False, head_options: dict | None = None,
) -> str:
    """Write ``model`` with every upsampling row (``nn.Upsample``, ``CARAFE``, ``DySample``) written the way the
    upsampler ``upsampler_name`` of :data:`carafe_ultra.upsamplers.UPSAMPLERS` writes it, with ``downsample``
    every stride-s ``Conv`` row of the head (the neck's bottom-up path, never the backbone) as a ``CARAFEDown`` row
    of the same output channels and stride, and with ``heads`` the task head's own upsampling (a segmentation head's
    mask branch, the semantic and depth decoders: :mod:`carafe_ultra.heads`) done by an upsampler of the table too; return the file's path.

    Each upsampling row keeps its scale and its input channels (taken from the layer feeding it), so every other
    layer keeps its shape at every model scale. ``options`` sets keyword arguments of our upsampling modules in every
    row, e.g. ``{"kernel_size": 3}`` (the file name does not show them). ``upsampler_name=None`` leaves the upsampling
    rows as they are. ``heads=True`` gives the head ``upsampler_name`` (and ``options``); a name gives it that
    upsampler (and ``head_options``) whatever the neck gets. The file is named after the model and the swaps:
    ``-carafe`` (an upsampler's name), ``-carafe-down`` (only the downsampling swap), ``-carafe-both`` (CARAFE and
    CARAFEDown), e.g. ``-dysample-carafe-down``, then ``-head`` when the head has the neck's upsampler too
    (``-carafe-head``, ``-carafe-both-head``), ``-carafe-head-only`` when only the head changed, and e.g.
    ``-nearest-carafe-head`` otherwise. See :func:`carafe_yaml` for the other arguments.
    """
    import yaml  # here, not at the top: the GPU check runs on machines without PyYAML

    if heads is True:
        if upsampler_name is None:
            raise ValueError("--heads gives the task head the upsampler of --upsampler: name one (not none)")
        heads, head_options = upsampler_name, options
    head_entry = upsampler(heads) if heads else None
    if upsampler_name is None and not downsample and head_entry is None:
        raise ValueError("nothing to convert: name an upsampler, ask for the downsampling swap or the heads' swap")
    entry = None if upsampler_name is None else upsampler(upsampler_name)
    source = find_model_yaml(model)
    text = source.read_text()
    cfg = yaml.safe_load(text)
    backbone = cfg.get("backbone") or []
    rows = backbone + (cfg.get("head") or [])
    upsampling, downsampling, heading = {}, {}, {}
    for index, (origin, repeats, module, args) in enumerate(rows):
        scale = row_scale(module, args)
        if entry is not None and scale is not None:
            args = entry.yaml_args(_input_channels(rows, index), scale, options)
            upsampling[index] = [origin, repeats, entry.module, args]
        stride = _neck_conv_stride(module, args) if index >= len(backbone) else None
        if downsample and stride is not None:
            downsampling[index] = [origin, repeats, DOWNSAMPLER, [args[0], DOWN_KERNEL_SIZE, stride]]
        if head_entry is not None and _our_head(module):
            heading[index] = _head_row(rows[index], head_entry.name, head_options)
    if entry is not None and not upsampling:
        modules = sorted({u.module for u in UPSAMPLERS.values() if u.scale_at is not None})
        raise ValueError(f"{model} ({source}) has no upsampling row ({', '.join(modules)}) to replace")
    if downsample and not downsampling:
        raise ValueError(f"{model} ({source}) has no stride-2 (or more) Conv row [c2, k, s] in its head to replace")
    if head_entry is not None and not heading:
        raise ValueError(f"{model} ({source}): its {rows[-1][2]} head has no upsampling of its own for --heads to "
                         f"swap; heads that have one: {', '.join(HEAD_TWINS)}")

    note = "# carafe-ultra (convert_yaml): " + source.name + " with "
    swaps = []
    if entry is not None:
        kind = entry.module if entry.name == entry.module.lower() else f"{entry.module} ({entry.name})"
        swaps.append(f"its upsampling rows (layers {', '.join(map(str, upsampling))}) as {kind} rows")
    if downsampling:
        swaps.append(f"its neck's strided Conv rows (layers {', '.join(map(str, downsampling))}) as {DOWNSAMPLER} rows "
                     "(same output channels and stride)")
    for index, row in heading.items():
        swaps.append(f"its {rows[index][2]} head (layer {index}) as {row[2]}, whose {HEAD_ROWS[row[2]].part} "
                     f"upsamples with {head_entry.name}")
    note += " and ".join(swaps) + ".\n"
    if entry is not None and yaml_module_class(entry.module) in conv_like_modules():  # its rows state their channels
        note += ("# Each row's c2 repeats the nominal channels of the layer feeding it, so every channel count "
                 "stays as it was at every scale.\n")
    suffixes = [*UPSAMPLERS, DOWN_SUFFIX, BOTH_SUFFIX, HEAD_ONLY_SUFFIX, HEAD_SUFFIX]
    stem = re.sub(rf"(-({'|'.join(map(re.escape, suffixes))}))+$", "", Path(model).stem)  # no "-carafe-nearest"
    suffix = _suffix(upsampler_name, downsample, head_entry and head_entry.name)
    out = Path(out_dir if out_dir is not None else ".") / f"{stem}-{suffix}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(note + _rewrite_rows(text, source, rows, len(backbone), upsampling | downsampling | heading))
    return str(out)


def head_row_options(model: str | Path, upsampler_name: str, options: dict | None = None) -> dict:
    """The options the task head of ``model``, converted with ``heads=upsampler_name`` and ``head_options=options``,
    builds its upsampler with: every keyword argument of the upsampler's module (defaults included), the head's own
    defaults (:mod:`carafe_ultra.heads`) and ``options`` over them. Empty for a model with no such head."""
    import yaml

    from .heads import head_classes

    rows = yaml.safe_load(find_model_yaml(model).read_text()).get("head") or []
    ours = next(filter(None, (_our_head(module) for _, _, module, _ in rows)), None)  # as convert_yaml finds it
    if ours is None:
        return {}
    return {**upsampler(upsampler_name).module_defaults(), **head_classes()[ours].row_options(upsampler_name, options)}


def _suffix(upsampler_name: str | None, downsample: bool, head_name: str | None = None) -> str:
    neck = upsampler_name
    if downsample:
        neck = BOTH_SUFFIX if upsampler_name == "carafe" else (
            DOWN_SUFFIX if upsampler_name is None else f"{upsampler_name}-{DOWN_SUFFIX}")
    if head_name is None:
        return neck
    if neck is None:
        return f"{head_name}-{HEAD_ONLY_SUFFIX}"
    return f"{neck}-{HEAD_SUFFIX}" if head_name == upsampler_name else f"{neck}-{head_name}-{HEAD_SUFFIX}"


def _head_row(row: list, upsampler_name: str, options: dict | None) -> list:
    """A stock task head's row (or one of ours) as our head's row with ``upsampler_name`` (and ``options``) for its
    own upsampling: the stock head's arguments, then the upsampler, then its options if any."""
    origin, repeats, module, args = row
    ours = _our_head(module)
    position = HEAD_ROWS[ours][1]
    return [origin, repeats, ours, [*args[:position], upsampler_name, *([dict(options)] if options else [])]]


def _neck_conv_stride(module: str, args: list) -> int | None:
    """The stride of a ``Conv`` row that downsamples, written [c2, k, s] with s >= 2, else None: a row with more
    arguments (padding, groups, ...) is something else and stays."""
    if module != "Conv" or not isinstance(args, list) or len(args) != 3:
        return None
    stride = args[2]
    return stride if isinstance(stride, int) and not isinstance(stride, bool) and stride >= 2 else None


def _input_channels(rows: list, index: int) -> int:
    """Nominal channels entering row ``index``: what it states itself if it is Conv-like (a learned upsampler),
    else what the Conv-like layer feeding it states."""
    conv_like = conv_like_modules()
    row = rows[index]
    if yaml_module_class(row[2]) in conv_like:
        return int(row[3][0])
    origin = row[0]
    if not isinstance(origin, int):
        raise ValueError(f"layer {index} {row} upsamples several inputs; an upsampler takes one")
    source = origin if origin >= 0 else index + origin
    feeding = rows[source]
    if yaml_module_class(feeding[2]) not in conv_like:
        raise ValueError(
            f"cannot tell the channels entering layer {index}: layer {source} is {feeding[2]}, whose first argument "
            "is not its output channels"
        )
    return int(feeding[3][0])


def _rewrite_rows(text: str, source: Path, rows: list, backbone_rows: int, new_rows: dict[int, list]) -> str:
    """``text`` (which parses to ``rows``) with the rows at the indices of ``new_rows`` replaced, everything else
    (comments included) as it was."""
    import yaml

    lines = text.splitlines(keepends=True)
    section, counts = None, {"backbone": 0, "head": 0}
    for number, line in enumerate(lines):
        key = re.match(r"^(\w+)\s*:", line)
        if key:
            section = key.group(1)
            continue
        if section not in counts or not re.match(r"^\s*-\s*\[", line):
            continue
        index = counts[section] + (backbone_rows if section == "head" else 0)
        counts[section] += 1
        if index not in new_rows:
            continue
        start, end = _flow_list_span(line)
        if yaml.safe_load(line[start:end]) != rows[index]:
            raise ValueError(f"{source}: layer {index} is not written as one row per line; cannot rewrite it")
        origin, repeats, module, args = new_rows[index]
        lines[number] = line[:start] + f"[{origin}, {repeats}, {module}, {_flow(args)}]" + line[end:]
    return "".join(lines)


def _flow_list_span(line: str) -> tuple[int, int]:
    """(start, end) of the first bracketed flow list on a line, brackets inside quotes ignored."""
    start = line.index("[")
    depth, quote = 0, None
    for position in range(start, len(line)):
        char = line[position]
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return start, position + 1
    raise ValueError(f"unbalanced brackets in YAML row {line.strip()!r}")


def _flow(value) -> str:
    """Row arguments as the stock files write them: [None, 2, "nearest"] (None bare, other strings quoted), and
    options as a flow mapping ({kernel_size: 3})."""
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, str) and value not in ("None", "nc"):  # the class count's name stays bare, as written
        return json.dumps(value)
    return str(value)

"""Task heads whose own upsampling is done by any upsampler of the table (CARAFE, DySample, EUCB, nearest, bilinear,
a transposed convolution).

- Instance segmentation: Ultralytics' segmentation heads compute their mask prototypes at a quarter of the image
  size: ``Proto`` upsamples P3 features with a learned 2× ``ConvTranspose2d``, and YOLO26's ``Proto26`` first brings
  P4 and P5 up to P3 with nearest ``F.interpolate`` (×2, ×4). ``SegmentUp``, ``Segment26Up``, ``YOLOESegmentUp`` and
  ``YOLOESegment26Up`` do every one of these upsamplings (the mask branch) with the upsampler their row names.
- Semantic segmentation: ``SemanticSegment`` brings its stride-8 logits to the image with a fixed ×8 bilinear resize
  (in the loss, the validator and the export); ``SemanticSegmentUp`` starts it with the upsampler (its decoder: ×2
  unless its row says otherwise), and bilinear does the rest.
- Depth: ``Depth`` decodes P5 -> P4 -> P3 with bilinear ×2 resizes, then a learned 2× ``ConvTranspose2d``;
  ``DepthUp`` does all of them with the upsampler.

They subclass the stock heads, so the task, the loss, validation and the exports follow. A YAML head row adds the
upsampler's name after the stock head's arguments, and optionally its options::

    - [[16, 19, 22], 1, SegmentUp, [nc, 32, 256, "carafe"]]                     # was: Segment, [nc, 32, 256]
    - [[16, 19, 22], 1, SegmentUp, [nc, 32, 256, "carafe", {kernel_size: 5}]]  # CARAFE's 5×5, not the default 3×3
    - [[16, 19, 22], 1, DepthUp, [256, "carafe"]]                                # was: Depth, [256]

``parse_model`` gives them the channels and arguments it gives the stock heads (``register`` teaches it so), so their
output shapes are the stock heads' (the semantic logits at the image's size, where the stock head's loss, validator
and export resize them to), and every stock weight but the replaced upsamplings' transfers.

The classes subclass Ultralytics' own, so they are made on first use (:func:`head_classes`; ``carafe_ultra.heads.X``
works as for any module attribute), not when this module is imported: importing Ultralytics' modules runs the hook
that registers carafe-ultra, which reads :data:`HEAD_ROWS` from here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .upsamplers import upsampler as table_entry

class HeadRow(NamedTuple):
    """How one of our heads is written: the stock head whose treatment by parse_model (channels, extra arguments) it
    gets, the position of the upsampler argument in its row (after the stock head's own arguments), and what its
    upsampling is called in messages."""

    stock: str
    position: int
    part: str


# Our heads by YAML name.
HEAD_ROWS: dict[str, HeadRow] = {
    "SegmentUp": HeadRow("Segment", 3, "mask branch"),
    "Segment26Up": HeadRow("Segment26", 3, "mask branch"),
    "YOLOESegmentUp": HeadRow("YOLOESegment", 5, "mask branch"),
    "YOLOESegment26Up": HeadRow("YOLOESegment26", 5, "mask branch"),
    "SemanticSegmentUp": HeadRow("SemanticSegment", 1, "semantic decoder"),
    "DepthUp": HeadRow("Depth", 1, "depth decoder"),
}


def check_options(options: object, part: str) -> None:
    """Raise ``ValueError`` unless a head row's upsampler ``options`` are a mapping (or None)."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"{part} upsampler options must be a mapping such as {{kernel_size: 3}}, got {options!r}")


class _RowOptions:
    """What our heads share: the options their upsampler is built with, a row's over the head's defaults."""

    DEFAULT_OPTIONS: ClassVar[dict[str, dict[str, object]]] = {}  # by upsampler name: keyword arguments of its module
    HEAD_OPTIONS: ClassVar[dict[str, object]] = {}  # the head's own options, whatever the upsampler

    @classmethod
    def row_options(cls, upsampler: str, options: Mapping[str, object] | None) -> dict[str, object]:
        """The options of a row that names ``upsampler`` with ``options``: the row's over the head's defaults for
        it; raises ``ValueError`` if ``options`` is no mapping."""
        check_options(options, HEAD_ROWS[cls.__name__].part)
        return {**cls.HEAD_OPTIONS, **cls.DEFAULT_OPTIONS.get(upsampler, {}), **(options or {})}


def head_upsampler(name: str, options: Mapping[str, object] | None, channels: int, scale: int,
                   part: str = "mask branch") -> nn.Module:
    """The upsampler ``name`` of the table (with ``options`` for our modules) for ``channels`` channels at ``scale``
    in the head's ``part``; raises ``ValueError`` saying which upsampling of which part it could not build."""
    check_options(options, part)
    try:
        return table_entry(name).build(channels, scale, options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{part}: {name} {dict(options or {})} for {channels} channels ×{scale}: "
                         f"{error}") from None


class _MaskUpsampling(_RowOptions):
    """What the heads share: their mask branch rebuilt around the upsampler of their row. Unless the row says
    otherwise (:attr:`DEFAULT_OPTIONS`), CARAFE reassembles 3×3 windows there: trained, its 5×5 kernels became nearly
    one-hot (sub-pixel placement, not blending), and the 3×3 ones keep the exported YOLO11n-seg within 1.1× of the
    stock model in OpenVINO (docs/exports.md)."""

    DEFAULT_OPTIONS: ClassVar[dict[str, dict[str, object]]] = {"carafe": {"kernel_size": 3}}
    proto_class: type[nn.Module] | None = None  # the YOLO26 heads: Proto26Up, which holds all three upsamplings

    def _use_upsampler(self, upsampler: str, options: Mapping[str, object] | None, ch: tuple, nc: int) -> None:
        options = self.row_options(upsampler, options)
        self.upsampler, self.upsampler_options = upsampler, options
        if self.proto_class is not None:
            self.proto = self.proto_class(ch, self.npr, self.nm, nc, upsampler, options)
        else:
            self.proto.upsample = head_upsampler(upsampler, options, self.npr, 2)


@functools.cache
def head_classes() -> dict[str, type[nn.Module]]:
    """Our heads by YAML name, and ``Proto26Up``, built on the installed Ultralytics' heads: those it has (8.3 has no
    YOLO26 heads, its early releases no YOLOE)."""
    from ultralytics.nn.modules import block, head

    classes: dict[str, type[nn.Module]] = {}

    class SegmentUp(_MaskUpsampling, head.Segment):
        """``Segment`` (YOLOv8/9/11/12-seg) with the prototypes upsampled by ``upsampler``.

        Args:
            nc, nm, npr, reg_max, end2end, ch: as ``Segment``'s (``parse_model`` sets reg_max, end2end and ch).
            upsampler (str): a name of :data:`carafe_ultra.upsamplers.UPSAMPLERS`. Default: ``"carafe"``.
            options (dict, optional): keyword arguments of our upsampler module, e.g. ``{"kernel_size": 3}``.
        """

        def __init__(self, nc: int = 80, nm: int = 32, npr: int = 256, upsampler: str = "carafe",
                     options: Mapping[str, object] | None = None, reg_max: int = 16, end2end: bool = False,
                     ch: tuple = ()) -> None:
            super().__init__(nc, nm, npr, reg_max, end2end, ch)
            self._use_upsampler(upsampler, options, ch, nc)

    classes["SegmentUp"] = SegmentUp

    if hasattr(block, "Proto26"):

        class Proto26Up(block.Proto26):
            """YOLO26's prototype module with its three upsamplings as modules of one upsampler: ``lifts`` bring P4
            (×2) and P5 (×4) up to P3 (nearest resizes in ``Proto26``), ``upsample`` the prototypes (×2, a
            ``ConvTranspose2d`` there).

            Shape:
                input: [P3 (N, ch[0], H, W), P4 (N, ch[1], H/2, W/2), ...] -> prototypes (N, c2, 2H, 2W) (with the
                semantic logits (N, nc, H, W) in training).
            """

            def __init__(self, ch: tuple = (), c_: int = 256, c2: int = 32, nc: int = 80, upsampler: str = "carafe",
                         options: Mapping[str, object] | None = None) -> None:
                super().__init__(ch, c_, c2, nc)
                self.upsample = head_upsampler(upsampler, options, c_, 2)
                levels = range(1, len(ch))  # P4, P5, ...: ×2, ×4, ...
                self.lifts = nn.ModuleList(head_upsampler(upsampler, options, ch[0], 2**level) for level in levels)

            def forward(self, x: list[Tensor], return_semantic: bool = True) -> Tensor | tuple[Tensor, Tensor]:
                feat = x[0]
                for refine, lift, level in zip(self.feat_refine, self.lifts, x[1:]):
                    feat = feat + lift(refine(level))
                prototypes = block.Proto.forward(self, self.feat_fuse(feat))
                if self.training and return_semantic:
                    return prototypes, self.semseg(feat)
                return prototypes

        class Segment26Up(_MaskUpsampling, head.Segment26):
            """``Segment26`` (YOLO26-seg) with P4 and P5 lifted to P3 and the prototypes upsampled by ``upsampler``
            (``Proto26Up``); arguments as ``SegmentUp``'s."""

            proto_class = Proto26Up

            def __init__(self, nc: int = 80, nm: int = 32, npr: int = 256, upsampler: str = "carafe",
                         options: Mapping[str, object] | None = None, reg_max: int = 16, end2end: bool = False,
                         ch: tuple = ()) -> None:
                super().__init__(nc, nm, npr, reg_max, end2end, ch)
                self._use_upsampler(upsampler, options, ch, nc)

        classes.update(Proto26Up=Proto26Up, Segment26Up=Segment26Up)

    if hasattr(head, "YOLOESegment"):

        class YOLOESegmentUp(_MaskUpsampling, head.YOLOESegment):
            """``YOLOESegment`` (YOLOE-v8/11-seg) with the prototypes upsampled by ``upsampler``; ``embed`` and
            ``with_bn`` as ``YOLOESegment``'s, the rest as ``SegmentUp``'s."""

            def __init__(self, nc: int = 80, nm: int = 32, npr: int = 256, embed: int = 512, with_bn: bool = True,
                         upsampler: str = "carafe", options: Mapping[str, object] | None = None, reg_max: int = 16,
                         end2end: bool = False, ch: tuple = ()) -> None:
                super().__init__(nc, nm, npr, embed, with_bn, reg_max, end2end, ch)
                self._use_upsampler(upsampler, options, ch, nc)

        classes["YOLOESegmentUp"] = YOLOESegmentUp

    if hasattr(head, "YOLOESegment26"):

        class YOLOESegment26Up(_MaskUpsampling, head.YOLOESegment26):
            """``YOLOESegment26`` (YOLOE-26-seg) with P4 and P5 lifted and the prototypes upsampled by
            ``upsampler``; arguments as ``YOLOESegmentUp``'s."""

            proto_class = classes.get("Proto26Up")

            def __init__(self, nc: int = 80, nm: int = 32, npr: int = 256, embed: int = 512, with_bn: bool = True,
                         upsampler: str = "carafe", options: Mapping[str, object] | None = None, reg_max: int = 16,
                         end2end: bool = False, ch: tuple = ()) -> None:
                super().__init__(nc, nm, npr, embed, with_bn, reg_max, end2end, ch)
                self._use_upsampler(upsampler, options, ch, nc)

        classes["YOLOESegment26Up"] = YOLOESegment26Up

    if hasattr(head, "SemanticSegment"):

        class SemanticSegmentUp(_RowOptions, head.SemanticSegment):
            """``SemanticSegment`` (YOLO26-sem) whose stride-8 logits reach the image through ``upsampler`` instead of
            the fixed ×8 bilinear resize alone: the upsampler brings them ×``scale`` (2 unless the row says otherwise),
            then a bilinear resize does the rest, as the stock head's. It does so in training (the aux head's P4 logits
            stay as they are), in eval and in exports, which still bake the argmax class map where the stock head does.
            The logits, not the features, are upsampled: ``nc`` channels instead of P3's, and the classifier stays at
            stride 8.

            Unless the row says otherwise (``scale`` and :attr:`DEFAULT_OPTIONS`), CARAFE brings the logits ×2 with
            3×3 kernels predicted by a 1×1 encoder from 16 compressed channels: the ×8 CARAFE to the image with 5×5
            kernels cost the exported model 1.7-2.6× the stock one and learned blurred kernels (docs/ultralytics.md
            gives both). DySample takes one offset group, since the classes need not divide into its default 4.

            Args:
                nc, ch: as ``SemanticSegment``'s (``parse_model`` sets ch).
                upsampler (str): a name of :data:`carafe_ultra.upsamplers.UPSAMPLERS`. Default: ``"carafe"``.
                options (dict, optional): ``scale`` (2, 4 or 8), and keyword arguments of our upsampler module, over
                    :data:`DEFAULT_OPTIONS`.

            Shape:
                [P3 (N, ch[0], H/8, W/8), P4 (N, ch[1], H/16, W/16)] -> logits (N, nc, H, W) (training: with the
                aux logits (N, nc, H/16, W/16)); exported to ONNX/OpenVINO/MNN: the class map (N, H, W).
            """

            DEFAULT_OPTIONS: ClassVar[dict[str, dict[str, object]]] = {
                "carafe": {"kernel_size": 3, "encoder_kernel": 1, "compressed_channels": 16}, "dysample": {"groups": 1}}
            HEAD_OPTIONS: ClassVar[dict[str, object]] = {"scale": 2}
            SCALES = (2, 4, 8)  # how far the upsampler may bring the stride-8 logits; bilinear does the rest
            scale = 8  # what checkpoints saved before the scale option unpickle to: their decoders upsampled ×8

            def __init__(self, nc: int = 19, upsampler: str = "carafe", options: Mapping[str, object] | None = None,
                         ch: tuple = ()) -> None:
                super().__init__(nc, ch)
                part = HEAD_ROWS["SemanticSegmentUp"].part
                options = self.row_options(upsampler, options)
                self.upsampler, self.upsampler_options = upsampler, options
                self.scale = options["scale"]
                if self.scale not in self.SCALES:
                    raise ValueError(f"{part}: scale must be one of {self.SCALES} (how far {upsampler} brings the "
                                     f"stride-8 logits; a bilinear resize does the rest), got {self.scale!r}")
                module_options = {name: value for name, value in options.items() if name != "scale"}
                self.upsample = head_upsampler(upsampler, module_options, nc, self.scale, part)

            def forward(self, x: list[Tensor]) -> Tensor | tuple[Tensor, Tensor]:
                logits = self.upsample(self.classifier(x[0]))  # (N, nc, H·scale/8, W·scale/8)
                if self.scale < 8:  # the rest as the stock head's resize
                    logits = F.interpolate(logits, scale_factor=8 // self.scale, mode="bilinear", align_corners=False)
                if self.training:
                    return (logits, self.aux_head(x[1])) if self.aux_head is not None else logits
                if self.export and (self.format in {"onnx", "mnn", "openvino"}
                                    or (self.format in {"engine", "hailo"} and self.bake_argmax)):
                    classes = logits.argmax(1) if self.nc > 1 else logits.squeeze(1) > 0  # the stock head's map
                    return classes.to(torch.uint8 if self.nc <= 256 else torch.int32)
                return logits

        classes["SemanticSegmentUp"] = SemanticSegmentUp

    if hasattr(head, "Depth"):

        class DepthUp(_RowOptions, head.Depth):
            """``Depth`` (YOLO26-depth) whose decoder upsamples with ``upsampler``: the top-down ×2 steps (``lifts``,
            bilinear resizes there) and the 2× ``ConvTranspose2d`` of its output head (``head[1]``). The calibration
            buffers and the export's ×4 resize to the image are the stock head's.

            Args:
                c_mid, ch: as ``Depth``'s (``parse_model`` sets ch).
                upsampler (str): a name of :data:`carafe_ultra.upsamplers.UPSAMPLERS`. Default: ``"carafe"``.
                options (dict, optional): keyword arguments of our upsampler module, e.g. ``{"kernel_size": 3}``.

            Shape:
                [P3 (N, ch[0], H/8, W/8), P4, P5] -> depth (N, 1, H/4, W/4) (training: ``{"depth": ...}``; exported:
                (N, 1, H, W)).
            """

            def __init__(self, c_mid: int = 256, upsampler: str = "carafe",
                         options: Mapping[str, object] | None = None, ch: tuple = ()) -> None:
                super().__init__(c_mid, ch)
                part = HEAD_ROWS["DepthUp"].part
                options = self.row_options(upsampler, options)
                self.upsampler, self.upsampler_options = upsampler, options
                self.lifts = nn.ModuleList(head_upsampler(upsampler, options, c_mid, 2, part) for _ in ch[:-1])
                self.head[1] = head_upsampler(upsampler, options, c_mid // 2, 2, part)

            def forward(self, x: list[Tensor]) -> dict[str, Tensor] | Tensor:
                feats = [project(level) for project, level in zip(self.proj, x)]
                out = feats[-1]
                for i in range(self.nl - 2, -1, -1):  # coarse to fine, as Depth
                    out = self.refine[i](self.lifts[i](out) + feats[i])
                out = self.head(out).clamp(-4.0, 5.0)  # (N, 1, H/4, W/4) log-depth
                if self.training:
                    return {"depth": torch.exp(out)}
                depth = torch.exp(self.cal_a * out + self.cal_b)
                if self.export:  # the stock export's resize to the input size
                    depth = F.interpolate(depth, scale_factor=4.0, mode="bilinear", align_corners=True)
                    if self.format == "litert":
                        depth = depth.relu()
                return depth

        classes["DepthUp"] = DepthUp

    for name, made in classes.items():  # where pickle and the docs find them: carafe_ultra.heads.<name>
        made.__module__, made.__qualname__ = __name__, name
    return classes


def __getattr__(name: str) -> type[nn.Module]:
    """``carafe_ultra.heads.SegmentUp`` and the others (how checkpoints name them), made on first use."""
    if name in HEAD_ROWS or name == "Proto26Up":
        classes = head_classes()
        if name in classes:
            return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Instance-segmentation heads whose mask branch upsamples with any upsampler of the table (CARAFE, DySample, EUCB,
nearest, bilinear, a transposed convolution).

Ultralytics' segmentation heads compute their mask prototypes at a quarter of the image size: ``Proto`` upsamples P3
features with a learned 2× ``ConvTranspose2d``, and YOLO26's ``Proto26`` first brings P4 and P5 up to P3 with
nearest ``F.interpolate`` (×2, ×4). ``SegmentUp``, ``Segment26Up``, ``YOLOESegmentUp`` and ``YOLOESegment26Up`` are
those heads (subclasses: the task, the loss and the exports follow) with every one of these upsamplings done by the
upsampler their row names. A YAML head row adds its name, and optionally its options::

    - [[16, 19, 22], 1, SegmentUp, [nc, 32, 256, "carafe"]]                     # was: Segment, [nc, 32, 256]
    - [[16, 19, 22], 1, SegmentUp, [nc, 32, 256, "carafe", {kernel_size: 3}]]

``parse_model`` gives them the channels and arguments it gives the stock heads (``register`` teaches it so), so the
mask branch's output shapes are the stock head's, and every stock weight but the replaced upsampling's transfers.

The classes subclass Ultralytics' own, so they are made on first use (:func:`head_classes`; ``carafe_ultra.heads.X``
works as for any module attribute), not when this module is imported: importing Ultralytics' modules runs the hook
that registers carafe-ultra, which reads :data:`HEAD_ROWS` from here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from torch import Tensor, nn

from .upsamplers import upsampler as table_entry

# Our heads by YAML name: the stock head whose treatment by parse_model (channels, extra arguments) each gets, and the
# position of the upsampler argument in its row (after the stock head's own arguments).
HEAD_ROWS: dict[str, tuple[str, int]] = {
    "SegmentUp": ("Segment", 3),
    "Segment26Up": ("Segment26", 3),
    "YOLOESegmentUp": ("YOLOESegment", 5),
    "YOLOESegment26Up": ("YOLOESegment26", 5),
}


def mask_upsampler(name: str, options: Mapping[str, object] | None, channels: int, scale: int) -> nn.Module:
    """The upsampler ``name`` of the table (with ``options`` for our modules) for the mask branch's ``channels``
    channels at ``scale``; raises ``ValueError`` saying which upsampling of the mask branch it could not build."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"mask branch upsampler options must be a mapping such as {{kernel_size: 3}}, got "
                         f"{options!r}")
    try:
        return table_entry(name).build(channels, scale, options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"mask branch: {name} {dict(options or {})} for {channels} channels ×{scale}: "
                         f"{error}") from None


class _MaskUpsampling:
    """What the heads share: their mask branch rebuilt around the upsampler of their row."""

    proto_class: type[nn.Module] | None = None  # the YOLO26 heads: Proto26Up, which holds all three upsamplings

    def _use_upsampler(self, upsampler: str, options: Mapping[str, object] | None, ch: tuple, nc: int) -> None:
        self.upsampler, self.upsampler_options = upsampler, dict(options or {})
        if self.proto_class is not None:
            self.proto = self.proto_class(ch, self.npr, self.nm, nc, upsampler, options)
        else:
            self.proto.upsample = mask_upsampler(upsampler, options, self.npr, 2)


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
                self.upsample = mask_upsampler(upsampler, options, c_, 2)
                levels = range(1, len(ch))  # P4, P5, ...: ×2, ×4, ...
                self.lifts = nn.ModuleList(mask_upsampler(upsampler, options, ch[0], 2**level) for level in levels)

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

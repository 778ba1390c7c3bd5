"""What a trained content-aware upsampler (or CARAFE++ downsampler) learned, drawn on the user's own image
(``python -m carafe_ultra show``).

For an Ultralytics checkpoint with CARAFE, CARAFEDown or DySample layers and an image: the image as the model sees it
(Ultralytics' letterbox) with chosen points; for every CARAFE layer, the reassembly kernel each point's output pixel
was given (each group's k x k weights over its source window, with the centre tap's weight: 1 would be nearest
upsampling), the upsampled features beside what nearest upsampling makes of the same input (one three-component
PCA shared by both), and how the centre weight is spread over the map; the same for every CARAFEDown layer, with its
reassembly beside strided sampling of its input (centre weight 1); for every DySample layer, where its output
pixels sample the input (arrows from each output pixel to its sampling point) and how far. Upsamplers inside a task
head (:mod:`carafe_ultra.heads`) are layers too, named after their place: a segmentation head's mask branch
(``23.proto.upsample``, ``23.proto.lifts.0``, whose row also shows the prototypes the mask branch made), a semantic
head's decoder (``17.upsample``, the logits' first ×2), a depth head's (``23.lifts.0``, ``23.head.1``). Without boxes to
look at (semantic and depth models, or no detection), the points are the centre and two points towards the corners.
:func:`inspect_image` returns the arrays, :func:`draw` the figure, :func:`show` both.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..downsample import CARAFEDown
from ..dysample import DySample
from ..functional import carafe_downsample
from ..integration import ultralytics_model
from ..module import CARAFE

MAX_ARROW_SCALE = 20


class UsageError(ValueError):
    """Input the command cannot use (a checkpoint without our layers, a point outside the image, ...)."""


@dataclass
class LayerView:
    """One upsampling (or CARAFE++ downsampling) layer on one image. Arrays are float32 NumPy, batch dimension
    dropped. "CARAFE" below holds for CARAFEDown too, with its output size (H/s, W/s) for (H*s, W*s).

    Attributes:
        index: the layer's index in the model (its YAML row), or for one inside a head its place there
            (``"23.proto.upsample"``).
        kind: "CARAFE", "CARAFEDown" or "DySample".
        stride_in, stride_out: pixels of the letterboxed image per input and per output pixel of the layer.
        cells: for each point, its output pixel (row, column).
        masks: CARAFE: the masks the layer computed (G*k*k, H*s, W*s); DySample: None.
        kernels: CARAFE: for each point, its reassembly kernel of each group (G, k, k).
        inside: CARAFE: for each point, which taps of its window lie on the map (k, k) (the others count as zero).
        centre_weight: CARAFE: the centre tap's weight at every output pixel (G, H*s, W*s).
        upsampled, nearest: CARAFE: the layer's output and nearest upsampling of the same (projected) input, as RGB
            images of one shared three-component PCA (H*s, W*s, 3) in [0, 1]; CARAFEDown: its reassembly (before its
            1x1 Conv) and strided sampling of the same input.
        offsets: DySample: each output pixel's sampling point minus its own position, in input pixels
            (G, 2 (x, y), H*s, W*s).
        prototypes: in a mask branch: the prototypes it made (the head's ``proto`` output), as RGB of a
            three-component PCA (2·H3, 2·W3, 3).
    """

    index: int | str
    kind: str
    stride_in: float
    stride_out: float
    cells: list[tuple[int, int]]
    masks: np.ndarray | None = None
    kernels: list[np.ndarray] = field(default_factory=list)
    inside: list[np.ndarray] = field(default_factory=list)
    centre_weight: np.ndarray | None = None
    upsampled: np.ndarray | None = None
    nearest: np.ndarray | None = None
    offsets: np.ndarray | None = None
    prototypes: np.ndarray | None = None


@dataclass
class Inspection:
    """What :func:`inspect_image` found: the letterboxed image, the points and each layer's view."""

    image: np.ndarray  # RGB, as the model sees it (imgsz x imgsz)
    points: list[tuple[float, float]]  # in the original image's pixels
    letterboxed_points: list[tuple[float, float]]  # the same in the letterboxed image's pixels
    layers: list[LayerView]
    checkpoint: str = ""


SHOWN = (CARAFE, CARAFEDown, DySample)  # the layers the command draws
COMPARED = {"CARAFE": "nearest of the same", "CARAFEDown": "strided sampling of the same"}  # the reassembly's foil


def shown_layers(model: torch.nn.Module) -> dict[int | str, torch.nn.Module]:
    """The CARAFE, CARAFEDown and DySample layers of an Ultralytics network: its rows by their index, and those inside
    a row (a task head's) by their place (``"23.proto.upsample"``, ``"17.upsample"``)."""
    found: dict[int | str, torch.nn.Module] = {}
    for i, m in enumerate(model.model):
        if isinstance(m, SHOWN):
            found[i] = m
            continue
        for name, inner in m.named_modules():
            if isinstance(inner, SHOWN):
                found[f"{i}.{name}"] = inner
    return found


def _mask_branches(model: torch.nn.Module, chosen: list[int | str]) -> dict[int | str, torch.nn.Module]:
    """The head's ``proto`` each chosen layer inside a mask branch belongs to."""
    return {key: model.model[int(key.split(".")[0])].proto for key in chosen
            if isinstance(key, str) and ".proto." in key}


def letterbox(image_bgr: np.ndarray, imgsz: int) -> tuple[np.ndarray, dict]:
    """The image as Ultralytics' predictor feeds a square ``imgsz`` input, and LetterBox's parameters (scale, pad)."""
    from ultralytics.data.augment import LetterBox

    box = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    return box(image=image_bgr), box.get_params({"img": image_bgr})


def to_letterboxed(points: list[tuple[float, float]], params: dict) -> list[tuple[float, float]]:
    """Points in the original image's pixels -> the letterboxed image's, as LetterBox moves them."""
    (height, width), (new_w, new_h) = params["orig_shape"], params["new_unpad"]
    return [(x * new_w / width + params["left"], y * new_h / height + params["top"]) for x, y in points]


def default_points(boxes: np.ndarray, width: int, height: int) -> list[tuple[float, float]]:
    """Where to look by default: the most confident detection's centre and the middle of its left edge, and the
    background point (away from the borders) farthest from every detection (``boxes``: x1, y1, x2, y2 rows, most
    confident first); without detections, the centre and two points between it and the corners."""
    if not len(boxes):
        return [(width / 2, height / 2), (width / 4, height / 4), (3 * width / 4, 3 * height / 4)]
    x1, y1, x2, y2 = boxes[0][:4]
    # Background candidates keep off the borders, where a window is cut by the edge of the map.
    grid = np.stack(np.meshgrid(np.linspace(0.1 * width, 0.9 * width, 24), np.linspace(0.1 * height, 0.9 * height, 24)),
                    -1).reshape(-1, 2)
    gaps = np.stack([np.maximum(np.maximum(b[0] - grid[:, 0], grid[:, 0] - b[2]), 0) ** 2
                     + np.maximum(np.maximum(b[1] - grid[:, 1], grid[:, 1] - b[3]), 0) ** 2 for b in boxes], 1)
    background = grid[int(np.argmax(gaps.min(1)))]
    return [((x1 + x2) / 2, (y1 + y2) / 2), (x1, (y1 + y2) / 2), (float(background[0]), float(background[1]))]


def shared_pca(*maps: Tensor) -> list[np.ndarray]:
    """Feature maps (C, H, W) as RGB images (H, W, 3) of one three-component PCA fitted on all of them together,
    each component scaled by the 1st and 99th percentiles of all of them, so equal colours mean equal features."""
    pixels = torch.cat([m.flatten(1).T for m in maps]).double()
    centred = pixels - pixels.mean(0)
    _, _, basis = torch.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    components = centred @ basis[: min(3, basis.shape[0])].T
    if components.shape[1] < 3:
        components = F.pad(components, (0, 3 - components.shape[1]))
    low, high = torch.quantile(components.float(), 0.01, dim=0), torch.quantile(components.float(), 0.99, dim=0)
    scaled = ((components.float() - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    images, start = [], 0
    for m in maps:
        count = m.shape[1] * m.shape[2]
        images.append(scaled[start : start + count].reshape(m.shape[1], m.shape[2], 3).numpy())
        start += count
    return images


def _cell(point: tuple[float, float], stride: float, height: int, width: int) -> tuple[int, int]:
    x, y = point
    return min(max(int(y // stride), 0), height - 1), min(max(int(x // stride), 0), width - 1)


def _carafe_view(index: int, layer: CARAFE, x: Tensor, stride_in: float, points: list[tuple[float, float]]) -> LayerView:
    features = x if layer.projection is None else layer.projection(x)
    s = layer.up_factor
    # Output pixel (oy, ox) reassembles the window around source pixel (oy // s, ox // s).
    return _reassembly_view(index, "CARAFE", layer.masks(x)[0], layer.kernel_size, layer.groups, lambda y, x: (y // s, x // s),
                            features.shape[2:], layer(x)[0], F.interpolate(features, scale_factor=s, mode="nearest")[0],
                            stride_in, stride_in / s, points)


def _carafe_down_view(index: int, layer: CARAFEDown, x: Tensor, stride_in: float,
                      points: list[tuple[float, float]]) -> LayerView:
    s, k, groups = layer.scale_factor, layer.kernel_size, layer.group_size
    masks = layer.masks(x)[0]
    reassembled = carafe_downsample(x, masks[None], k, groups, s)[0]  # before the layer's 1x1 Conv
    # Output pixel (oy, ox) reassembles the window around input pixel (s·oy, s·ox).
    return _reassembly_view(index, "CARAFEDown", masks, k, groups, lambda y, x: (s * y, s * x), x.shape[2:],
                            reassembled, x[0, :, ::s, ::s], stride_in, stride_in * s, points)


def _reassembly_view(index: int, kind: str, masks: Tensor, k: int, groups: int, source_of, source_size, output: Tensor,
                     compared: Tensor, stride_in: float, stride_out: float,
                     points: list[tuple[float, float]]) -> LayerView:
    """What a CARAFE or CARAFEDown layer did: ``masks`` (G*k*k, H', W') exactly as its forward computed them, each
    point's kernels, which taps lie on the ``source_size`` map around ``source_of(output row, column)``, the centre
    weight over the map, and its ``output`` beside the ``compared`` map in one PCA."""
    height, width = masks.shape[1:]
    view = LayerView(index, kind, stride_in, stride_out, [_cell(p, stride_out, height, width) for p in points])
    by_group = masks.view(groups, k * k, height, width)
    view.masks = masks.float().numpy()
    view.centre_weight = by_group[:, k * k // 2].float().numpy()
    r = (k - 1) // 2
    for oy, ox in view.cells:
        view.kernels.append(by_group[:, :, oy, ox].reshape(groups, k, k).float().numpy())
        centre_y, centre_x = source_of(oy, ox)
        rows, cols = np.arange(k) + centre_y - r, np.arange(k) + centre_x - r
        view.inside.append(((rows >= 0) & (rows < source_size[0]))[:, None]
                           & ((cols >= 0) & (cols < source_size[1]))[None])
    view.upsampled, view.nearest = shared_pca(output.float(), compared.float())
    return view


def _dysample_view(index: int, layer: DySample, x: Tensor, stride_in: float,
                   points: list[tuple[float, float]]) -> LayerView:
    offsets = F.pixel_shuffle(layer.offset(x) * layer.scope + layer.start, layer.scale)[0]  # (2*G, sH, sW)
    groups, s = layer.groups, layer.scale
    height, width = offsets.shape[1:]
    stride_out = stride_in / s
    view = LayerView(index, "DySample", stride_in, stride_out, [_cell(p, stride_out, height, width) for p in points])
    # The sampling point of output pixel (oy, ox) is (ox // s + dx + 0.5, oy // s + dy + 0.5) input pixels; its own
    # position (ox + 0.5) / s: the difference, in input pixels.
    own = (torch.arange(width) + 0.5) / s, (torch.arange(height) + 0.5) / s
    base = torch.arange(width) // s + 0.5, torch.arange(height) // s + 0.5
    shift_x = offsets.view(2, groups, height, width)[0] + (base[0] - own[0]).view(1, 1, -1)
    shift_y = offsets.view(2, groups, height, width)[1] + (base[1] - own[1]).view(1, -1, 1)
    view.offsets = torch.stack([shift_x, shift_y], 1).float().numpy()
    return view


def inspect_image(checkpoint: str | Path, image: str | Path | np.ndarray, layers: list[int | str] | None = None,
                  points: list[tuple[float, float]] | None = None, imgsz: int = 640) -> Inspection:
    """Run the checkpoint's network on ``image`` (a path, or a BGR array as OpenCV reads it) and collect what its
    CARAFE, CARAFEDown and DySample layers (``layers``: indices or places in a task head, default all) did at
    ``points`` (original pixels; default :func:`default_points` of its detections). Raises :class:`UsageError` for
    input it cannot use."""
    import cv2

    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise UsageError(f"--imgsz must be a positive multiple of 32, got {imgsz}")
    picture = image if isinstance(image, np.ndarray) else cv2.imread(str(image))
    if picture is None or picture.ndim != 3:
        raise UsageError(f"cannot read an image from {image} (expected a file OpenCV reads: PNG, JPEG, ...)")
    if not Path(checkpoint).is_file():
        raise UsageError(f"no checkpoint {checkpoint} (expected an Ultralytics .pt with CARAFE, CARAFEDown or DySample "
                         "layers)")
    model = ultralytics_model(checkpoint)
    network = model.model.float().eval()
    available = shown_layers(network)
    if not available:
        raise UsageError(f"{checkpoint} has no CARAFE, CARAFEDown or DySample layer to show")
    chosen = layers if layers else list(available)
    wrong = [i for i in chosen if i not in available]
    if wrong:
        raise UsageError(f"layer(s) {wrong} of {checkpoint} are not CARAFE, CARAFEDown or DySample layers; those are "
                         + ", ".join(f"{i} ({type(m).__name__})" for i, m in available.items()))
    height, width = picture.shape[:2]
    if points is None:
        boxes = model.predict(picture, imgsz=imgsz, verbose=False, device="cpu")[0].boxes  # None: no boxes to tell
        order = boxes.conf.argsort(descending=True) if boxes is not None else []
        points = default_points(boxes.xyxy[order].cpu().numpy() if boxes is not None else np.zeros((0, 4)), width,
                                height)
    outside = [p for p in points if not (0 <= p[0] < width and 0 <= p[1] < height)]
    if outside:
        raise UsageError(f"point(s) {outside} lie outside the image ({width} x {height} pixels; x in [0, {width}), "
                         f"y in [0, {height}))")
    boxed, params = letterbox(picture, imgsz)
    at = to_letterboxed(points, params)
    inputs: dict[int | str, Tensor] = {}
    hooks = [available[i].register_forward_hook(lambda m, args, out, i=i: inputs.__setitem__(i, args[0].detach()))
             for i in chosen]
    made: dict[int | str, Tensor] = {}  # what each chosen mask-branch layer's branch made: its prototypes
    hooks += [proto.register_forward_hook(lambda m, args, out, i=i: made.__setitem__(
        i, (out[0] if isinstance(out, tuple) else out).detach()))
        for i, proto in _mask_branches(network, chosen).items()]
    try:
        with torch.no_grad():
            network(torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
            views = []
            for i in chosen:
                x, layer = inputs[i], available[i]
                make = {CARAFE: _carafe_view, CARAFEDown: _carafe_down_view, DySample: _dysample_view}[type(layer)]
                views.append(make(i, layer, x, imgsz / x.shape[-1], at))
                if i in made:
                    (views[-1].prototypes,) = shared_pca(made[i][0].float())
    finally:
        for hook in hooks:
            hook.remove()
    return Inspection(boxed[..., ::-1].copy(), list(points), at, views, str(checkpoint))


def draw(inspection: Inspection):
    """The figure of an inspection: the image with its points, then a row per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    points = inspection.letterboxed_points
    columns = max(len(points), 1) + 3 + any(view.prototypes is not None for view in inspection.layers)
    fig = plt.figure(figsize=(3.1 * columns, 3.2 * (1 + len(inspection.layers))), layout="constrained")
    grid = fig.add_gridspec(1 + len(inspection.layers), columns)
    image = fig.add_subplot(grid[0, :2])
    image.imshow(inspection.image)
    for number, (x, y) in enumerate(points, 1):
        image.scatter([x], [y], s=90, facecolors="none", edgecolors="yellow", linewidths=2)
        below_right = number % 2  # neighbouring points (a detection and its edge) label on opposite sides
        image.annotate(str(number), (x, y), xytext=(7, -9) if below_right else (-14, 5), textcoords="offset points",
                       color="yellow", fontsize=11, weight="bold")
    image.set_title(f"Input as the model sees it ({inspection.image.shape[1]} px), points 1-{len(points)}")
    image.axis("off")
    legend = fig.add_subplot(grid[0, 2:])
    legend.axis("off")
    legend.text(0, 0.95, _legend(inspection), va="top", fontsize=10, family="monospace", wrap=True)
    outside = ListedColormap(["#d9d9d9"])
    for row, view in enumerate(inspection.layers, 1):
        if view.kind in COMPARED:
            _draw_carafe(fig, grid, row, view, outside)
        else:
            _draw_dysample(fig, grid, row, view, inspection.image)
    return fig


def _legend(inspection: Inspection) -> str:
    lines = [f"checkpoint: {Path(inspection.checkpoint).name}", "points (original image pixels):"]
    lines += [f"  {n}: x={x:.0f}, y={y:.0f}" for n, (x, y) in enumerate(inspection.points, 1)]
    kinds = {view.kind for view in inspection.layers}
    if "CARAFE" in kinds:
        lines += ["", "CARAFE: each group's k x k reassembly weights at", "the point's output pixel, over its source",
                  "window (grey: off the map, counts as zero);", "centre w: the centre tap's weight (nearest",
                  "upsampling would be 1; uniform averaging 1/k^2)."]
    if "CARAFEDown" in kinds:
        lines += ["", "CARAFEDown: the same for CARAFE++ downsampling,", "over the input window of each output pixel;",
                  "centre w 1 would be strided sampling."]
    if any(view.prototypes is not None for view in inspection.layers):
        lines += ["", "mask: an upsampler inside the segmentation head's", "mask branch; its row ends with the",
                  "prototypes that branch made."]
    if "DySample" in kinds:
        lines += ["", "DySample: arrows from output pixels to the points", "they sample (lengthened to be seen);",
                  "0 is bilinear upsampling."]
    return "\n".join(lines)


def _name(view: LayerView) -> str:
    """How a figure names a layer: ``layer 14``, inside layer 23's mask branch ``23 mask upsample``, elsewhere in a
    head ``17 upsample``."""
    if isinstance(view.index, int):
        return f"layer {view.index}"
    row, _, place = view.index.partition(".")
    return f"{row} mask {place.removeprefix('proto.')}" if place.startswith("proto.") else f"{row} {place}"


def _draw_carafe(fig, grid, row: int, view: LayerView, outside) -> None:
    size = view.kernels[0].shape[-1] if view.kernels else 1
    top = max([2 / size**2, *(float(k.max()) for k in view.kernels)])  # uniform averaging in mid-scale
    panels = []
    for column, (kernel, inside) in enumerate(zip(view.kernels, view.inside)):
        axes = fig.add_subplot(grid[row, column])
        groups, k, _ = kernel.shape
        tiled = np.full((k, groups * (k + 1) - 1), np.nan)
        mask = np.zeros_like(tiled, dtype=bool)
        for g in range(groups):
            tiled[:, g * (k + 1) : g * (k + 1) + k] = np.where(inside, kernel[g], np.nan)
            mask[:, g * (k + 1) : g * (k + 1) + k] = ~inside
        axes.imshow(np.where(mask, 1.0, np.nan), cmap=outside, vmin=0, vmax=1)
        heat = axes.imshow(tiled, cmap="viridis", vmin=0, vmax=top)
        centre = ", ".join(f"{kernel[g, k // 2, k // 2]:.2f}" for g in range(groups))
        axes.set_title(f"{_name(view)} {view.kind}, point {column + 1}\ncentre w {centre}", fontsize=9)
        axes.set_xticks([]), axes.set_yticks([])
        panels.append(axes)
    if panels:
        fig.colorbar(heat, ax=panels, fraction=0.046, label="kernel weight")
    start = len(view.kernels)
    pictures = ((view.upsampled, f"{view.kind} output" if view.kind == "CARAFE" else f"{view.kind} reassembly"),
                (view.nearest, COMPARED[view.kind]))
    for offset, (picture, title) in enumerate(pictures):
        axes = fig.add_subplot(grid[row, start + offset])
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(f"{_name(view)}: {title}\n(shared 3-component PCA)", fontsize=9)
        axes.axis("off")
    axes = fig.add_subplot(grid[row, start + 2])
    centre = view.centre_weight.mean(0)
    heat = axes.imshow(centre, cmap="magma", vmin=0, vmax=max(float(centre.max()), 0.1), interpolation="nearest")
    low, median, high = np.percentile(centre, [5, 50, 95])
    axes.set_title(f"{_name(view)}: centre weight over the map\nmedian {median:.2f}, 5-95% {low:.2f}-{high:.2f}",
                   fontsize=9)
    axes.axis("off")
    fig.colorbar(heat, ax=axes, fraction=0.046, label="centre weight")
    if view.prototypes is not None:
        axes = fig.add_subplot(grid[row, start + 3])
        axes.imshow(view.prototypes, interpolation="nearest")
        axes.set_title(f"layer {view.index.split('.')[0]}: the mask branch's\nprototypes (3-component PCA)",
                       fontsize=9)
        axes.axis("off")


def _draw_dysample(fig, grid, row: int, view: LayerView, image: np.ndarray) -> None:
    shift = view.offsets.mean(0)  # (2, H, W), input pixels, over the groups
    height, width = shift.shape[1:]
    step = max(1, max(height, width) // 24)
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    dx, dy = shift[0, ys, xs] * view.stride_in, shift[1, ys, xs] * view.stride_in  # letterboxed pixels
    length = np.hypot(dx, dy)
    typical = float(np.percentile(length, 95))
    # Arrows reach about half the gap between drawn pixels, lengthened at most MAX_ARROW_SCALE times.
    scale = min(MAX_ARROW_SCALE, 0.5 * step * view.stride_out / max(typical, 1e-9))
    axes = fig.add_subplot(grid[row, :2])
    axes.imshow(image)
    centres_x, centres_y = (xs + 0.5) * view.stride_out, (ys + 0.5) * view.stride_out
    axes.scatter(centres_x.ravel(), centres_y.ravel(), s=4, color="white")
    axes.quiver(centres_x, centres_y, dx * scale, dy * scale, length, angles="xy", scale_units="xy", scale=1,
                cmap="cool", width=0.004)
    drawn = "every output pixel" if step == 1 else f"one output pixel in {step} x {step}"
    axes.set_title(f"layer {view.index} DySample: sampling offsets, {drawn}, arrows x{scale:.0f}", fontsize=9)
    axes.axis("off")
    axes = fig.add_subplot(grid[row, 2])
    magnitude = np.hypot(shift[0], shift[1])
    heat = axes.imshow(magnitude, cmap="cividis", vmin=0, vmax=max(float(magnitude.max()), 0.05),
                       interpolation="nearest")
    axes.set_title(f"layer {view.index}: offset length\n(input pixels, mean over groups)", fontsize=9)
    axes.axis("off")
    fig.colorbar(heat, ax=axes, fraction=0.046, label="input pixels")


def show(checkpoint: str | Path, image: str | Path | np.ndarray, layers: list[int | str] | None = None,
         points: list[tuple[float, float]] | None = None, imgsz: int = 640, out: str | Path | None = None):
    """:func:`inspect_image` and :func:`draw`; the figure is saved to ``out`` when given. Returns (figure, inspection)."""
    inspection = inspect_image(checkpoint, image, layers, points, imgsz)
    figure = draw(inspection)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)
    return figure, inspection


def _layer(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text.strip()


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is x,y in the image's pixels, e.g. 120,80; got {text!r}") from None
    return x, y


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m carafe_ultra show``'s options."""
    parser.add_argument("checkpoint", help="an Ultralytics checkpoint (.pt) with CARAFE, CARAFEDown or DySample layers")
    parser.add_argument("image", help="an image file (the original; points are in its pixels)")
    parser.add_argument("--layers", type=_layer, nargs="+",
                        help="the layers to show, by index, or by place in a task head (23.proto.upsample, "
                             "17.upsample, 23.lifts.0; the error for a wrong one lists them); default: all of them")
    parser.add_argument("--points", type=_point, nargs="+", metavar="X,Y",
                        help="points to look at, in the image's pixels (default: on the most confident detection, "
                             "its edge, and the background)")
    parser.add_argument("--imgsz", type=int, default=640, help="the model's input size (default 640)")
    parser.add_argument("--out", default="carafe-show.png", help="where to write the figure (default carafe-show.png)")


def main(args: argparse.Namespace) -> None:
    try:
        _, inspection = show(args.checkpoint, args.image, args.layers, args.points, args.imgsz, args.out)
    except UsageError as error:
        args.error(str(error))
    layers = ", ".join(f"{v.index} ({v.kind})" for v in inspection.layers)
    print(f"{args.out}: layers {layers}; points " + " ".join(f"{x:.0f},{y:.0f}" for x, y in inspection.points))

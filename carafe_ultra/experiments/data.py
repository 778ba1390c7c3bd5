"""A small dataset generated on the spot (nothing is downloaded), deterministic for a given spec: boxes for
detection, exact instance masks for instance segmentation, per-pixel class masks for semantic segmentation, or
metric depth maps for depth estimation.

Scenes are made so that upsampling quality can matter: many small objects of several classes, objects that
touch or overlap, thin distractors and textured clutter on a noisy background. Images are PNG (lossless, so
the same spec gives the same bytes) in Ultralytics' YOLO layout with a ``data.yaml`` beside them. For segmentation
(``task="segment"``) every object is drawn by filling the polygon its label gives (Ultralytics' polygon format,
one polygon per instance; a ring is one polygon around its hole, joined to it by a seam), so the polygon and the
pixels agree exactly; those objects touch but never overlap, so no instance hides part of another. The semantic set
(``task="semantic"``) has the same scenes with, instead of polygons, one class-index PNG per image in Ultralytics'
``masks_dir`` layout (``masks/<split>/``), background class 0 and the shapes 1-5, each object's pixels the ones its
polygon fills. The depth set (``task="depth"``) has them with each object at a depth of its own in front of a slanted
background plane, as 16-bit PNGs in millimetres in Ultralytics' layout (``depth/<split>/``, ``depth_scale: 1000``):
depth steps at every object's edge, and the image is hazed by its depth (farther is paler), so depth can be read
from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .._checks import check_int

CLASSES = ("disc", "square", "triangle", "ring", "cross")
TASKS = ("detect", "segment", "semantic", "depth")  # what the labels are: boxes, polygons, class masks, depth maps
BACKGROUND = "background"  # the semantic set's class 0
DEPTH_SCALE = 1000  # depth PNG value per metre (Ultralytics' default)
OBJECT_DEPTH = (1.0, 3.5)  # metres; the background plane lies behind, between these:
BACKGROUND_DEPTH = (4.0, 10.0)
HAZE, HAZE_LEVEL = 0.12, 200.0  # per metre: a pixel keeps exp(-HAZE·depth) of its colour, the rest is grey HAZE_LEVEL
CIRCLE_VERTICES = 32  # of the polygons of discs and rings


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate: image counts, size, objects per image (inclusive range) and object sizes in pixels."""

    train_images: int = 256
    val_images: int = 64
    image_size: int = 160
    objects: tuple[int, int] = (4, 12)
    object_size: tuple[int, int] = (8, 28)
    touching: float = 0.35  # chance that an object is placed against the previous one
    distractors: tuple[int, int] = (2, 6)
    seed: int = 0
    task: str = "detect"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        check_int("train_images", self.train_images, minimum=1)
        check_int("val_images", self.val_images, minimum=1)
        check_int("image_size", self.image_size, minimum=16)
        for name in ("objects", "object_size", "distractors"):
            low, high = getattr(self, name)
            check_int(f"{name}[0]", low, minimum=0)
            if high < low:
                raise ValueError(f"{name} must be a (low, high) range with high >= low, got {(low, high)}")
        if self.object_size[0] < 4 or self.object_size[1] >= self.image_size:
            raise ValueError(f"object_size must lie in [4, image_size) = [4, {self.image_size}), got {self.object_size}")
        if not 0 <= self.touching <= 1:
            raise ValueError(f"touching must be a probability in [0, 1], got {self.touching}")

    def digest(self) -> str:
        fields = asdict(self)
        if self.task == "detect":  # the detection sets keep the names (and caches) they had before tasks
            del fields["task"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("CARAFE_ULTRA_CACHE", Path.home() / ".cache" / "carafe-ultra"))


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the lock beside ``folder`` (``<folder>.lock``): processes that make the same cached thing at once, shards
    of a grid on shared storage for instance, make it once while the others wait for it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def shapes_dataset(spec: ShapesSpec = ShapesSpec(), root: Path | None = None) -> Path:
    """Generate the dataset once (cached by spec) and return the path of its ``data.yaml``."""
    folder = Path(root or default_cache_dir() / "datasets") / f"shapes-{spec.digest()}"
    data_yaml = folder / "data.yaml"
    if data_yaml.is_file():  # written last, so its presence means the set is complete
        return data_yaml
    with exclusive(folder):
        if not data_yaml.is_file():
            _generate(spec, folder)
    return data_yaml


def _generate(spec: ShapesSpec, folder: Path) -> None:
    data_yaml = folder / "data.yaml"
    rng = np.random.default_rng(spec.seed)
    targets = {"semantic": "masks", "depth": "depth"}.get(spec.task, "labels")
    for split, count in (("train", spec.train_images), ("val", spec.val_images)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / targets / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f"{index:05d}"
            if spec.task == "detect":
                image, labels = _scene(spec, rng)
                rows = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            else:
                image, polygons = _segment_scene(spec, rng)
                rows = [f"{c} " + " ".join(f"{v / spec.image_size:.6f}" for v in polygon.ravel())
                        for c, polygon in polygons]
            if spec.task == "semantic":
                cv2.imwrite(str(folder / targets / split / f"{stem}.png"), _class_mask(image.shape[:2], polygons))
            elif spec.task == "depth":
                # depths drawn apart, so the scenes stay the segmentation set's
                image, depth = _depth_scene(image, polygons, np.random.default_rng([spec.seed, len(split), index]))
                cv2.imwrite(str(folder / targets / split / f"{stem}.png"), depth)
            else:
                (folder / targets / split / f"{stem}.txt").write_text("\n".join(rows) + "\n")
            cv2.imwrite(str(folder / "images" / split / f"{stem}.png"), image)
    data_yaml.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\n{_task_keys(spec.task)}")


def _task_keys(task: str) -> str:
    """The data YAML's lines after the splits: the classes, and where the semantic masks or the depth scale are."""
    if task == "depth":
        return f"nc: 1\nnames:\n  0: depth\ndepth_scale: {DEPTH_SCALE}\n"
    names = (BACKGROUND, *CLASSES) if task == "semantic" else CLASSES
    lines = "".join(f"  {i}: {name}\n" for i, name in enumerate(names))
    return ("masks_dir: masks\n" if task == "semantic" else "") + f"names:\n{lines}"


def _class_mask(shape: tuple[int, int], polygons: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """(H, W) uint8 class indices: background 0, each object's polygon filled with its class + 1."""
    mask = np.zeros(shape, np.uint8)
    for cls, polygon in polygons:
        cv2.fillPoly(mask, [polygon], cls + 1)
    return mask


def _depth_scene(image: np.ndarray, polygons: list[tuple[int, np.ndarray]], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The scene hazed by its depth, and its depth as uint16 millimetres: a background plane rising from its near to
    its far depth along a random direction, each object's polygon at one depth of its own in front of it."""
    size = image.shape[0]
    near, far = np.sort(rng.uniform(*BACKGROUND_DEPTH, 2))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    along = np.cos(angle) * xs + np.sin(angle) * ys
    along = (along - along.min()) / (along.max() - along.min())
    depth = near + (far - near) * along
    for _, polygon in polygons:
        inside = cv2.fillPoly(np.zeros((size, size), np.uint8), [polygon], 1).astype(bool)
        depth[inside] = rng.uniform(*OBJECT_DEPTH)
    millimetres = np.round(depth * DEPTH_SCALE).astype(np.uint16)
    kept = np.exp(-HAZE * millimetres / DEPTH_SCALE)[..., None]  # haze by the depth the label holds
    hazed = np.round(image * kept + HAZE_LEVEL * (1 - kept)).astype(np.uint8)
    return hazed, millimetres


def _scene(spec: ShapesSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    size = spec.image_size
    base = rng.integers(40, 200, size=3)
    image = np.clip(base + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(*spec.distractors, endpoint=True))):  # thin lines: clutter, not objects
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), _colour(rng), 1, cv2.LINE_AA)
    labels = []
    previous = None
    for _ in range(int(rng.integers(*spec.objects, endpoint=True))):
        side = int(rng.integers(*spec.object_size, endpoint=True))
        if previous is not None and rng.random() < spec.touching:  # put it against the last object
            px, py, pside = previous
            x0 = int(np.clip(px + pside + int(rng.integers(-2, 2, endpoint=True)), 0, size - side))
            y0 = int(np.clip(py + int(rng.integers(-side // 2, side // 2, endpoint=True)), 0, size - side))
        else:
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2, endpoint=True))
        cls = int(rng.integers(len(CLASSES)))
        box = _draw(image, cls, x0, y0, side, _colour(rng))
        previous = (x0, y0, side)
        x1, y1, x2, y2 = box
        labels.append((cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size))
    return image, labels


def _segment_scene(spec: ShapesSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """An image and its instances as (class, polygon of integer pixel vertices): each object is drawn by filling its
    polygon, placed against the previous one or anywhere, never overlapping another (a placement that would is
    tried again, a few times, then the object left out)."""
    size = spec.image_size
    base = rng.integers(40, 200, size=3)
    image = np.clip(base + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(*spec.distractors, endpoint=True))):  # under the objects: they cover it
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), _colour(rng), 1, cv2.LINE_AA)
    taken = np.zeros((size, size), np.uint8)
    instances, previous = [], None
    for _ in range(int(rng.integers(*spec.objects, endpoint=True))):
        side = int(rng.integers(*spec.object_size, endpoint=True))
        cls, colour = int(rng.integers(len(CLASSES))), _colour(rng)
        for _attempt in range(5):
            if previous is not None and rng.random() < spec.touching:  # beside the last object, a pixel or two away
                px, py, pside = previous
                x0 = int(np.clip(px + pside + int(rng.integers(1, 2, endpoint=True)), 0, size - side))
                y0 = int(np.clip(py + int(rng.integers(-side // 2, side // 2, endpoint=True)), 0, size - side))
            else:
                x0, y0 = (int(v) for v in rng.integers(0, size - side, 2, endpoint=True))
            polygon = _polygon(CLASSES[cls], x0, y0, side)
            mask = cv2.fillPoly(np.zeros_like(taken), [polygon], 1)
            if not (mask & taken).any():
                break
        else:
            continue
        taken |= cv2.dilate(mask, np.ones((3, 3), np.uint8))  # and a pixel of air around it
        cv2.fillPoly(image, [polygon], colour)
        instances.append((cls, polygon))
        previous = (x0, y0, side)
    return image, instances


def _polygon(name: str, x0: int, y0: int, side: int) -> np.ndarray:
    """The polygon (integer pixel vertices, (V, 2)) of a ``name`` object in the square (x0, y0, side)."""
    x1, y1, x2, y2 = x0, y0, x0 + side - 1, y0 + side - 1
    cx, cy, radius = x0 + side // 2, y0 + side // 2, side // 2
    if name == "disc":
        return _circle(cx, cy, radius)
    if name == "square":
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.int32)
    if name == "triangle":
        return np.array([[cx, y1], [x2, y2], [x1, y2]], np.int32)
    if name == "ring":  # around the outer circle, in to the hole, around it the other way, out again
        outer, inner = _circle(cx, cy, radius), _circle(cx, cy, max(1, radius - max(2, side // 6)))
        return np.concatenate([outer, outer[:1], inner[:1], inner[::-1], inner[:1]]).astype(np.int32)
    bar = max(2, side // 4) // 2  # cross: a plus sign of bars about a quarter of the side wide
    return np.array([[cx - bar, y1], [cx + bar, y1], [cx + bar, cy - bar], [x2, cy - bar], [x2, cy + bar],
                     [cx + bar, cy + bar], [cx + bar, y2], [cx - bar, y2], [cx - bar, cy + bar], [x1, cy + bar],
                     [x1, cy - bar], [cx - bar, cy - bar]], np.int32)


def _circle(cx: int, cy: int, radius: int) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).round().astype(np.int32)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _draw(image: np.ndarray, cls: int, x0: int, y0: int, side: int, colour) -> tuple[int, int, int, int]:
    """Draw one object in the square (x0, y0, side) and return its tight box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = x0, y0, x0 + side, y0 + side
    cx, cy, radius = x0 + side // 2, y0 + side // 2, side // 2
    name = CLASSES[cls]
    if name == "disc":
        cv2.circle(image, (cx, cy), radius, colour, -1, cv2.LINE_AA)
        x1, y1, x2, y2 = cx - radius, cy - radius, cx + radius, cy + radius
    elif name == "square":
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, -1)
    elif name == "triangle":
        points = np.array([[cx, y1], [x1, y2], [x2, y2]], np.int32)
        cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
    elif name == "ring":
        cv2.circle(image, (cx, cy), radius, colour, max(2, side // 6), cv2.LINE_AA)
        x1, y1, x2, y2 = cx - radius, cy - radius, cx + radius, cy + radius
    else:  # cross
        bar = max(2, side // 4)
        cv2.rectangle(image, (cx - bar // 2, y1), (cx + bar // 2, y2), colour, -1)
        cv2.rectangle(image, (x1, cy - bar // 2), (x2, cy + bar // 2), colour, -1)
    height, width = image.shape[:2]
    return max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)

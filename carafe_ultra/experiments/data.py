"""A small detection dataset generated on the spot (nothing is downloaded), deterministic for a given spec.

Scenes are made so that upsampling quality can matter: many small objects of several classes, objects that
touch or overlap, thin distractors and textured clutter on a noisy background. Images are PNG (lossless, so
the same spec gives the same bytes) in Ultralytics' YOLO layout with a ``data.yaml`` beside them.
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

    def __post_init__(self) -> None:
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
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


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
    for split, count in (("train", spec.train_images), ("val", spec.val_images)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, labels = _scene(spec, rng)
            cv2.imwrite(str(folder / "images" / split / f"{index:05d}.png"), image)
            rows = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (folder / "labels" / split / f"{index:05d}.txt").write_text("\n".join(rows) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    data_yaml.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")


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

"""The generated shapes set: deterministic, cached, valid labels, and checked arguments."""

from dataclasses import replace

import pytest

from carafe_ultra.experiments.data import CLASSES, ShapesSpec, shapes_dataset


def test_deterministic_and_cached(tmp_path):
    spec = ShapesSpec(train_images=3, val_images=2, image_size=64, object_size=(6, 20))
    first = shapes_dataset(spec, root=tmp_path / "a")
    second = shapes_dataset(spec, root=tmp_path / "b")
    for split in ("train", "val"):
        for a in sorted((first.parent / "images" / split).iterdir()):
            assert a.read_bytes() == (second.parent / "images" / split / a.name).read_bytes()
    stamp = first.stat().st_mtime_ns
    assert shapes_dataset(spec, root=tmp_path / "a") == first and first.stat().st_mtime_ns == stamp


def test_labels_are_valid_boxes(tmp_path):
    data = shapes_dataset(ShapesSpec(train_images=6, val_images=1, image_size=96), root=tmp_path)
    for label in (data.parent / "labels" / "train").glob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        assert 4 <= len(rows) <= 12
        for cls, *box in rows:
            assert 0 <= int(cls) < len(CLASSES)
            x, y, w, h = map(float, box)
            assert 0 < w <= 1 and 0 < h <= 1 and 0 <= x - w / 2 and x + w / 2 <= 1 + 1e-6


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"train_images": 0}, "train_images must be >= 1"),
        ({"image_size": 8}, "image_size must be >= 16"),
        ({"objects": (5, 2)}, r"objects must be a \(low, high\) range"),
        ({"object_size": (8, 200)}, r"object_size must lie in \[4, image_size\)"),
        ({"touching": 1.5}, r"touching must be a probability"),
    ],
)
def test_bad_spec(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ShapesSpec(**kwargs)


def test_segmentation_labels_are_the_polygons_the_objects_were_drawn_with(tmp_path):
    import cv2
    import numpy as np

    spec = ShapesSpec(train_images=24, val_images=1, image_size=96, task="segment")
    data = shapes_dataset(spec, root=tmp_path)
    assert spec.digest() != replace(spec, task="detect").digest()
    seen, holes = set(), 0
    for label in sorted((data.parent / "labels" / "train").glob("*.txt")):
        image = cv2.imread(str(data.parent / "images" / "train" / label.with_suffix(".png").name))
        taken = np.zeros(image.shape[:2], bool)
        for line in label.read_text().splitlines():
            cls, *coordinates = line.split()
            seen.add(CLASSES[int(cls)])
            polygon = (np.array(coordinates, float).reshape(-1, 2) * spec.image_size).round().astype(np.int32)
            mask = cv2.fillPoly(np.zeros(image.shape[:2], np.uint8), [polygon], 1).astype(bool)
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1, (label.name, line[:40])  # the polygon's pixels are the object, all of it
            assert not (mask & taken).any()  # no instance covers another
            taken |= mask
            if CLASSES[int(cls)] == "ring":  # the hole is the background's, not the ring's
                centre = polygon.mean(0).round().astype(int)
                holes += not mask[centre[1], centre[0]]
    assert seen == set(CLASSES) and holes > 0


def test_a_task_other_than_detect_or_segment_is_refused():
    with pytest.raises(ValueError, match="task must be one of detect, segment, got 'pose'"):
        ShapesSpec(task="pose")

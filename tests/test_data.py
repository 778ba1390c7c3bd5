"""The generated shapes set: deterministic, cached, valid labels, and checked arguments."""

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

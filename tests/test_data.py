"""The generated shapes set: deterministic, cached, valid labels, and checked arguments."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import yaml

from carafe_ultra.experiments.data import (BACKGROUND_DEPTH, CLASSES, DEPTH_SCALE, HAZE, HAZE_LEVEL, OBJECT_DEPTH,
                                           ShapesSpec, shapes_dataset)


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


def test_a_task_we_make_no_data_for_is_refused():
    with pytest.raises(ValueError, match="task must be one of detect, segment, semantic, depth, got 'pose'"):
        ShapesSpec(task="pose")


def polygons_of(data, spec, stem):
    """The segmentation set's instances of one image (the semantic and depth sets have the same scenes)."""
    segment = shapes_dataset(replace(spec, task="segment"), root=data.parents[1])
    rows = (segment.parent / "labels" / "train" / f"{stem}.txt").read_text().splitlines()
    return [(int(cls), (np.array(xy, float).reshape(-1, 2) * spec.image_size).round().astype(np.int32))
            for cls, *xy in (row.split() for row in rows)]


def test_semantic_masks_are_the_classes_of_the_polygons_with_background_zero(tmp_path):
    spec = ShapesSpec(train_images=6, val_images=2, image_size=96, task="semantic")
    data = shapes_dataset(spec, root=tmp_path)
    config = yaml.safe_load(data.read_text())
    assert config["masks_dir"] == "masks" and config["names"] == dict(enumerate(["background", *CLASSES]))
    for mask_file in sorted((data.parent / "masks" / "train").glob("*.png")):
        mask = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (96, 96)
        expected = np.zeros_like(mask)
        for cls, polygon in polygons_of(data, spec, mask_file.stem):
            cv2.fillPoly(expected, [polygon], cls + 1)
        assert np.array_equal(mask, expected) and 0 in mask
    images = sorted(p.name for p in (data.parent / "images" / "val").iterdir())
    assert images == sorted(p.name for p in (data.parent / "masks" / "val").iterdir())


def test_depth_maps_are_16_bit_with_each_object_in_front_of_a_slanted_background(tmp_path):
    spec = ShapesSpec(train_images=6, val_images=2, image_size=96, task="depth")
    data = shapes_dataset(spec, root=tmp_path)
    config = yaml.safe_load(data.read_text())
    assert config["depth_scale"] == DEPTH_SCALE and config["names"] == {0: "depth"}
    for depth_file in sorted((data.parent / "depth" / "train").glob("*.png")):
        depth = cv2.imread(str(depth_file), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and depth.shape == (96, 96)
        background = np.ones(depth.shape, bool)
        for _, polygon in polygons_of(data, spec, depth_file.stem):
            inside = cv2.fillPoly(np.zeros(depth.shape, np.uint8), [polygon], 1).astype(bool)
            background &= ~inside
            assert len(np.unique(depth[inside])) == 1  # one depth per object
            assert OBJECT_DEPTH[0] * DEPTH_SCALE <= depth[inside][0] <= OBJECT_DEPTH[1] * DEPTH_SCALE
        plane = depth[background].astype(float)
        assert BACKGROUND_DEPTH[0] * DEPTH_SCALE <= plane.min() < plane.max() <= BACKGROUND_DEPTH[1] * DEPTH_SCALE
        # the segmentation set's scene, hazed by the depth the label holds: farther is paler
        scene = cv2.imread(str(data.parents[1] / f"shapes-{replace(spec, task='segment').digest()}" / "images" /
                               "train" / depth_file.name)).astype(float)
        kept = np.exp(-HAZE * depth / DEPTH_SCALE)[..., None]
        image = cv2.imread(str(data.parent / "images" / "train" / depth_file.name))
        assert np.array_equal(image, np.round(scene * kept + HAZE_LEVEL * (1 - kept)).astype(np.uint8))
    assert spec.digest() != replace(spec, task="semantic").digest()

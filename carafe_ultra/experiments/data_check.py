"""A data YAML checked against the model it is to train, before anything runs: missing, unreadable, or made for
another task (pose keypoints for a detector, boxes for an instance-segmentation model, per-pixel masks or depth
maps for either, boxes or depth maps for a semantic model, anything but 16-bit depth maps for a depth model) is one
clear error instead of a grid of runs that each fail the same way."""

from __future__ import annotations

import os
from pathlib import Path

# Keys of a data YAML that only one task's data has (Ultralytics' own data YAMLs), and that task.
TASK_KEYS = {"kpt_shape": "pose", "masks_dir": "semantic", "depth_scale": "depth"}
# Model tasks that train on YOLO label files (labels/<split>/<image>.txt) and what those rows must hold.
LABELLED_TASKS = {"detect": "boxes or polygons", "obb": "rotated boxes", "segment": "polygons",
                  "pose": "boxes with keypoints"}
SAMPLED_LABEL_FILES = 50  # label files read to tell boxes from polygons (and images whose targets must be there)
SAMPLED_DEPTH_MAPS = 3  # depth maps read to check their format


class DataError(ValueError):
    """The data YAML cannot train the model: missing, unreadable or of another task."""


def model_task(model: str) -> str:
    """The task of a model YAML (a stock name, one of ours or a path), as Ultralytics guesses it."""
    from ultralytics.nn.tasks import guess_model_task
    from ultralytics.utils import YAML

    from ..yamls import find_model_yaml

    return guess_model_task(YAML.load(find_model_yaml(model))) or "detect"


def check_data(data: str, model: str) -> dict:
    """The data YAML ``data``, resolved as Ultralytics resolves it for training (never downloading anything), if
    it can train ``model``; raises :class:`DataError` saying what is wrong otherwise."""
    from ultralytics.data.utils import check_det_dataset

    try:
        resolved = check_det_dataset(data, autodownload=False)
    except Exception as error:  # missing, unreadable, or its images missing: Ultralytics says which
        raise DataError(f"--data {data}: {str(error).strip()}") from None
    task = model_task(model)
    made_for = next((TASK_KEYS[key] for key in TASK_KEYS if key in resolved), None)
    if task in LABELLED_TASKS:
        if made_for is not None and made_for != task:
            raise DataError(f"--data {data} is {made_for} data ({_key_of(made_for)}), but {Path(model).name} is a "
                            f"{task} model: it trains on YOLO label files with {LABELLED_TASKS[task]}")
        if task == "pose" and made_for is None:
            raise DataError(f"--data {data} has no kpt_shape, but {Path(model).name} is a pose model: it needs "
                            "keypoint labels and their kpt_shape")
        files, rows = _label_rows(resolved["train"])
        if not files:
            raise DataError(f"--data {data}: no YOLO label files (labels/.../*.txt) beside its training images, "
                            f"which a {task} model trains on ({Path(model).name}); is it data for another task?")
        if task == "segment" and rows and not any(len(row) > 5 for row in rows):
            raise DataError(f"--data {data} labels boxes only, but {Path(model).name} is an instance-segmentation "
                            "model: it trains on polygon labels (class x1 y1 x2 y2 ...)")
    elif made_for is not None and made_for != task:
        raise DataError(f"--data {data} is {made_for} data ({_key_of(made_for)}), but {Path(model).name} is a "
                        f"{task} model")
    elif task == "semantic":
        _check_semantic(data, resolved, Path(model).name)
    elif task == "depth":
        _check_depth(data, resolved, Path(model).name)
    return resolved


def _check_semantic(data: str, resolved: dict, model: str) -> None:
    """A semantic model trains on class-index PNGs (``masks_dir``) or, without one, on polygon labels (Ultralytics
    rasterises them, with a background class): boxes alone cannot train it."""
    from ultralytics.data.utils import img2label_paths

    if "masks_dir" in resolved:
        images = _first_images(resolved["train"])
        masks = img2label_paths(images, label_dir=resolved["masks_dir"], suffix=".png")
        missing = [mask for mask in masks if not os.path.isfile(mask)]
        if not images or missing:
            raise DataError(f"--data {data}: no class mask {missing[0] if missing else ''} (masks_dir: "
                            f"{resolved['masks_dir']}) for the training images, which {model} trains on")
        return
    files, rows = _label_rows(resolved["train"])
    if not files or not any(len(row) > 5 for row in rows):
        raise DataError(f"--data {data} has no masks_dir and no polygon labels, but {model} is a semantic "
                        "segmentation model: it trains on per-pixel class masks (masks_dir) or on polygons")


def _check_depth(data: str, resolved: dict, model: str) -> None:
    """A depth model trains on a depth map per image, in Ultralytics' layout (``images/...`` -> ``depth/...``, a
    16-bit PNG of ``depth_scale`` units per metre, or a float NPY of metres); one is read as Ultralytics reads it."""
    from ultralytics.data.utils import load_depth

    images = _first_images(resolved["train"])
    maps = [_depth_map_of(image) for image in images]
    missing = [path for path in maps if not path.is_file()]
    if not images or missing:
        raise DataError(f"--data {data}: no depth map {missing[0].with_suffix('.png') if missing else ''} for the "
                        f"training images, which {model} trains on (images/... -> depth/..., .png or .npy)")
    for path in maps[:SAMPLED_DEPTH_MAPS]:
        try:
            load_depth(path, resolved.get("depth_scale", 1000))
        except ValueError as error:
            raise DataError(f"--data {data}: {error} (16-bit PNG of depth_scale units per metre), which {model} "
                            "trains on") from None


def _depth_map_of(image: str) -> Path:
    """Where Ultralytics' depth datasets look for an image's depth map: its path with the last ``images`` folder as
    ``depth``, the PNG if there is one, else the NPY."""
    parts = list(Path(image).parts)
    last = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if last is not None:
        parts[last] = "depth"
    path = Path(*parts).with_suffix(".png")
    return path if path.is_file() else path.with_suffix(".npy")


def _key_of(task: str) -> str:
    return next(f"it has {key}" for key, of in TASK_KEYS.items() if of == task)


def _first_images(train: str | list) -> list[str]:
    """The first images of a training split (image folders or lists of image files)."""
    from ultralytics.data.utils import IMG_FORMATS

    images = []
    for split in train if isinstance(train, list) else [train]:
        split = Path(split)
        if split.is_dir():
            with os.scandir(split) as entries:
                images += sorted(e.path for e in entries if e.name.rsplit(".", 1)[-1].lower() in IMG_FORMATS)
        elif split.is_file():  # a list of image paths, relative to its folder
            lines = split.read_text().splitlines()[:SAMPLED_LABEL_FILES]
            images += [str((split.parent / line.strip()).resolve()) for line in lines if line.strip()]
    return images[:SAMPLED_LABEL_FILES]


def _label_rows(train: str | list) -> tuple[int, list[list[str]]]:
    """How many of the first images of a training split have a label file, and those files' rows."""
    from ultralytics.data.utils import img2label_paths

    labels = [Path(p) for p in img2label_paths(_first_images(train)) if os.path.isfile(p)]
    return len(labels), [line.split() for label in labels for line in label.read_text().splitlines() if line.strip()]

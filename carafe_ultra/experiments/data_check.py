"""A data YAML checked against the model it is to train, before anything runs: missing, unreadable, or made for
another task (pose keypoints for a detector, boxes for an instance-segmentation model, per-pixel masks or depth
maps for either) is one clear error instead of a grid of runs that each fail the same way."""

from __future__ import annotations

import os
from pathlib import Path

# Keys of a data YAML that only one task's data has (Ultralytics' own data YAMLs), and that task.
TASK_KEYS = {"kpt_shape": "pose", "masks_dir": "semantic", "depth_scale": "depth"}
# Model tasks that train on YOLO label files (labels/<split>/<image>.txt) and what those rows must hold.
LABELLED_TASKS = {"detect": "boxes or polygons", "obb": "rotated boxes", "segment": "polygons",
                  "pose": "boxes with keypoints"}
SAMPLED_LABEL_FILES = 50  # label files read to tell boxes from polygons


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
    return resolved


def _key_of(task: str) -> str:
    return next(f"it has {key}" for key, of in TASK_KEYS.items() if of == task)


def _label_rows(train: str | list) -> tuple[int, list[list[str]]]:
    """How many of the first images of a training split (image folders or lists of image files) have a label file,
    and those files' rows."""
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths

    images = []
    for split in train if isinstance(train, list) else [train]:
        split = Path(split)
        if split.is_dir():
            with os.scandir(split) as entries:
                images += sorted(e.path for e in entries if e.name.rsplit(".", 1)[-1].lower() in IMG_FORMATS)
        elif split.is_file():  # a list of image paths, relative to its folder
            lines = split.read_text().splitlines()[:SAMPLED_LABEL_FILES]
            images += [str((split.parent / line.strip()).resolve()) for line in lines if line.strip()]
    labels = [Path(p) for p in img2label_paths(images[:SAMPLED_LABEL_FILES]) if os.path.isfile(p)]
    return len(labels), [line.split() for label in labels for line in label.read_text().splitlines() if line.strip()]

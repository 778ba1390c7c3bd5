"""What the Ultralytics tests share: a tiny generated detection set, the stock model files, the yolo command."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import ultralytics

from carafe_ultra.experiments.data import ShapesSpec, shapes_dataset
from carafe_ultra.experiments.export_parity import confident_rows, match_detections

# A detection set small enough to train on for an epoch in seconds.
TINY_SHAPES = ShapesSpec(train_images=8, val_images=4, image_size=64, objects=(2, 5), object_size=(8, 20))


def tiny_dataset(root: Path) -> str:
    """The tiny generated detection set under ``root``; the path of its data.yaml."""
    return str(shapes_dataset(TINY_SHAPES, root=root))


def tiny_seg_dataset(root: Path, task: str = "segment") -> str:
    """The same scenes' kind with instance masks (polygon labels), or semantic masks or depth maps (``task``): the
    path of its data.yaml."""
    return str(shapes_dataset(replace(TINY_SHAPES, task=task), root=root))


STOCK_MODELS = Path(ultralytics.__file__).parent / "cfg" / "models"
MODELS = Path(__file__).resolve().parents[1] / "models"  # the shipped YAMLs' one source
# The base models we ship that Ultralytics does not (written by hand, with nearest upsampling).
SHIPPED_BASES = {"rtdetr-r18.yaml"}
# Each shipped CARAFE YAML and the file it is converted from (a stock Ultralytics file or one of our bases).
SHIPPED_FROM = {
    "rtdetr-l-carafe.yaml": STOCK_MODELS / "rt-detr" / "rtdetr-l.yaml",
    "rtdetr-x-carafe.yaml": STOCK_MODELS / "rt-detr" / "rtdetr-x.yaml",
    "rtdetr-resnet50-carafe.yaml": STOCK_MODELS / "rt-detr" / "rtdetr-resnet50.yaml",
    "rtdetr-resnet101-carafe.yaml": STOCK_MODELS / "rt-detr" / "rtdetr-resnet101.yaml",
    "yolov8-carafe.yaml": STOCK_MODELS / "v8" / "yolov8.yaml",
    "yolo11-carafe.yaml": STOCK_MODELS / "11" / "yolo11.yaml",
    "yolo12-carafe.yaml": STOCK_MODELS / "12" / "yolo12.yaml",
    "yolo26-carafe.yaml": STOCK_MODELS / "26" / "yolo26.yaml",
    "rtdetr-r18-carafe.yaml": MODELS / "rtdetr-r18.yaml",
}
# Shipped YAMLs with both swaps (CARAFE upsampling and CARAFEDown in the neck), by the stock file they convert.
SHIPPED_BOTH = {
    "rtdetr-l-carafe-both.yaml": STOCK_MODELS / "rt-detr" / "rtdetr-l.yaml",
    "yolo11-carafe-both.yaml": STOCK_MODELS / "11" / "yolo11.yaml",
}
# Shipped YAMLs with CARAFE in the neck and in the task head's own upsampling (the segmentation head's mask branch,
# the semantic and depth decoders), by the stock file they convert.
SHIPPED_HEAD = {
    "yolo11-seg-carafe-head.yaml": STOCK_MODELS / "11" / "yolo11-seg.yaml",
    "yolo26-seg-carafe-head.yaml": STOCK_MODELS / "26" / "yolo26-seg.yaml",
    "yolo26-sem-carafe-head.yaml": STOCK_MODELS / "26" / "yolo26-sem.yaml",
    "yolo26-depth-carafe-head.yaml": STOCK_MODELS / "26" / "yolo26-depth.yaml",
}


YOLO_CLI = str(Path(sys.executable).with_name("yolo"))
ENV = {**os.environ, "YOLO_OFFLINE": "1"}
# What every training, validation and export in the tests shares: tiny, on the CPU, quiet.
COMMON = dict(imgsz=64, batch=4, device="cpu", workers=0, plots=False, exist_ok=True, seed=0)


def yolo(mode: str, cwd: Path, env: dict | None = None, **kwargs) -> str:
    """Run the real ``yolo`` command line with COMMON and ``kwargs`` as key=value arguments; its output."""
    arguments = [f"{k}={v}" for k, v in {**COMMON, **kwargs}.items()]
    run = subprocess.run([YOLO_CLI, mode, *arguments], cwd=cwd, env={**ENV, **(env or {})}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


def output_shapes(output):
    """The shapes of every tensor in a (nested) model output, in order."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if output is None:
        return []
    items = output.values() if isinstance(output, dict) else output
    return [shape for item in items for shape in output_shapes(item)]


def assert_same_queries(want: np.ndarray, got: np.ndarray) -> None:
    """RT-DETR's raw outputs (queries, normalised box + class scores) of two runtimes hold the same queries within
    1e-3, in any order: queries of equal score may come in either order."""
    matched = match_detections(*(confident_rows(rows, 1, min_score=0.0) for rows in (want, got)))
    assert matched is not None and max(matched) <= 1e-3, matched

"""What the ablation measures, per Ultralytics task: the figures it reads from Ultralytics' validation, the one its
verdict is on (and which figures are better lower), and the generated data it trains on. A task is added here, in
one place; the ablation, its data and its report read it."""

from __future__ import annotations

import operator
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One kind of model the ablation compares arms of.

    Attributes:
        name: Ultralytics' task name, which also picks the generated data (``ShapesSpec.task``).
        metrics: report key -> (``RunResult`` field, attribute of Ultralytics' validation metrics), in the report's
            column order; the last is the one the verdict is on.
        data: the generated set's kind, or None if there is none for this task (the user gives ``--data``).
        lower_is_better: the report keys whose smaller values are the better ones (errors such as AbsRel).
    """

    name: str
    metrics: dict[str, tuple[str, str]]
    data: str | None
    lower_is_better: frozenset[str] = frozenset()

    @property
    def verdict_metric(self) -> str:
        """The report key the verdict is made on: the task's own main figure (Ultralytics' fitness metric)."""
        return list(self.metrics)[-1]

    def measure(self, validation) -> dict[str, float]:
        """``RunResult`` field -> value, read from the metrics object ``model.train`` or ``model.val`` returns."""
        return {field: float(operator.attrgetter(path)(validation)) for field, path in self.metrics.values()}


DETECT = Task("detect", {"mAP50": ("mAP50", "box.map50"), "mAP50-95": ("mAP50_95", "box.map")}, "detect")
SEGMENT = Task("segment", {**DETECT.metrics, "mask_mAP50": ("mask_mAP50", "seg.map50"),
                           "mask_mAP50-95": ("mask_mAP50_95", "seg.map")}, "segment")
SEMANTIC = Task("semantic", {"pixel_accuracy": ("pixel_accuracy", "pixel_accuracy"), "mIoU": ("mIoU", "miou")},
                "semantic")
DEPTH = Task("depth", {"AbsRel": ("abs_rel", "abs_rel"), "delta1": ("delta1", "delta1")}, "depth",
             lower_is_better=frozenset({"AbsRel"}))
# Pose and oriented-box models are compared on their boxes, with data of their kind from the user.
TASKS = {"detect": DETECT, "segment": SEGMENT, "semantic": SEMANTIC, "depth": DEPTH,
         "pose": Task("pose", DETECT.metrics, None), "obb": Task("obb", DETECT.metrics, None)}
# Tasks whose heads upsample on their own (carafe_ultra.heads), which the head arms swap.
HEAD_TASKS = ("segment", "semantic", "depth")


def task_of(model: str) -> Task:
    """The task a model YAML trains for; raises ``ValueError`` for one the ablation cannot compare arms of."""
    from .data_check import model_task

    name = model_task(model)
    if name not in TASKS:
        raise ValueError(f"{model} is a {name} model; the ablation compares {', '.join(TASKS)} models")
    return TASKS[name]


def label(key: str) -> str:
    """A report key as the table writes it: ``mask_mAP50-95`` -> ``mask mAP50-95``."""
    return key.replace("_", " ")

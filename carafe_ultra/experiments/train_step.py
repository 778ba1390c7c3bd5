"""What CARAFE costs in training: one optimizer step of an Ultralytics model (forward, loss, backward, step; AMP),
with CARAFE and with nn.Upsample, timed round-robin in one run. Behind the training stage of ``gpu-check``."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..integration import ultralytics_model
from ..yamls import convert_yaml
from .timing import interleaved_seconds, synchronizer

# The models the overhead is measured on: report name -> model YAML (ours, with its CARAFE rows).
MODELS = {"rtdetr_l": "rtdetr-l-carafe.yaml", "yolo11n": "yolo11n-carafe.yaml"}
BOXES_PER_IMAGE = 6


def synthetic_batch(n: int, imgsz: int, classes: int, device: torch.device) -> dict:
    """A detection batch as Ultralytics' loaders hand it to the loss: images in [0, 1] and BOXES_PER_IMAGE
    normalised xywh boxes per image with their classes and image indices."""
    generator = torch.Generator().manual_seed(0)
    boxes = n * BOXES_PER_IMAGE
    centres = 0.2 + 0.6 * torch.rand(boxes, 2, generator=generator)
    sizes = 0.05 + 0.25 * torch.rand(boxes, 2, generator=generator)
    return {"img": torch.rand(n, 3, imgsz, imgsz, generator=generator).to(device),
            "cls": torch.randint(0, classes, (boxes, 1), generator=generator).float().to(device),
            "bboxes": torch.cat([centres, sizes], 1).to(device),
            "batch_idx": torch.arange(n).repeat_interleave(BOXES_PER_IMAGE).float().to(device)}


def training_step(model_yaml: str, device: torch.device, imgsz: int, batch: int) -> Callable[[], None]:
    """One step of ``model_yaml``'s network as Ultralytics' trainer runs it: forward and loss under autocast
    (float16 on CUDA with a gradient scaler; bfloat16 on a CPU), backward, SGD step."""
    from ultralytics.cfg import get_cfg

    model = ultralytics_model(model_yaml).model
    # What the trainer attaches before training (set_model_attributes): the loss reads both.
    model.nc, model.args = len(model.names), get_cfg()
    model.to(device).train()
    data = synthetic_batch(batch, imgsz, model.nc, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16 if cuda else torch.bfloat16):
            loss, _ = model.loss(data)
        scaler.scale(loss.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_step_overheads(device: torch.device, imgsz: int = 640, batch: int = 8, warmup: int = 5,
                         repeats: int = 20) -> dict[str, dict]:
    """For each of MODELS: the median step with CARAFE and with nn.Upsample (ms, the two taking turns after
    ``warmup`` rounds) and CARAFE's overhead, carafe / nearest - 1."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="carafe-train-step-") as folder:
        for name, yaml in MODELS.items():
            steps = {arm: training_step(convert_yaml(yaml, arm, Path(folder) / arm), device, imgsz, batch)
                     for arm in ("carafe", "nearest")}
            samples = interleaved_seconds(steps, repeats, warmup, synchronize=synchronizer(device))
            ms = {arm: 1e3 * statistics.median(times) for arm, times in samples.items()}
            results[name] = {"carafe_ms": ms["carafe"], "nearest_ms": ms["nearest"],
                             "overhead": ms["carafe"] / ms["nearest"] - 1, "imgsz": imgsz, "batch": batch,
                             "repeats": repeats}
    return results

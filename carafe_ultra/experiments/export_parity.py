"""Does an exported model compute what the PyTorch model computes? Ultralytics' own exporter and its AutoBackend
(which runs any format), on a model made confident so that the comparison never hinges on a score near a threshold.
The tensorrt stage of ``gpu-check`` uses it; the export tests compare their formats with the same helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..integration import ultralytics_model
from ..yamls import model_yaml


def confident(model: torch.nn.Module) -> torch.nn.Module:
    """Raise the class-0 logit of every prediction branch by 8 (YOLO: the last conv of each class branch; RT-DETR:
    the decoder's score heads), so that every location detects class 0 with a score near 1."""
    head = model.model[-1]
    if hasattr(head, "dec_score_head"):
        layers = list(head.dec_score_head)
    else:
        layers = [branch[-1] for name in ("cv3", "one2one_cv3") for branch in getattr(head, name, [])]
    if not layers:
        raise ValueError(f"{type(head).__name__} has no class branches to raise")
    with torch.no_grad():
        for layer in layers:
            layer.bias[0] += 8
    return model


def raw_outputs(path: str | Path, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """The model's raw output on ``x``, as Ultralytics' AutoBackend runs it for any format."""
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(str(path), device=device)
    backend.eval()
    with torch.no_grad():
        out = backend(x.to(device))
    out = out[0] if isinstance(out, (list, tuple)) else out
    return np.asarray(out.cpu() if isinstance(out, torch.Tensor) else out, dtype=np.float64)


def match_detections(want: np.ndarray, got: np.ndarray) -> tuple[float, float] | None:
    """Pair two sets of detections one to one (rows x1 y1 x2 y2 score class, or any 4 box values, a score and a
    class), each with the nearest box of the same class; (largest box difference, largest score difference) of the
    pairs, or None when the sets cannot be paired (different sizes, or a class without a partner)."""
    if len(want) != len(got):
        return None
    unused, box, score = list(range(len(got))), 0.0, 0.0
    for row in want:
        distance = [np.abs(got[j, :4] - row[:4]).max() if got[j, 5] == row[5] else np.inf for j in unused]
        if not distance or not np.isfinite(min(distance)):
            return None
        best = int(np.argmin(distance))
        box, score = max(box, distance[best]), max(score, abs(got[unused[best], 4] - row[4]))
        unused.pop(best)
    return box, score


def confident_rows(decoded: np.ndarray, imgsz: int, min_score: float = 0.5) -> np.ndarray:
    """RT-DETR's raw output (queries, 4 normalised box values + class scores) as rows of box in pixels, score and
    class, for the queries that detect with a score of at least ``min_score``."""
    scores = decoded[:, 4:]
    rows = np.concatenate([decoded[:, :4] * imgsz, scores.max(1, keepdims=True), scores.argmax(1)[:, None]], 1)
    return rows[rows[:, 4] >= min_score]


def exported_parity(model: str, fmt: str, device: torch.device, folder: Path, imgsz: int,
                    box_tolerance: float = 0.5, score_tolerance: float = 0.01) -> dict:
    """Export our RT-DETR ``model`` (a shipped YAML, untrained and confident) to ``fmt`` with Ultralytics and compare
    the exported model's detections on a random image with PyTorch's, as sets (query order may differ between
    runtimes): boxes within ``box_tolerance`` pixels and scores within ``score_tolerance``."""
    built = ultralytics_model(model_yaml(model))
    confident(built.model)
    checkpoint = Path(folder) / f"{Path(model).stem}.pt"
    built.save(checkpoint)
    exported = ultralytics_model(checkpoint).export(format=fmt, imgsz=imgsz, batch=1, simplify=False,
                                                    device="cpu" if device.type == "cpu" else device.index or 0)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    want, got = (confident_rows(raw_outputs(path, x, device)[0], imgsz) for path in (checkpoint, exported))
    matched = match_detections(want, got)
    box, score = matched if matched else (float("inf"), float("inf"))
    return {"format": fmt, "imgsz": imgsz, "detections": len(want), "max_box_px": box, "max_score": score,
            "same": matched is not None and len(want) > 0 and box <= box_tolerance and score <= score_tolerance}

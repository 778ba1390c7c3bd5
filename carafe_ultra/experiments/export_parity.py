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


def fixed_instances(model: torch.nn.Module, image: torch.Tensor) -> torch.nn.Module:
    """A YOLO segmentation model (Segment head, DFL boxes) made to predict, at every location, one class-0 instance
    far from every threshold, whose mask is the mask branch's own work: the class branches give class 0 a logit of
    +8 (others -8), every box side lies two strides from its anchor, and every instance's mask coefficients pick one
    prototype, the one positive on the share of ``image`` nearest one half. Only the prototypes (the mask branch,
    its upsampler included) then depend on the input: comparing two runtimes' masks compares their mask branches."""
    head = model.model[-1]
    with torch.no_grad():
        prototypes = []
        hook = head.proto.register_forward_hook(lambda m, args, out: prototypes.append(out))
        model.eval()(image)
        hook.remove()
        positive = (prototypes[0][0] > 0).float().mean((1, 2))
        chosen = int((positive - 0.5).abs().argmin())
        for branch, setting in ((head.cv3, "class"), (head.cv2, "box"), (head.cv4, "mask")):
            for layers in branch:
                conv = layers[-1]
                conv.weight.zero_()
                if setting == "class":
                    conv.bias.fill_(-8)[0] = 8
                elif setting == "box":
                    conv.bias.zero_().view(4, head.reg_max)[:, 2] = 10
                else:
                    conv.bias.zero_()[chosen] = 1
    return model


def spread_outputs(model: torch.nn.Module, images: list[torch.Tensor], spread: float, seed: int = 0
                   ) -> torch.nn.Module:
    """A YOLO semantic or depth model made to predict maps that follow the image at every pixel, for comparing
    runtimes. Untrained, a YOLO's features shrink layer by layer to about 1e-6, so the dense heads output their
    biases: one class, one depth, everywhere. Here the head's last conv (the classifier's; the depth head's, before
    the log-depth clamp) takes a fixed random mix (seeded) of its input channels standardised on ``images`` (batches
    (N, 3, H, W), of any sizes; constant channels left out), each output spreading by about ``spread`` around zero.
    The classes (or depths) change with the features and the upsampler brings them to the image: class margins are
    far above any runtime's float32 rounding except at the few pixels where two classes cross. The weights reach
    about 1e6: keep the model in float32 (Ultralytics' ``save`` would round it to float16)."""
    head = model.model[-1]
    last = head.classifier[-1] if hasattr(head, "classifier") else head.head[-1]
    with torch.no_grad():
        inputs = []
        hook = last.register_forward_hook(lambda m, args, out: inputs.append(args[0].transpose(0, 1).flatten(1)))
        for batch in images:
            model.eval()(batch)
        hook.remove()
        features = torch.cat(inputs, 1)  # (channels, pixels)
        mean, std = features.mean(1), features.std(1)
        live = std > 1e-3 * std.median()  # leave out channels that barely vary
        mix = torch.randn(last.out_channels, last.in_channels, generator=torch.Generator().manual_seed(seed))
        mix *= live * spread / live.sum() ** 0.5
        std = torch.where(live, std, 1.0)
        last.weight.copy_((mix / std).view_as(last.weight))
        last.bias.copy_(-(mix / std) @ mean)
    return model


def class_map(output: np.ndarray) -> np.ndarray:
    """A semantic model's class map (N, H, W) from its output: the baked map itself, or the argmax of its logits
    (N, classes, H, W)."""
    return output.argmax(1) if output.ndim == 4 else output.astype(np.int64)


def raw_outputs(path: str | Path, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """The model's raw output on ``x``, as Ultralytics' AutoBackend runs it for any format."""
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(str(path), device=device)
    backend.eval()
    with torch.no_grad():
        out = backend(x.to(device))
    out = out[0] if isinstance(out, (list, tuple)) else out
    return np.asarray(out.cpu() if isinstance(out, torch.Tensor) else out, dtype=np.float64)


def pair_detections(want: np.ndarray, got: np.ndarray) -> list[int] | None:
    """Pair two sets of detections (rows x1 y1 x2 y2 score class, or any 4 box values, a score and a class) one to
    one, each row of ``want`` in turn with the nearest unpaired box of ``got`` of the same class: the index in
    ``got`` of each row's partner, or None when the sets cannot be paired (different sizes, or a class without a
    partner)."""
    if len(want) != len(got):
        return None
    distance = np.abs(want[:, None, :4] - got[None, :, :4]).max(-1)
    distance[want[:, None, 5] != got[None, :, 5]] = np.inf
    partners = []
    for row in distance:
        best = int(np.argmin(row))
        if not np.isfinite(row[best]):
            return None
        partners.append(best)
        distance[:, best] = np.inf
    return partners


def match_detections(want: np.ndarray, got: np.ndarray) -> tuple[float, float] | None:
    """:func:`pair_detections`' pairs: (largest box difference, largest score difference), or None when the sets
    cannot be paired."""
    partners = pair_detections(want, got)
    if partners is None:
        return None
    if not partners:
        return 0.0, 0.0
    paired = got[partners]
    return float(np.abs(paired[:, :4] - want[:, :4]).max()), float(np.abs(paired[:, 4] - want[:, 4]).max())


def mask_ious(want: np.ndarray, got: np.ndarray, partners: list[int]) -> np.ndarray:
    """The IoU of each mask of ``want`` (N, H, W booleans) with its partner's in ``got``."""
    paired = got[partners]
    union = (want | paired).sum((1, 2))
    return np.where(union > 0, (want & paired).sum((1, 2)) / np.maximum(union, 1), 1.0)


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

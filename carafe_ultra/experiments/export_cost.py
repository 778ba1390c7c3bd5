"""What CARAFE costs in a deployed model: the ONNX nodes it adds, and the exported model's CPU latency with
CARAFE against nn.Upsample in ONNX Runtime and OpenVINO, measured side by side in one run.

Behind ``python -m carafe_ultra benchmark --export``.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..integration import ultralytics_model
from ..module import CARAFE
from ..yamls import convert_yaml
from .timing import interleaved_seconds

ARMS = ("nearest", "carafe")


def _onnx_runner(path: str) -> Callable[[np.ndarray], object]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _openvino_runner(folder: str) -> Callable[[np.ndarray], object]:
    import openvino

    (xml,) = Path(folder).glob("*.xml")
    compiled = openvino.Core().compile_model(str(xml), "CPU")
    return lambda x: compiled([x])


def export_cost(model: str = "yolov8n.yaml", imgsz: int = 640, repeats: int = 30) -> dict:
    """Export ``model`` with nearest upsampling and with CARAFE (untrained: weights do not change the cost) to
    ONNX and OpenVINO; count the ONNX nodes; time one image (batch 1) in each runtime on the CPU, the two arms
    interleaved, medians of ``repeats`` after warm-up."""
    import onnx

    result: dict = {"model": model, "imgsz": imgsz, "repeats": repeats, "onnx_nodes": {}, "latency_ms": {}}
    runners: dict[tuple[str, str], Callable] = {}
    with tempfile.TemporaryDirectory() as folder:
        for arm in ARMS:
            built = ultralytics_model(convert_yaml(model, arm, Path(folder) / arm))
            if arm == "carafe":
                result["carafe_layers"] = sum(isinstance(m, CARAFE) for m in built.model.modules())
            checkpoint = Path(folder) / arm / f"{arm}.pt"
            built.save(checkpoint)  # exports land beside the checkpoint they come from, inside the temporary folder
            exporter = ultralytics_model(checkpoint)
            onnx_path = exporter.export(format="onnx", imgsz=imgsz, batch=1)
            graph = onnx.load(onnx_path).graph
            result["onnx_nodes"][arm] = {"total": len(graph.node), "by_op": dict(Counter(n.op_type for n in graph.node))}
            runners["onnxruntime", arm] = _onnx_runner(onnx_path)
            runners["openvino", arm] = _openvino_runner(exporter.export(format="openvino", imgsz=imgsz, batch=1))
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        samples = interleaved_seconds({key: functools.partial(run, x) for key, run in runners.items()}, repeats,
                                      warmup=3)
    nodes = result["onnx_nodes"]
    result["nodes_added"] = nodes["carafe"]["total"] - nodes["nearest"]["total"]
    result["nodes_per_carafe"] = result["nodes_added"] / result["carafe_layers"] + 1  # each replaces one Resize
    for runtime in ("onnxruntime", "openvino"):
        ms = {arm: 1e3 * statistics.median(samples[runtime, arm]) for arm in ARMS}
        spread = {arm: 1e3 * (max(samples[runtime, arm]) - min(samples[runtime, arm])) for arm in ARMS}
        result["latency_ms"][runtime] = {**ms, "ratio": ms["carafe"] / ms["nearest"], "range_ms": spread}
    return result


def format_export_cost(result: dict) -> str:
    nodes = result["onnx_nodes"]
    lines = [
        f"{Path(result['model']).name} at {result['imgsz']} px, batch 1, CPU: CARAFE against nn.Upsample, exported",
        f"ONNX nodes: {nodes['nearest']['total']} -> {nodes['carafe']['total']} "
        f"(+{result['nodes_added']} for {result['carafe_layers']} CARAFE layers, {result['nodes_per_carafe']:.0f} each)",
    ]
    for runtime, ms in result["latency_ms"].items():
        lines.append(f"{runtime:<12} nearest {ms['nearest']:.1f} ms, carafe {ms['carafe']:.1f} ms "
                     f"({ms['ratio']:.2f}x; medians of {result['repeats']})")
    return "\n".join(lines)

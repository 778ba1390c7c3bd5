"""What CARAFE costs in a deployed model: the ONNX nodes it adds, and the exported model's CPU latency with
CARAFE against nn.Upsample (and with ``heads``, CARAFE in a segmentation head's mask branch too, against the stock
model), in ONNX Runtime, OpenVINO and OpenVINO INT8 (NNCF, calibrated on the generated data).

Two runtimes in one process slow each other (their thread pools compete), so each runtime is timed in a process of
its own, the two arms taking turns inside it; a fresh process per round, several rounds. Per round and arm the
fastest of ``repeats`` runs counts (the most stable figure on a shared machine); the report gives the median over
rounds of those and of the per-round ratio, with the ratio's range. ``--profile`` adds where the time goes: ONNX
Runtime's per-operator profile of the CARAFE model, its CARAFE layers apart.

Behind ``python -m carafe_ultra benchmark --export``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..heads import HEAD_ROWS
from ..integration import ultralytics_model
from ..module import CARAFE
from ..yamls import convert_yaml
from .timing import interleaved_seconds

ARMS = ("nearest", "carafe")
RUNTIMES = ("onnxruntime", "openvino", "openvino-int8")


def _onnx_runner(path: str, profile: bool = False):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling = profile
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session, lambda x: session.run(None, {name: x})


def _openvino_runner(folder: str) -> Callable[[np.ndarray], object]:
    import openvino

    (xml,) = Path(folder).glob("*.xml")
    compiled = openvino.Core().compile_model(str(xml), "CPU")
    return lambda x: compiled([x])


def fastest_ms(runtime: str, paths: dict[str, str], imgsz: int, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` runs of each exported arm in ``runtime``, in this process, the arms taking turns."""
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    runners = {arm: _onnx_runner(path)[1] if runtime == "onnxruntime" else _openvino_runner(path)
               for arm, path in paths.items()}  # both OpenVINO runtimes read the exported folder
    samples = interleaved_seconds({arm: (lambda run=run: run(x)) for arm, run in runners.items()}, repeats, warmup=3)
    return {arm: 1e3 * min(times) for arm, times in samples.items()}


def _timed_in_a_process_of_its_own(runtime: str, paths: dict[str, str], imgsz: int, repeats: int) -> dict[str, float]:
    code = ("import json, sys; from carafe_ultra.experiments.export_cost import fastest_ms; "
            "print(json.dumps(fastest_ms(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))")
    run = subprocess.run([sys.executable, "-c", code, runtime, json.dumps(paths), str(imgsz), str(repeats)],
                         capture_output=True, text=True, timeout=1800)
    if run.returncode:
        raise RuntimeError(f"timing {runtime} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def operator_profile(path: str, imgsz: int, layers: list[str], repeats: int = 10) -> dict:
    """ONNX Runtime's per-operator profile of the model at ``path``: milliseconds per run by operator type, in all
    and within the nodes of ``layers`` (name prefixes such as ``/model.10/``)."""
    session, run = _onnx_runner(path, profile=True)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(repeats):
        run(x)
    written = Path(session.end_profiling())
    events = json.loads(written.read_text())
    written.unlink()
    everything, inside = Counter(), Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            milliseconds = event["dur"] / 1e3 / repeats
            everything[event["args"]["op_name"]] += milliseconds
            if event["name"].startswith(tuple(layers)):
                inside[event["args"]["op_name"]] += milliseconds
    return {"total_ms": sum(everything.values()), "carafe_layers_ms": sum(inside.values()),
            "by_op_ms": dict(everything.most_common()), "carafe_layers_by_op_ms": dict(inside.most_common())}


def _exported(exporter, runtime: str, imgsz: int, onnx_path: str, model: str) -> str:
    """The file or folder ``runtime`` runs, exported from ``exporter`` (of ``model``'s family)."""
    if runtime == "onnxruntime":
        return onnx_path
    if runtime == "openvino":
        return exporter.export(format="openvino", imgsz=imgsz, batch=1)
    from .ablation import default_data
    from .tasks import task_of

    calibration = default_data(imgsz, task=task_of(model).data or "detect")  # boxes, or instance masks
    return exporter.export(format="openvino", imgsz=imgsz, batch=1, int8=True, data=calibration)


def _onnx_scope(name: str) -> str:
    """The prefix of the ONNX node names of the module ``name`` of an Ultralytics network: ``model.10`` ->
    ``/model.10/``, ``model.23.proto.upsample`` -> ``/model.23/proto/upsample/``."""
    row, _, inner = name.partition(".")[2].partition(".")
    return f"/model.{row}/" + "".join(f"{part}/" for part in inner.split(".") if part)


def fake_quantize_count(folder: str) -> int:
    """FakeQuantize nodes in an OpenVINO model folder: where NNCF quantizes."""
    (xml,) = Path(folder).glob("*.xml")
    return xml.read_text().count('type="FakeQuantize"')


def export_cost(model: str = "yolov8n.yaml", imgsz: int = 640, repeats: int = 40, rounds: int = 5,
                runtimes: tuple[str, ...] = RUNTIMES, profile: bool = False, heads: bool | str = False) -> dict:
    """Export ``model`` with nearest upsampling and with CARAFE (untrained: weights do not change the cost; with
    ``heads`` CARAFE in the task head's own upsampling too (a segmentation head's mask branch, the semantic or depth
    decoder), or with ``heads="only"`` there alone, the stock model against it) for each of ``runtimes``; count the
    ONNX nodes (and the INT8 model's FakeQuantize nodes); time one image (batch 1) in each runtime on the CPU as the
    module docstring says; with ``profile``, ONNX Runtime's per-operator profile of the CARAFE model."""
    import onnx

    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown or not runtimes:
        raise ValueError(f"runtimes must be among {', '.join(RUNTIMES)}; got {', '.join(unknown) or 'none'}")
    result: dict = {"model": model, "heads": heads, "imgsz": imgsz, "repeats": repeats, "rounds": rounds,
                    "onnx_nodes": {}, "latency_ms": {}}
    paths: dict[str, dict[str, str]] = {runtime: {} for runtime in runtimes}
    onnx_files: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        for arm in ARMS:
            if arm == "carafe" and heads == "only":
                converted = convert_yaml(model, None, Path(folder) / arm, heads="carafe")
            else:
                converted = convert_yaml(model, arm, Path(folder) / arm, heads=bool(heads) and arm == "carafe")
            built = ultralytics_model(converted)
            if arm == "carafe":  # ONNX names a layer's nodes after its place: /model.10/..., /model.23/proto/upsample/...
                layers = [_onnx_scope(name) for name, m in built.model.named_modules() if isinstance(m, CARAFE)]
                result["carafe_layers"] = len(layers)
                if heads:  # what the head's upsampling is called: the mask branch, the semantic or depth decoder
                    result["head_part"] = HEAD_ROWS[type(built.model.model[-1]).__name__].part
            checkpoint = Path(folder) / arm / f"{arm}.pt"
            built.save(checkpoint)  # exports land beside the checkpoint they come from, inside the temporary folder
            exporter = ultralytics_model(checkpoint)
            onnx_path = onnx_files[arm] = exporter.export(format="onnx", imgsz=imgsz, batch=1)
            graph = onnx.load(onnx_path).graph
            result["onnx_nodes"][arm] = {"total": len(graph.node),
                                         "by_op": dict(Counter(node.op_type for node in graph.node))}
            for runtime in runtimes:
                paths[runtime][arm] = _exported(exporter, runtime, imgsz, onnx_path, model)
        if "openvino-int8" in runtimes:
            result["fake_quantize"] = {arm: fake_quantize_count(paths["openvino-int8"][arm]) for arm in ARMS}
        if any(runtime.startswith("openvino") for runtime in runtimes):
            import openvino

            result["openvino_precision"] = str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
        for runtime in runtimes:
            per_round = [_timed_in_a_process_of_its_own(runtime, paths[runtime], imgsz, repeats) for _ in range(rounds)]
            ratios = [ms["carafe"] / ms["nearest"] for ms in per_round]
            result["latency_ms"][runtime] = {
                **{arm: statistics.median(ms[arm] for ms in per_round) for arm in ARMS},
                "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)], "per_round": per_round}
        if profile:
            result["profile"] = operator_profile(onnx_files["carafe"], imgsz, layers)
    nodes = result["onnx_nodes"]
    result["nodes_added"] = nodes["carafe"]["total"] - nodes["nearest"]["total"]
    if not heads:  # each replaces one Resize (the mask branch's replaces a ConvTranspose)
        result["nodes_per_carafe"] = result["nodes_added"] / result["carafe_layers"] + 1
    return result


def int8_accuracy(weights: list[str], data: str, imgsz: int | None = None) -> list[dict]:
    """Each trained checkpoint exported to OpenVINO FP32 and to OpenVINO INT8 (NNCF, calibrated on ``data``, as
    ``yolo export format=openvino int8=True data=...`` does), both validated on ``data``'s validation split at
    ``imgsz`` (default: the size each was trained at): the figures of its task (:mod:`.tasks`: mAP50 and mAP50-95
    for detection, pixel accuracy and mIoU for semantic segmentation, ...), and what INT8 loses on the task's own
    (``int8_loss_<figure>``: FP32 minus INT8)."""
    from .tasks import TASKS

    for path in weights:  # before any export: a task without figures to read (classify) fails at once
        task = ultralytics_model(path).task
        if task not in TASKS:
            raise ValueError(f"{path} is a {task} model; --int8-accuracy validates {', '.join(TASKS)} models")
    results = []
    for path in map(Path, weights):
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = Path(folder) / path.name  # exports land beside the checkpoint: in the temporary folder
            shutil.copy(path, checkpoint)
            exporter = ultralytics_model(checkpoint)
            task = TASKS[exporter.task]
            size = imgsz or int(exporter.ckpt["train_args"]["imgsz"])
            row: dict = {"weights": str(path), "task": task.name, "imgsz": size}
            for precision, options in (("fp32", {}), ("int8", {"int8": True, "data": data})):
                exported = exporter.export(format="openvino", imgsz=size, batch=1, **options)
                metrics = ultralytics_model(exported).val(data=data, imgsz=size, batch=1, device="cpu", plots=False,
                                                          verbose=False)
                row[precision] = task.measure(metrics)
        figure = task.metrics[task.verdict_metric][0]
        row[f"int8_loss_{figure}"] = row["fp32"][figure] - row["int8"][figure]
        results.append(row)
    return results


def format_int8_accuracy(rows: list[dict]) -> str:
    """A markdown table of :func:`int8_accuracy`'s rows (of one task: its figures are the columns)."""
    from .tasks import TASKS, label

    task = TASKS[rows[0]["task"]]
    figures = {label(key): field for key, (field, _) in task.metrics.items()}
    verdict = task.metrics[task.verdict_metric][0]
    header = [f"{precision} {name}" for precision in ("FP32", "INT8") for name in figures]
    lines = [f"| weights | imgsz | {' | '.join(header)} | INT8 loss ({label(task.verdict_metric)}) |",
             "|---" * (len(header) + 3) + "|"]
    for row in rows:
        values = [f"{row[precision][field]:.4f}" for precision in ("fp32", "int8") for field in figures.values()]
        lines.append(f"| {row['weights']} | {row['imgsz']} | {' | '.join(values)} | "
                     f"{row[f'int8_loss_{verdict}']:+.4f} |")
    return "\n".join(lines)


def format_export_cost(result: dict) -> str:
    nodes = result["onnx_nodes"]
    part = result.get("head_part")
    against = {True: f"CARAFE in the neck and the {part} against the stock model",
               "only": f"CARAFE in the {part} against the stock model"}.get(result.get("heads"),
                                                                          "CARAFE against nn.Upsample")
    lines = [
        f"{Path(result['model']).name} at {result['imgsz']} px, batch 1, CPU: {against}, exported; "
        f"each runtime in a process of its own, fastest of {result['repeats']} runs, median of {result['rounds']} "
        "rounds [range of the per-round ratio]",
        f"ONNX nodes: {nodes['nearest']['total']} -> {nodes['carafe']['total']} "
        f"(+{result['nodes_added']} for {result['carafe_layers']} CARAFE layers"
        + (f", {result['nodes_per_carafe']:.0f} each)" if "nodes_per_carafe" in result else ")"),
    ]
    if "openvino_precision" in result:
        lines.append(f"OpenVINO CPU inference precision (its default here): {result['openvino_precision']}")
    if "fake_quantize" in result:
        counts = ", ".join(f"{arm} {count}" for arm, count in result["fake_quantize"].items())
        lines.append(f"OpenVINO INT8 FakeQuantize nodes: {counts}")
    for runtime, ms in result["latency_ms"].items():
        low, high = ms["ratio_range"]
        lines.append(f"{runtime:<13} nearest {ms['nearest']:.1f} ms, carafe {ms['carafe']:.1f} ms: "
                     f"{ms['ratio']:.2f}x [{low:.2f}-{high:.2f}]")
    if "profile" in result:
        profile = result["profile"]
        top = ", ".join(f"{op} {ms:.2f}" for op, ms in list(profile["carafe_layers_by_op_ms"].items())[:6])
        lines.append(f"ONNX Runtime profile of the CARAFE model: {profile['total_ms']:.1f} ms of operators, "
                     f"{profile['carafe_layers_ms']:.1f} ms in its CARAFE layers ({top} ms)")
    return "\n".join(lines)

"""Exports that users deploy to, through the real `yolo export`: ONNX, OpenVINO and NCNN run here and must predict
what the PyTorch model predicts (detections; a seg model's boxes and masks; a semantic model's class map; a depth
model's map); CoreML must convert (running it needs macOS). And checkpoints load with ULTRALYTICS_SAFE_LOAD=1.

Predictions are compared on models whose class-0 logits are raised by 8 everywhere (``export_parity.confident``), so
every location detects class 0 with a score near 1 and far from any threshold: two runtimes then differ only where
their numbers do, never by a detection crossing the threshold. Boxes must agree within BOX_TOLERANCE pixels (on
64 px images) and scores within SCORE_TOLERANCE. OpenVINO runs in bfloat16 on CPUs that support it, the loosest of
the three; the tolerances cover it (the seg and dense comparisons ask it for float32). The seg and dense models are
set up likewise, each in its section.
"""

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from carafe_ultra import convert_yaml, model_yaml
from carafe_ultra.experiments import export_parity
from carafe_ultra.experiments.export_parity import confident, match_detections
from carafe_ultra.integration import ultralytics_model
from tests.ultralytics_helpers import tiny_dataset, tiny_seg_dataset, yolo

BOX_TOLERANCE = 0.5  # pixels
SCORE_TOLERANCE = 0.01
CPU = torch.device("cpu")


def needs(package):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"needs {package} (the export extra)")


# Every format the export tests compare in, CoreML converted only (running it needs macOS).
EVERY_FORMAT = ["onnx", "torchscript", pytest.param("openvino", marks=needs("openvino")),
                pytest.param("ncnn", marks=[needs("ncnn"), needs("pnnx")]),
                pytest.param("coreml", marks=needs("coremltools"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def val_images(data):
    return sorted((Path(data).parent / "images" / "val").glob("*.png"))


@pytest.fixture(scope="module")
def yolo26(data, tmp_path_factory):
    """YOLO26n-CARAFE trained, validated and exported with the yolo command; then a confident copy of it."""
    project = tmp_path_factory.mktemp("yolo26")
    yolo("train", project, model=model_yaml("yolo26n-carafe.yaml"), data=data, epochs=1, project=project, name="run")
    best = project / "run" / "weights" / "best.pt"
    assert "all" in yolo("val", project, model=best, data=data, project=project, name="val")
    yolo("export", project, model=best, format="onnx", batch=1)
    assert best.with_suffix(".onnx").stat().st_size > 1_000_000
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    confident(checkpoint["model"])
    torch.save(checkpoint, project / "confident.pt")
    return project / "confident.pt"


@pytest.fixture(scope="module")
def yolo11_both(data, tmp_path_factory):
    """YOLO11n with both swaps (CARAFE upsampling, CARAFEDown in the neck) trained and validated with the yolo
    command; then a confident copy of it."""
    project = tmp_path_factory.mktemp("yolo11-both")
    yolo("train", project, model=model_yaml("yolo11n-carafe-both.yaml"), data=data, epochs=1, project=project,
         name="run")
    best = project / "run" / "weights" / "best.pt"
    assert "all" in yolo("val", project, model=best, data=data, project=project, name="val")
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    confident(checkpoint["model"])
    torch.save(checkpoint, project / "confident.pt")
    return project / "confident.pt"


@pytest.fixture(scope="module")
def rtdetr(tmp_path_factory):
    """An RT-DETR-l-CARAFE checkpoint (untrained, confident), saved the way Ultralytics saves models."""
    folder = tmp_path_factory.mktemp("rtdetr")
    model = ultralytics_model(model_yaml("rtdetr-l-carafe.yaml"))
    confident(model.model)
    model.save(folder / "rtdetr-l-carafe.pt")
    return folder / "rtdetr-l-carafe.pt"


def export(checkpoint: Path, fmt: str, **options) -> str:
    """``yolo export`` of a checkpoint (with ``options`` such as imgsz); the exported file or folder, as Ultralytics
    names it."""
    out = yolo("export", checkpoint.parent, model=checkpoint, format=fmt, batch=1, **options)
    suffix = {"onnx": ".onnx", "openvino": "_openvino_model", "ncnn": "_ncnn_model", "coreml": ".mlpackage",
              "torchscript": ".torchscript"}[fmt]
    exported = checkpoint.with_name(checkpoint.stem + suffix)
    assert exported.exists(), out[-2000:]
    return str(exported) + ("/" if exported.is_dir() else "")


def raw_outputs(path, x: torch.Tensor) -> np.ndarray:
    return export_parity.raw_outputs(path, x, CPU)


def assert_same_detections(want: np.ndarray, got: np.ndarray) -> None:
    """Two sets of detections (x1, y1, x2, y2, score, class rows) are the same: every detection has a partner of
    the same class with boxes within BOX_TOLERANCE and scores within SCORE_TOLERANCE, one to one."""
    matched = match_detections(want, got)
    assert len(want) > 0 and matched is not None, (want, got)
    assert matched[0] <= BOX_TOLERANCE and matched[1] <= SCORE_TOLERANCE, (matched, want, got)


def detections(model_path, images) -> list[np.ndarray]:
    """Ultralytics' own predictions, per image (all detections: IoU 1 suppresses only identical boxes)."""
    results = ultralytics_model(model_path).predict(images, imgsz=64, conf=0.5, iou=1.0, verbose=False, device="cpu")
    return [result.boxes.data.cpu().numpy().astype(np.float64) for result in results]


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("openvino", marks=needs("openvino")),
                                 pytest.param("ncnn", marks=[needs("ncnn"), needs("pnnx")])])
def test_yolo26_exports_predict_what_pytorch_predicts(fmt, yolo26, data):
    exported = export(yolo26, fmt)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want, got = raw_outputs(str(yolo26), x), raw_outputs(exported, x)
    assert want.shape == got.shape  # (1, 4 + classes, locations): the same order in every runtime
    assert np.abs(got[:, :4] - want[:, :4]).max() <= BOX_TOLERANCE
    assert np.abs(got[:, 4:] - want[:, 4:]).max() <= SCORE_TOLERANCE
    for want_image, got_image in zip(detections(yolo26, val_images(data)), detections(exported, val_images(data)),
                                     strict=True):
        assert_same_detections(want_image, got_image)


@pytest.mark.parametrize("fmt", EVERY_FORMAT)
def test_carafe_down_exports_predict_what_pytorch_predicts(fmt, yolo11_both, data):
    exported = export(yolo11_both, fmt)
    if fmt == "coreml":  # converts; running it needs macOS
        assert (Path(exported) / "Manifest.json").is_file()
        return
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want, got = raw_outputs(str(yolo11_both), x), raw_outputs(exported, x)
    assert want.shape == got.shape
    assert np.abs(got[:, :4] - want[:, :4]).max() <= BOX_TOLERANCE
    assert np.abs(got[:, 4:] - want[:, 4:]).max() <= SCORE_TOLERANCE
    for want_image, got_image in zip(detections(yolo11_both, val_images(data)),
                                     detections(exported, val_images(data)), strict=True):
        assert_same_detections(want_image, got_image)


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("openvino", marks=needs("openvino"))])
def test_rtdetr_exports_predict_the_same_set_of_detections(fmt, rtdetr, data):
    exported = export(rtdetr, fmt)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want, got = raw_outputs(str(rtdetr), x)[0], raw_outputs(exported, x)[0]  # (queries, cx cy w h score class)
    confident_rows = [rows[rows[:, 4] >= 0.5] for rows in (want, got)]  # the class-0 queries
    assert_same_detections(*confident_rows)  # query order may differ between runtimes: compare as sets
    for want_image, got_image in zip(detections(rtdetr, val_images(data)), detections(exported, val_images(data)),
                                     strict=True):
        assert_same_detections(want_image, got_image)


@needs("coremltools")
def test_coreml_conversion(yolo26):
    package = Path(export(yolo26, "coreml").rstrip("/"))
    assert (package / "Manifest.json").is_file()
    assert sum(f.stat().st_size for f in package.rglob("*") if f.is_file()) > 1_000_000  # the weights are in it


def test_safe_loading_validates_a_carafe_checkpoint(yolo26, data):
    out = yolo("val", yolo26.parent, env={"ULTRALYTICS_SAFE_LOAD": "1"}, model=yolo26, data=data,
               project=yolo26.parent, name="safe")
    assert "all" in out and "Unsupported global" not in out


SAFE_LOAD = ("import sys\n"
             "from ultralytics.nn.tasks import torch_safe_load\n"
             "checkpoint, _ = torch_safe_load(sys.argv[1], safe_only=True)\n"
             "ours = {'BasicBlock', 'CARAFE', 'CARAFEDown', 'DySample', 'EUCB', 'ResNetBasicLayer'}\n"
             "print(sorted({type(m).__name__ for m in checkpoint['model'].modules()} & ours))\n")


@pytest.mark.parametrize("model,upsampler,downsample,loaded", [
    ("yolov8n.yaml", "carafe", False, "['CARAFE']"), ("yolov8n.yaml", "dysample", False, "['DySample']"),
    ("yolov8n.yaml", "eucb", False, "['EUCB']"), ("yolo11n.yaml", "carafe", True, "['CARAFE', 'CARAFEDown']"),
    ("rtdetr-r18.yaml", "carafe", False, "['BasicBlock', 'CARAFE', 'ResNetBasicLayer']")])
def test_safe_loading_in_a_fresh_process(model, upsampler, downsample, loaded, tmp_path):
    path = tmp_path / f"{upsampler}.pt"
    ultralytics_model(convert_yaml(model, upsampler, tmp_path, downsample=downsample)).save(path)
    run = subprocess.run([sys.executable, "-c", SAFE_LOAD, str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith(loaded), run.stderr[-3000:]
    # Without the registration (which puts our classes on the allow-list), the same load is refused.
    unregistered = subprocess.run([sys.executable, "-c", SAFE_LOAD, str(path)], capture_output=True, text=True,
                                  timeout=300, env={**os.environ, "CARAFE_ULTRA_AUTOREGISTER": "0"})
    assert unregistered.returncode != 0 and "outside the supported Ultralytics checkpoint format" in unregistered.stderr


def test_carafe_exports_to_onnx_as_one_gather_and_two_matmuls_per_layer(tmp_path):
    import onnx

    model = ultralytics_model(model_yaml("yolov8n-carafe.yaml"))
    model.save(tmp_path / "carafe.pt")
    graph = onnx.load(ultralytics_model(tmp_path / "carafe.pt").export(format="onnx", imgsz=64)).graph
    for layer in (10, 13):  # the CARAFE rows of yolov8.yaml
        ops = Counter(node.op_type for node in graph.node if node.name.startswith(f"/model.{layer}/"))
        # The windows' Gather, the masks' band (a product with a 0/1 constant) and the contraction over the taps.
        assert ops["MatMul"] == 2 and ops["Gather"] == 1, ops
        assert ops["Mul"] == ops["Resize"] == 0, ops  # no tap-by-tap multiply-adds, no upsampled copy


@pytest.mark.parametrize("downsample", [False, True], ids=["carafe", "carafe-both"])
def test_dynamic_onnx_export_agrees_with_pytorch_at_every_size(downsample, tmp_path):
    import onnxruntime

    model = ultralytics_model(convert_yaml("yolov8n.yaml", "carafe", tmp_path, {"groups": 2}, downsample=downsample))
    model.save(tmp_path / "carafe.pt")
    network = ultralytics_model(tmp_path / "carafe.pt").model.float().eval().fuse()
    path = ultralytics_model(tmp_path / "carafe.pt").export(format="onnx", imgsz=64, dynamic=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 64, 64), (2, 3, 64, 96), (1, 3, 96, 32)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = network(x)[0].numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), shape


@needs("nncf")
def test_openvino_int8_export_runs_and_keeps_the_reassembly_in_floating_point(data, tmp_path):
    import openvino

    ultralytics_model(model_yaml("yolov8n-carafe.yaml")).save(tmp_path / "carafe.pt")
    model = int8_model(export_int8(tmp_path / "carafe.pt", data), carafe_layers=2)
    compiled = openvino.Core().compile_model(model, "CPU")  # in the CPU's default precision (bfloat16 where it has it)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    out = compiled([x])[0]
    assert out.shape == (1, 84, 84) and np.isfinite(out).all()


def export_int8(checkpoint: Path, data: str, **options) -> str:
    out = yolo("export", checkpoint.parent, model=checkpoint, format="openvino", batch=1, int8=True, data=data,
               **options)
    exported = checkpoint.with_name(checkpoint.stem + "_int8_openvino_model")
    assert exported.is_dir(), out[-2000:]
    return str(exported)


def int8_model(folder: str, carafe_layers: int):
    """The INT8 OpenVINO model in ``folder``, checked to keep each CARAFE layer's reassembly in floating point: its
    two Einsums (the masks' band, the contraction) as they were, no FakeQuantize within two steps (reshapes,
    transposes) of their inputs."""
    import openvino

    model = openvino.Core().read_model(next(Path(folder).glob("*.xml")))
    einsums = [op for op in model.get_ordered_ops() if op.get_type_name() == "Einsum"]
    assert len(einsums) == 2 * carafe_layers
    for einsum in einsums:
        sources = [i.get_source_output().get_node() for i in einsum.inputs()]
        sources += [i.get_source_output().get_node() for node in sources for i in node.inputs()]
        assert not any(node.get_type_name() == "FakeQuantize" for node in sources)
    return model


@needs("nncf")
def test_int8_accuracy_validates_both_exports_of_a_trained_model(yolo26, data):
    from carafe_ultra.experiments.export_cost import format_int8_accuracy, int8_accuracy

    trained = yolo26.parent / "run" / "weights" / "best.pt"
    (row,) = int8_accuracy([str(trained)], data)
    assert row["imgsz"] == 64  # the size it was trained at
    for precision in ("fp32", "int8"):
        assert 0 <= row[precision]["mAP50_95"] <= row[precision]["mAP50"] <= 1
    assert row["int8_loss_mAP50_95"] == row["fp32"]["mAP50_95"] - row["int8"]["mAP50_95"]
    # The FP32 export validates as the PyTorch model does (the same detections up to bfloat16).
    pytorch = ultralytics_model(trained).val(data=data, imgsz=64, batch=1, device="cpu", plots=False, verbose=False)
    assert abs(row["fp32"]["mAP50_95"] - float(pytorch.box.map)) <= 0.02
    assert format_int8_accuracy([row]).count("\n") == 2


# --- instance segmentation: YOLO11n-seg with CARAFE in the neck and the mask branch -------------------------------

SEG_IMGSZ = 128


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    return tiny_seg_dataset(tmp_path_factory.mktemp("seg-data"))


def seg_images(data) -> list[Path]:
    return sorted(Path(data).parent.glob("images/*/*.png"))


@pytest.fixture(scope="module")
def yolo11_seg(seg_data, tmp_path_factory):
    """YOLO11n-seg-carafe-head (untrained) whose instances are fixed far from every threshold
    (``export_parity.fixed_instances``): its masks are then its mask branch's work alone."""
    import cv2

    folder = tmp_path_factory.mktemp("seg")
    model = ultralytics_model(model_yaml("yolo11n-seg-carafe-head.yaml"))
    image = cv2.resize(cv2.imread(str(seg_images(seg_data)[0])), (SEG_IMGSZ, SEG_IMGSZ))[..., ::-1]
    export_parity.fixed_instances(model.model, torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)
    model.save(folder / "seg.pt")
    return folder / "seg.pt"


def instances(path, images, imgsz: int = SEG_IMGSZ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ultralytics' own predictions per image: boxes (x1 y1 x2 y2 score class rows) and masks (booleans at the
    image's size), every instance kept (IoU 1 suppresses only identical boxes)."""
    results = ultralytics_model(path).predict(images, imgsz=imgsz, conf=0.5, iou=1.0, max_det=10_000, verbose=False,
                                              device="cpu")
    return [(r.boxes.data.cpu().numpy().astype(np.float64), r.masks.data.cpu().numpy() > 0.5) for r in results]


def assert_same_instances(want: list, got: list) -> None:
    """Every instance has a partner (boxes within BOX_TOLERANCE pixels) whose mask covers its mask with IoU >= 0.99."""
    for (want_boxes, want_masks), (got_boxes, got_masks) in zip(want, got, strict=True):
        partners = export_parity.pair_detections(want_boxes, got_boxes)
        assert len(want_boxes) > 50 and partners is not None, (len(want_boxes), len(got_boxes))
        assert np.abs(got_boxes[partners, :4] - want_boxes[:, :4]).max() <= BOX_TOLERANCE
        ious = export_parity.mask_ious(want_masks, got_masks, partners)
        assert ious.min() >= 0.99 and want_masks.sum((1, 2)).min() > 0, (ious.min(), np.sort(ious)[:5])


@pytest.fixture
def openvino_in_float32(monkeypatch):
    """OpenVINO's CPU plugin runs FP32 models in bfloat16 where the CPU has it (AMX): parity with PyTorch is asked of
    the exported model, in the precision it holds."""
    import openvino

    class Float32Core(openvino.Core):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.set_property("CPU", {"INFERENCE_PRECISION_HINT": openvino.Type.f32})

    monkeypatch.setattr(openvino, "Core", Float32Core)


def export_to_run(checkpoint: Path, fmt: str, imgsz: int, request) -> str | None:
    """:func:`export` at ``imgsz``, ready to compare with PyTorch: None for CoreML, checked to have converted (running
    it needs macOS); OpenVINO set to run in float32 (``openvino_in_float32``)."""
    exported = export(checkpoint, fmt, imgsz=imgsz)
    if fmt == "coreml":
        assert (Path(exported) / "Manifest.json").is_file()
        return None
    if fmt == "openvino":
        request.getfixturevalue("openvino_in_float32")
    return exported


@pytest.mark.parametrize("fmt", EVERY_FORMAT)
def test_seg_exports_predict_the_boxes_and_masks_pytorch_predicts(fmt, yolo11_seg, seg_data, request):
    exported = export_to_run(yolo11_seg, fmt, SEG_IMGSZ, request)
    if exported is None:
        return
    images = seg_images(seg_data)
    assert_same_instances(instances(yolo11_seg, images), instances(exported, images))


def test_dynamic_seg_onnx_export_predicts_what_pytorch_predicts_at_every_size(yolo11_seg, seg_data):
    path = ultralytics_model(yolo11_seg).export(format="onnx", imgsz=SEG_IMGSZ, dynamic=True)
    images = seg_images(seg_data)[:4]
    for imgsz in (96, 160):
        assert_same_instances(instances(yolo11_seg, images, imgsz), instances(path, images, imgsz))


@needs("nncf")
def test_openvino_int8_seg_export_runs_and_keeps_the_reassembly_in_floating_point(yolo11_seg, seg_data):
    import openvino

    # CARAFE layers: the neck's two and the mask branch's
    model = int8_model(export_int8(yolo11_seg, seg_data, imgsz=SEG_IMGSZ), carafe_layers=3)
    compiled = openvino.Core().compile_model(model, "CPU")
    outputs = compiled([np.random.default_rng(0).random((1, 3, SEG_IMGSZ, SEG_IMGSZ), dtype=np.float32)])
    detections, prototypes = (outputs[port] for port in compiled.outputs)
    locations = sum((SEG_IMGSZ // stride) ** 2 for stride in (8, 16, 32))
    assert detections.shape == (1, 4 + 80 + 32, locations)
    assert prototypes.shape == (1, 32, SEG_IMGSZ // 4, SEG_IMGSZ // 4)
    assert np.isfinite(detections).all() and np.isfinite(prototypes).all()


# --- the dense heads: YOLO26n-depth and YOLO26n-sem with CARAFE in the neck and the head --------------------------
# Untrained, their maps are constant (the heads output their biases), so the models are first made to map the image
# (``export_parity.spread_outputs``, standardised on images of every size the tests use, from a seeded start).

DENSE_IMGSZ = 96  # the static exports'
DYNAMIC_SIZES = (64, 160)  # the dynamic ONNX exports' other sizes
DEPTH_RTOL = 1e-3
SAME_PIXELS = 0.999  # the share of pixels whose class must agree


def dense_input(imgsz: int) -> torch.Tensor:
    return torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(imgsz))


def mapping_model(yaml: str, path: Path, spread: float) -> Path:
    """The shipped ``yaml`` (untrained, seeded) made to map the image, saved as Ultralytics saves models but in
    float32 (``spread_outputs``' weights are past float16's range)."""
    torch.manual_seed(0)
    model = ultralytics_model(model_yaml(yaml))
    export_parity.spread_outputs(model.model, [dense_input(s) for s in (DENSE_IMGSZ, *DYNAMIC_SIZES)], spread)
    model.save(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    torch.save({**checkpoint, "model": model.model.float()}, path)
    return path


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    return mapping_model("yolo26n-depth-carafe-head.yaml", tmp_path_factory.mktemp("depth") / "depth.pt", spread=0.5)


def pytorch_depth(checkpoint: Path, x: torch.Tensor) -> np.ndarray:
    """PyTorch's depth at the image's size: its eval output is at stride 4, and the export resizes it to the image
    as the stock head does. Checked to vary: a log-depth spread of at least 0.05, at most 5% of pixels clamped."""
    out = torch.from_numpy(raw_outputs(checkpoint, x))
    depth = torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True).numpy()
    log_depth = np.log(depth)
    assert log_depth.std() >= 0.05 and ((log_depth < -3.999) | (log_depth > 4.999)).mean() <= 0.05, log_depth
    return depth


@pytest.mark.parametrize("fmt", EVERY_FORMAT)
def test_depth_exports_compute_what_pytorch_computes(fmt, depth_model, request):
    exported = export_to_run(depth_model, fmt, DENSE_IMGSZ, request)
    if exported is None:
        return
    x = dense_input(DENSE_IMGSZ)
    np.testing.assert_allclose(raw_outputs(exported, x), pytorch_depth(depth_model, x), rtol=DEPTH_RTOL, atol=0)


def test_dynamic_depth_onnx_export_computes_what_pytorch_computes_at_every_size(depth_model):
    path = ultralytics_model(depth_model).export(format="onnx", imgsz=DENSE_IMGSZ, dynamic=True)
    for imgsz in DYNAMIC_SIZES:
        x = dense_input(imgsz)
        np.testing.assert_allclose(raw_outputs(path, x), pytorch_depth(depth_model, x), rtol=DEPTH_RTOL, atol=0)


@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    return mapping_model("yolo26n-sem-carafe-head.yaml", tmp_path_factory.mktemp("semantic") / "semantic.pt", spread=4)


def assert_same_class_maps(want: np.ndarray, got: np.ndarray) -> None:
    """Two runtimes' class maps agree on SAME_PIXELS of the pixels, and the maps are not trivial: at least three
    classes cover 1% of the image each."""
    want, got = export_parity.class_map(want), export_parity.class_map(got)
    assert want.shape == got.shape, (want.shape, got.shape)
    shares = np.bincount(want.ravel()) / want.size
    assert (shares >= 0.01).sum() >= 3, shares
    assert (want == got).mean() >= SAME_PIXELS, (want == got).mean()


@pytest.mark.parametrize("fmt", EVERY_FORMAT)
def test_semantic_exports_predict_the_class_map_pytorch_predicts(fmt, semantic_model, request):
    exported = export_to_run(semantic_model, fmt, DENSE_IMGSZ, request)
    if exported is None:
        return
    x = dense_input(DENSE_IMGSZ)
    got = raw_outputs(exported, x)
    if fmt in ("onnx", "openvino"):  # the class map baked in, as the stock head bakes it
        assert got.shape == (1, DENSE_IMGSZ, DENSE_IMGSZ)
    assert_same_class_maps(raw_outputs(semantic_model, x), got)


def test_dynamic_semantic_onnx_export_predicts_the_class_map_pytorch_predicts_at_every_size(semantic_model):
    path = ultralytics_model(semantic_model).export(format="onnx", imgsz=DENSE_IMGSZ, dynamic=True)
    for imgsz in DYNAMIC_SIZES:
        x = dense_input(imgsz)
        assert_same_class_maps(raw_outputs(semantic_model, x), raw_outputs(path, x))


@needs("nncf")
@pytest.mark.parametrize("task, carafe_layers, shape", [("semantic", 3, (1, DENSE_IMGSZ, DENSE_IMGSZ)),
                                                         ("depth", 5, (1, 1, DENSE_IMGSZ, DENSE_IMGSZ))])
def test_openvino_int8_dense_exports_run_and_keep_the_reassembly_in_floating_point(task, carafe_layers, shape,
                                                                                  request, tmp_path):
    """Calibrated on the generated set of the task; CARAFE layers: the neck's two, and the semantic head's one or the
    depth decoder's three."""
    import openvino

    checkpoint = request.getfixturevalue(f"{task}_model")
    model = int8_model(export_int8(checkpoint, tiny_seg_dataset(tmp_path, task), imgsz=DENSE_IMGSZ), carafe_layers)
    (out,) = openvino.Core().compile_model(model, "CPU")([dense_input(DENSE_IMGSZ).numpy()]).values()
    assert out.shape == shape and np.isfinite(out).all()

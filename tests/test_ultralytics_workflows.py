"""Every Ultralytics workflow with CARAFE models, through the real `yolo` CLI and the Python API, on a tiny
generated detection set: train, val, predict, fine-tune, resume, ONNX/TorchScript export, fresh-process loading."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ultralytics import RTDETR, YOLO

from carafe_ultra import CARAFE, CARAFEDown, ResNetBasicLayer, model_yaml
from tests.ultralytics_helpers import COMMON, ENV, YOLO_CLI, assert_same_queries, tiny_dataset, yolo


def carafe_count(model):
    return sum(isinstance(m, CARAFE) for m in model.modules())


def epochs_logged(run_dir):
    with open(Path(run_dir) / "results.csv") as f:
        return len(list(csv.DictReader(f)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def val_instances(data):
    """How many labelled objects the validation split holds."""
    return sum(len(f.read_text().splitlines()) for f in (Path(data).parent / "labels" / "val").glob("*.txt"))


@pytest.fixture(scope="module")
def cli_run(data, tmp_path_factory):
    """One CLI training run (YOLOv8n-CARAFE) that the CLI tests below build on."""
    project = tmp_path_factory.mktemp("cli")
    yolo("train", project, model=model_yaml("yolov8n-carafe.yaml"), data=data, epochs=1, project=project, name="run")
    return project / "run"


def test_cli_train_val_predict(cli_run, data):
    best = cli_run / "weights" / "best.pt"
    assert best.is_file() and epochs_logged(cli_run) == 1
    out = yolo("val", cli_run, model=best, data=data, project=cli_run, name="val")
    assert "mAP50" in out
    images = Path(data).parent / "images" / "val"
    out = yolo("predict", cli_run, model=best, source=images, project=cli_run, name="predict", save=False)
    assert out.count("64x64") >= 4  # one line per predicted image


def test_cli_fine_tune_from_checkpoint(cli_run, data):
    yolo("train", cli_run, model=cli_run / "weights" / "best.pt", data=data, epochs=1, project=cli_run, name="tune")
    tuned = YOLO(cli_run / "tune" / "weights" / "last.pt")
    assert carafe_count(tuned.model) == 2


def test_checkpoint_keeps_carafe_in_a_fresh_process(cli_run):
    code = ("from ultralytics import YOLO; import sys\n"
            f"m = YOLO({str(cli_run / 'weights' / 'best.pt')!r})\n"
            "print('CARAFE' * sum(type(x).__name__ == 'CARAFE' for x in m.model.modules()),"
            " type(m.model.model[10]).__module__)")
    run = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "CARAFECARAFE carafe_ultra.module" in run.stdout


def test_cli_export_onnx_and_torchscript_agree_with_pytorch(cli_run):
    import onnxruntime

    best = cli_run / "weights" / "best.pt"
    yolo("export", cli_run, model=best, format="onnx", batch=1)
    yolo("export", cli_run, model=best, format="torchscript", batch=1)
    model = YOLO(best).model.float().eval().fuse()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)[0].numpy()
    session = onnxruntime.InferenceSession(str(best.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert onnx_out.shape == expected.shape
    assert np.abs(onnx_out - expected).max() <= 1e-3
    scripted = torch.jit.load(str(best.with_suffix(".torchscript")))
    with torch.no_grad():
        ts_out = scripted(x)
    ts_out = (ts_out[0] if isinstance(ts_out, (tuple, list)) else ts_out).numpy()
    assert np.abs(ts_out - expected).max() <= 1e-3


class Interrupt(Exception):
    pass


def interrupted_run(model, data, project, name):
    """Train for 2 epochs but stop after the first checkpoint is written, as a crash would."""

    def stop(trainer):
        raise Interrupt

    model.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(Interrupt):
        model.train(data=data, epochs=2, project=str(project), name=name, **COMMON)
    last = Path(project) / name / "weights" / "last.pt"
    assert last.is_file()
    return last


def test_cli_resume(data, tmp_path):
    last = interrupted_run(YOLO(model_yaml("yolov8n-carafe.yaml")), data, tmp_path, "crashed")
    run = subprocess.run([YOLO_CLI, "train", "resume", f"model={last}"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert epochs_logged(tmp_path / "crashed") == 2


@pytest.fixture(scope="module")
def api_run(data, tmp_path_factory):
    """One Python-API training run (YOLO11n-CARAFE): (the run folder, what train() returned)."""
    project = tmp_path_factory.mktemp("api")
    final = YOLO(model_yaml("yolo11n-carafe.yaml")).train(data=data, epochs=1, project=str(project), name="api",
                                                          **COMMON)
    return project / "api", final


def test_python_api_val_reproduces_the_final_evaluation(api_run, data):
    run_dir, final = api_run
    metrics = YOLO(run_dir / "weights" / "best.pt").val(data=data, imgsz=64, batch=4, device="cpu", workers=0,
                                                         plots=False, project=str(run_dir), name="val")
    assert int(metrics.nt_per_class.sum()) == val_instances(data)  # every labelled object was evaluated
    for key in ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/precision(B)"):
        assert metrics.results_dict[key] == pytest.approx(final.results_dict[key], abs=1e-6), key


def test_python_api_predict(api_run):
    results = YOLO(api_run[0] / "weights" / "best.pt").predict(np.zeros((64, 64, 3), np.uint8), imgsz=64,
                                                                device="cpu", verbose=False)
    assert len(results) == 1 and results[0].boxes.data.shape[1] == 6  # x1, y1, x2, y2, score, class


def test_python_api_fine_tune(api_run, data, tmp_path):
    tuned = YOLO(api_run[0] / "weights" / "best.pt")
    tuned.train(data=data, epochs=1, project=str(tmp_path), name="tune", **COMMON)
    assert carafe_count(tuned.model) == 2 and epochs_logged(tmp_path / "tune") == 1


def test_python_api_resume(data, tmp_path):
    last = interrupted_run(YOLO(model_yaml("yolo11n-carafe.yaml")), data, tmp_path, "crashed")
    YOLO(last).train(resume=True)
    assert epochs_logged(tmp_path / "crashed") == 2


def test_python_api_onnx_export(api_run):
    exported = Path(YOLO(api_run[0] / "weights" / "best.pt").export(format="onnx", imgsz=64))
    assert exported.suffix == ".onnx" and exported.stat().st_size > 1_000_000


def test_python_api_rtdetr_end_to_end(data, tmp_path):
    """RT-DETR-l with both swaps (CARAFE and CARAFEDown in the neck: one RT-DETR-l training serves both)."""
    model = RTDETR(model_yaml("rtdetr-l-carafe-both.yaml"))
    model.train(data=data, epochs=1, project=str(tmp_path), name="rtdetr", **COMMON)
    best = tmp_path / "rtdetr" / "weights" / "best.pt"
    reloaded = RTDETR(best)
    assert carafe_count(reloaded.model) == 2 and sum(isinstance(m, CARAFEDown) for m in reloaded.model.modules()) == 2
    metrics = reloaded.val(data=data, imgsz=64, batch=4, device="cpu", workers=0, plots=False)
    assert int(metrics.nt_per_class.sum()) == val_instances(data)
    assert len(reloaded.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, device="cpu", verbose=False)) == 1
    onnx_path = reloaded.export(format="onnx", imgsz=64)
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = RTDETR(best).model.float().eval().fuse()(x)[0].numpy()
    assert_same_queries(expected[0], onnx_out[0])


def test_cli_rtdetr_r18_train_val_export(data, tmp_path):
    yolo("train", tmp_path, model=model_yaml("rtdetr-r18-carafe.yaml"), data=data, epochs=1, project=tmp_path,
         name="r18")
    best = tmp_path / "r18" / "weights" / "best.pt"
    assert "all" in yolo("val", tmp_path, model=best, data=data, project=tmp_path, name="val")
    yolo("export", tmp_path, model=best, format="onnx", batch=1)
    import onnxruntime

    reloaded = RTDETR(best).model.float().eval()
    assert carafe_count(reloaded) == 2 and sum(isinstance(m, ResNetBasicLayer) for m in reloaded.modules()) == 4
    session = onnxruntime.InferenceSession(str(best.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = reloaded.fuse()(x)[0].numpy()
    assert_same_queries(expected[0], onnx_out[0])

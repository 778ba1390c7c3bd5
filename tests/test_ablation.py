"""The ablation: arm YAMLs for any family, a tiny end-to-end run with every arm, resuming, the report."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from carafe_ultra import CARAFE, EUCB, CARAFEDown, DySample, convert_yaml, model_yaml
from carafe_ultra.experiments import ablation
from carafe_ultra.experiments.settings_record import SettingsChanged, check_same_experiment
from carafe_ultra.experiments.ablation import (
    Settings,
    _weights_taken,
    _with_mask_lr_scale,
    default_data,
    experiment_record,
    latencies_ms,
    latency_device,
    parse_arm,
    pretrained_base,
    recipe,
    run_ablation,
)
from carafe_ultra.heads import head_classes
from carafe_ultra.integration import ultralytics_model
from carafe_ultra.upsamplers import UPSAMPLERS
from tests.ultralytics_helpers import tiny_dataset, tiny_seg_dataset

UPSAMPLER_TYPES = {"nearest": torch.nn.Upsample, "bilinear": torch.nn.Upsample, "carafe": CARAFE,
                   "convtranspose": torch.nn.ConvTranspose2d, "dysample": DySample, "eucb": EUCB}


def test_every_upsampler_has_its_module_type_here():
    assert set(UPSAMPLER_TYPES) == set(UPSAMPLERS)


@pytest.mark.parametrize("family", ["yolov8n.yaml", "yolov8s-carafe.yaml", "yolo11n.yaml", "rtdetr-l.yaml",
                                    "rtdetr-r18.yaml"])
@pytest.mark.parametrize("arm", list(UPSAMPLERS))
def test_every_arm_builds_with_the_families_channels(family, arm, tmp_path):
    model = ultralytics_model(convert_yaml(family, arm, tmp_path)).model
    upsamplers = [m for m in model.model if isinstance(m, UPSAMPLER_TYPES[arm])]
    assert len(upsamplers) == 2
    if arm == "bilinear":
        assert all(m.mode == "bilinear" for m in upsamplers)
    x = torch.zeros(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        model(x)  # channels line up, or this fails


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def tiny(tmp_path, data, **overrides):
    return Settings(**{"data": data, "epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "seeds": [0],
                       "out": str(tmp_path / "out"), **overrides})


def test_tiny_ablation_end_to_end_and_resume(tmp_path, capsys, data):
    settings = tiny(tmp_path, data, arms=[*UPSAMPLERS, "carafe:kernel_size=3,compressed_channels=16", "carafe-down",
                                          "carafe-both"])
    summary = run_ablation(settings)
    arms = {a["upsampler"]: a for a in summary["arms"]}
    assert list(arms) == settings.arms
    for a in arms.values():
        assert {"upsampler", "mAP50", "mAP50-95", "params", "GFLOPs", "latency_ms"} <= set(a)
        assert a["GFLOPs"] > 0 and a["latency_ms"] > 0
    assert arms["carafe"]["params"] > arms["carafe:kernel_size=3,compressed_channels=16"]["params"]
    assert arms["carafe"]["params"] > arms["dysample"]["params"] > arms["nearest"]["params"]
    assert arms["nearest"]["params"] == arms["bilinear"]["params"]
    out = tmp_path / "out"
    small = ultralytics_model(out / "runs" / "carafe-kernel_size-3-compressed_channels-16-seed0" / "weights" / "best.pt")
    assert {(m.kernel_size, m.compressor.out_channels) for m in small.model.modules() if isinstance(m, CARAFE)} == {(3, 16)}
    for arm, modules in (("carafe-down", (torch.nn.Upsample, CARAFEDown)), ("carafe-both", (CARAFE, CARAFEDown))):
        trained = ultralytics_model(out / "runs" / f"{arm}-seed0" / "weights" / "best.pt").model
        assert [sum(isinstance(m, kind) for m in trained.model) for kind in modules] == [2, 2], arm
    assert json.loads((out / "summary.json").read_text())["settings"]["epochs"] == 1
    assert "| nearest |" in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 10_000
    # What each CARAFE or CARAFEDown arm learned, drawn beside the summary (not for the other arms).
    assert sorted(p.name for p in out.glob("show-*.png")) == ["show-carafe-both.png", "show-carafe-down.png",
                                                              "show-carafe-kernel_size-3-compressed_channels-16.png",
                                                              "show-carafe.png"]
    capsys.readouterr()
    again = run_ablation(settings)  # everything finished: nothing is trained again
    assert capsys.readouterr().out.count("already finished") == len(settings.arms)
    assert again["arms"] == summary["arms"]


def test_parallel_jobs_log_each_run_to_its_file(tmp_path, data):
    summary = run_ablation(tiny(tmp_path, data, jobs=2, arms=["nearest", "carafe"]))
    assert [a["upsampler"] for a in summary["arms"]] == ["nearest", "carafe"]
    for arm in ("nearest", "carafe"):
        log = (tmp_path / "out" / "runs" / f"{arm}-seed0.log").read_text()
        assert "1 epochs completed" in log and (tmp_path / "out" / "runs" / f"{arm}-seed0" / "result.json").is_file()


def test_rtdetr_r18_as_the_base_of_an_ablation(tmp_path, data):
    summary = run_ablation(tiny(tmp_path, data, model="rtdetr-r18.yaml", arms=["nearest", "eucb"]))
    arms = {a["upsampler"]: a for a in summary["arms"]}
    assert list(arms) == ["nearest", "eucb"] and arms["eucb"]["params"] > arms["nearest"]["params"] > 19_000_000
    trained = ultralytics_model(tmp_path / "out" / "runs" / "eucb-seed0" / "weights" / "best.pt")
    assert type(trained).__name__ == "RTDETR" and sum(isinstance(m, EUCB) for m in trained.model.modules()) == 2


def batches_seen(arm, seed, settings, data):
    """(image files, pixel sums) of every training batch one arm's run sees."""
    seen = []

    def record(trainer):  # every training batch passes through preprocess_batch
        preprocess = trainer.preprocess_batch
        trainer.preprocess_batch = lambda batch: seen.append(
            (tuple(batch["im_file"]), float(batch["img"].float().sum()))) or preprocess(batch)

    model = ultralytics_model(convert_yaml(settings.model, arm, Path(settings.out) / arm))
    model.add_callback("on_train_start", record)
    model.train(**recipe(settings, seed), data=data, project=settings.out, name=f"{arm}-{seed}", exist_ok=True)
    return seen


def test_seeds_pair_the_arms(tmp_path, data):
    settings = tiny(tmp_path, data, epochs=2, mosaic=1.0)  # with augmentation draws to compare
    nearest = batches_seen("nearest", 0, settings, data)
    assert len(nearest) == 4
    assert batches_seen("carafe", 0, settings, data) == nearest  # same order, same augmented pixels
    assert batches_seen("nearest", 1, settings, data) != nearest


@pytest.fixture(scope="module")
def trained_stock(data, tmp_path_factory):
    """A stock YOLOv8n (nearest) trained on the tiny set: weights to start from."""
    project = tmp_path_factory.mktemp("stock")
    YOLO("yolov8n.yaml").train(data=data, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False,
                               project=str(project), name="stock")
    return project / "stock" / "weights" / "best.pt"


def test_every_stock_weight_transfers_into_the_carafe_model(trained_stock):
    stock = YOLO(trained_stock).model
    model = DetectionModel(model_yaml("yolov8n-carafe.yaml"), nc=stock.nc, verbose=False)
    model.load(stock)  # what YOLO("yolov8n-carafe.yaml").load("yolov8n.pt") does
    state, stock = model.state_dict(), stock.float().state_dict()
    assert sorted(name for name in state if name not in stock) == [
        f"model.{i}.{conv}.{p}" for i in (10, 13) for conv in ("compressor", "encoder") for p in ("bias", "weight")]
    assert all(torch.equal(state[name], stock[name]) for name in stock)  # every stock entry, unchanged


def test_ablation_from_weights_reports_what_each_arm_took(tmp_path, data, trained_stock):
    summary = run_ablation(tiny(tmp_path, data, weights=str(trained_stock), arms=["nearest", "carafe"]))
    arms = {a["upsampler"]: a for a in summary["arms"]}
    taken, total = arms["nearest"]["weights_taken"]
    assert taken == total  # the stock model: everything came from the checkpoint
    carafe_taken, carafe_total = arms["carafe"]["weights_taken"]
    carafe_entries = sum(1 for m in (10, 13) for _ in CARAFE(16).state_dict())
    assert carafe_taken == taken and carafe_total == total + carafe_entries
    assert f"carafe took over {taken}/{carafe_total} state entries" in (tmp_path / "out" / "summary.md").read_text()


def test_yolo_train_with_pretrained_weights(tmp_path, data, trained_stock):
    model = YOLO(model_yaml("yolov8n-carafe.yaml"))
    taken = []
    model.add_callback("on_pretrain_routine_end", lambda t: taken.append(_weights_taken(t, str(trained_stock))))
    model.train(data=data, pretrained=str(trained_stock), epochs=1, imgsz=64, batch=4, workers=0, device="cpu",
                plots=False, project=str(tmp_path), name="tune")
    assert taken[0][0] == len(YOLO(trained_stock).model.state_dict())


def test_pretrained_base_is_trained_once_and_cached(tmp_path, data, monkeypatch):
    monkeypatch.setenv("CARAFE_ULTRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ablation, "default_data", lambda imgsz, seed=0, task="detect": data)
    settings = tiny(tmp_path, None, pretrain_epochs=1, arms=["nearest", "carafe"])
    messages = []
    run_ablation(settings, log=messages.append)
    assert any("base model: training yolov8n.yaml (nearest) for 1 epochs on other generated data, started" in m
               for m in messages)
    (base,) = (tmp_path / "cache" / "bases").glob("yolov8n-*/base.pt")
    assert not (base.parent / "training").exists()  # only the finished base is kept
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["weights"] == str(base) and summary["settings"]["pretrain_epochs"] == 1
    assert all(a["weights_taken"][0] > 300 for a in summary["arms"])
    messages.clear()
    assert pretrained_base(settings, messages.append) == str(base) and messages == [f"base model: reusing {base}"]


@pytest.mark.parametrize("downsample,predictors", [(False, 2), (True, 4)], ids=["carafe", "carafe-both"])
def test_mask_learning_rate_scale(downsample, predictors, tmp_path, data):
    settings = tiny(tmp_path, data, mask_lr_scale=4.0)
    model = ultralytics_model(convert_yaml(settings.model, "carafe", tmp_path, downsample=downsample))
    groups = []
    model.add_callback("on_train_start", lambda t: groups.extend(
        (len(g["params"]), g["initial_lr"], {id(p) for p in g["params"]}) for g in t.optimizer.param_groups))
    trainer = _with_mask_lr_scale(model.task_map[model.task]["trainer"], 4.0)
    model.train(**recipe(settings, 0), data=data, trainer=trainer, project=str(tmp_path), name="lr")
    carafes = [m for m in model.trainer.model.modules() if isinstance(m, (CARAFE, CARAFEDown))]
    masks = {id(p) for m in carafes for p in (*m.compressor.parameters(), *m.encoder.parameters())}
    mask_groups = [g for g in groups if g[2] and g[2] <= masks]
    other_lrs = {g[1] for g in groups if g[2] and not g[2] & masks}
    assert sum(g[0] for g in mask_groups) == len(masks) == 4 * predictors  # weights and biases of compressors, encoders
    assert {g[1] for g in mask_groups} <= {lr * 4.0 for lr in other_lrs}


@pytest.mark.parametrize(
    "overrides,error,pattern",
    [
        ({"arms": ["nearest", "pixelshuffle"]}, ValueError, "unknown arm 'pixelshuffle'; choose from nearest, "
                                                            "bilinear, convtranspose, carafe, dysample, eucb, "
                                                            "carafe-down, carafe-both"),
        ({"arms": ["carafe-down:kernel_size=3"]}, ValueError, "nearest takes no options"),
        ({"arms": ["carafe:k=3"]}, ValueError, "carafe options must be among kernel_size, encoder_kernel"),
        ({"arms": ["carafe:kernel_size"]}, ValueError, "options are key=value pairs"),
        ({"arms": ["carafe:kernel_size=three"]}, ValueError, "'three' is not a literal"),
        ({"arms": ["nearest:kernel_size=3"]}, ValueError, "nearest takes no options"),
        ({"arms": ["carafe:up_factor=4"]}, ValueError, "carafe options must be among"),
        ({"arms": ["carafe", "carafe"]}, ValueError, "arms must be distinct"),
        ({"seeds": []}, ValueError, "seeds must be distinct and at least one"),
        ({"epochs": 0}, ValueError, "epochs must be a positive int"),
        ({"jobs": 0}, ValueError, "jobs must be a positive int"),
        ({"weights": "missing.pt"}, FileNotFoundError, "weights 'missing.pt' is not a file"),
        ({"pretrain_epochs": 2, "data": "my.yaml"}, ValueError, "pretrain_epochs needs the generated data"),
        ({"mask_lr_scale": 0}, ValueError, "mask_lr_scale must be positive"),
    ],
)
def test_bad_settings_fail_before_training(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        Settings(**overrides)


def test_default_data_keeps_pixels_and_objects_per_split():
    from carafe_ultra.experiments.data import ShapesSpec

    from carafe_ultra.experiments import data

    captured = []
    original = data.shapes_dataset
    try:
        data.shapes_dataset = lambda spec: captured.append(spec) or "data.yaml"
        default_data(160), default_data(320, seed=1)
    finally:
        data.shapes_dataset = original
    assert captured[0] == ShapesSpec()
    assert (captured[1].train_images, captured[1].val_images, captured[1].image_size) == (64, 16, 320)
    assert captured[1].objects == (16, 48) and captured[1].seed == 1


def test_command_line(tmp_path, data):
    script = Path(__file__).parents[1] / "scripts" / "ablate.py"
    run = subprocess.run([sys.executable, str(script), "--data", data, "--epochs", "1", "--imgsz", "64",
                          "--batch", "4", "--workers", "0", "--seeds", "0", "--arms", "nearest", "carafe",
                          "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| carafe |" in run.stdout and f"plot: {tmp_path / 'o' / 'summary.png'}" in run.stdout


def test_latencies_are_timed_on_the_first_device_of_an_ultralytics_device_string():
    assert latency_device("0,1") == torch.device("cuda", 0) and latency_device("cpu") == torch.device("cpu")
    small, large = torch.nn.Conv2d(3, 4, 3), torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3, padding=1)] * 30)
    ms = latencies_ms({"small": small, "large": large}, 64, latency_device("cpu"), repeats=5)
    assert set(ms) == {"small", "large"} and 0 < ms["small"] < ms["large"]
    if torch.cuda.is_available():
        assert latencies_ms({"small": small}, 32, latency_device("0"), repeats=2)["small"] > 0


# --- checked before anything runs ------------------------------------------------------------------------------------


def data_variant(data: str, folder: Path, extra: str = "", labels: str = "labels") -> str:
    """A data YAML over the tiny set's images with ``extra`` keys, its label files in ``labels`` (copied, or as
    polygons with ``labels="polygons"``, or none with ``labels=None``)."""
    source = Path(data).parent
    root = folder / f"{labels}-{abs(hash(extra))}"
    for split in ("train", "val"):
        if not (root / "images" / split).exists():
            shutil.copytree(source / "images" / split, root / "images" / split)
        if labels is None:
            continue
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for label in (source / "labels" / split).glob("*.txt"):
            rows = [row.split() for row in label.read_text().splitlines() if row.strip()]
            if labels == "polygons":  # each box as its four corners
                rows = [[c, f"{float(x) - float(w) / 2:.4f}", f"{float(y) - float(h) / 2:.4f}",
                         f"{float(x) + float(w) / 2:.4f}", f"{float(y) - float(h) / 2:.4f}",
                         f"{float(x) + float(w) / 2:.4f}", f"{float(y) + float(h) / 2:.4f}",
                         f"{float(x) - float(w) / 2:.4f}", f"{float(y) + float(h) / 2:.4f}"] for c, x, y, w, h in rows]
            (root / "labels" / split / label.name).write_text("".join(" ".join(row) + "\n" for row in rows))
    names = "\n".join(f"  {i}: c{i}" for i in range(5))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n{extra}")
    return str(root / "data.yaml")


@pytest.mark.parametrize("model,extra,labels,message", [
    ("yolov8n.yaml", "kpt_shape: [17, 3]\n", "labels", "is pose data \\(it has kpt_shape\\), but yolov8n.yaml is a "
                                                        "detect model: it trains on YOLO label files with boxes"),
    ("yolov8n.yaml", "masks_dir: masks\n", None, "is semantic data \\(it has masks_dir\\), but yolov8n.yaml is a "
                                                 "detect model"),
    ("yolov8n.yaml", "depth_scale: 1000\n", None, "is depth data \\(it has depth_scale\\)"),
    ("yolov8n.yaml", "", None, "no YOLO label files \\(labels/.../\\*.txt\\) beside its training images, which a "
                               "detect model trains on \\(yolov8n.yaml\\); is it data for another task\\?"),
    ("yolov8n-seg.yaml", "", "labels", "labels boxes only, but yolov8n-seg.yaml is an instance-segmentation model: "
                                       "it trains on polygon labels"),
    ("yolov8n-pose.yaml", "", "labels", "has no kpt_shape, but yolov8n-pose.yaml is a pose model"),
])
def test_data_of_another_task_than_the_model_is_refused(model, extra, labels, message, data, tmp_path):
    with pytest.raises(ValueError, match=message):
        Settings(model=model, data=data_variant(data, tmp_path, extra, labels))


@pytest.mark.parametrize("model,labels", [("yolov8n.yaml", "labels"), ("yolov8n.yaml", "polygons"),
                                          ("yolov8n-seg.yaml", "polygons")])
def test_data_of_the_models_task_is_taken(model, labels, data, tmp_path):
    assert Settings(model=model, data=data_variant(data, tmp_path, labels=labels)).data.endswith("data.yaml")


@pytest.fixture(scope="module")
def dense_data(tmp_path_factory):
    """The tiny generated semantic and depth sets, by task."""
    root = tmp_path_factory.mktemp("dense")
    return {task: tiny_seg_dataset(root, task) for task in ("semantic", "depth", "segment")}


def copied(data_yaml: str, folder: Path) -> Path:
    """A copy of a generated set whose files may be changed, its data.yaml rewritten to point at it."""
    source = Path(data_yaml).parent
    shutil.copytree(source, folder)
    (folder / "data.yaml").write_text((source / "data.yaml").read_text().replace(str(source), str(folder)))
    return folder


@pytest.mark.parametrize("model,given,message", [
    ("yolo26n-sem.yaml", "depth", "is depth data \\(it has depth_scale\\), but yolo26n-sem.yaml is a semantic model"),
    ("yolo26n-depth.yaml", "semantic", "is semantic data \\(it has masks_dir\\), but yolo26n-depth.yaml is a depth"),
    ("yolo26n-depth.yaml", "segment", "no depth map .*depth/train/00000.png for the training images, which "
                                      "yolo26n-depth.yaml trains on"),
    ("yolov8n-seg.yaml", "semantic", "is semantic data \\(it has masks_dir\\), but yolov8n-seg.yaml is a segment"),
])
def test_dense_data_of_another_task_is_refused(model, given, message, dense_data):
    with pytest.raises(ValueError, match=message):
        Settings(model=model, data=dense_data[given])


def test_semantic_data_needs_masks_or_polygons(dense_data, data, tmp_path):
    with pytest.raises(ValueError, match="has no masks_dir and no polygon labels, but yolo26n-sem.yaml is a semantic "
                                         "segmentation model"):
        Settings(model="yolo26n-sem.yaml", data=data)  # boxes
    folder = copied(dense_data["semantic"], tmp_path / "semantic")
    (folder / "masks" / "train" / "00000.png").unlink()
    with pytest.raises(ValueError, match="no class mask .*masks/train/00000.png \\(masks_dir: masks\\)"):
        Settings(model="yolo26n-sem.yaml", data=str(folder / "data.yaml"))


@pytest.mark.parametrize("model,task", [("yolo26n-sem.yaml", "semantic"), ("yolo26n-sem.yaml", "segment"),
                                        ("yolo26n-depth.yaml", "depth")])
def test_dense_data_of_the_models_task_is_taken(model, task, dense_data):
    assert Settings(model=model, data=dense_data[task]).data == dense_data[task]


def test_depth_maps_that_are_not_16_bit_are_refused(dense_data, tmp_path):
    folder = copied(dense_data["depth"], tmp_path / "depth")
    eight_bit = folder / "depth" / "train" / "00000.png"
    cv2.imwrite(str(eight_bit), (cv2.imread(str(eight_bit), cv2.IMREAD_UNCHANGED) // 256).astype(np.uint8))
    with pytest.raises(ValueError, match="Depth PNG .*00000.png must be a 2D uint16 map \\(16-bit PNG of depth_scale "
                                         "units per metre\\), which yolo26n-depth.yaml trains on"):
        Settings(model="yolo26n-depth.yaml", data=str(folder / "data.yaml"))


@pytest.mark.parametrize("content,message", [
    ("train: [unclosed\nval: x\n", "YAML syntax error in"),
    ("just a string\n", "is not a valid YAML mapping"),
    ("train: images/train\nval: images/val\nnames: {0: a}\n", "images not found, missing path"),
])
def test_unreadable_data_is_refused_before_anything_runs(content, message, tmp_path, capsys):
    (tmp_path / "data.yaml").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        ablation_command(["--data", str(tmp_path / "data.yaml"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_data_yaml_stops_the_script_before_any_folder_is_made(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "ablate.py"
    run = subprocess.run([sys.executable, str(script), "--data", "/nonexistent/data.yaml", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert run.returncode == 2 and errors == [
        "python -m carafe_ultra ablate: error: --data /nonexistent/data.yaml: '/nonexistent/data.yaml' does not exist"]
    assert not (tmp_path / "o").exists()


def ablation_command(arguments: list[str]) -> None:
    from carafe_ultra.__main__ import main

    main(["ablate", *arguments])


# --- one experiment per folder ---------------------------------------------------------------------------------------


def test_a_rerun_with_other_settings_stops_naming_each_and_both_values(tmp_path, data, capsys):
    weights = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for number, path in enumerate(weights):
        path.write_bytes(bytes([number]) * 100)
    started = tiny(tmp_path, data, weights=str(weights[0]), arms=["nearest", "carafe"])
    check_same_experiment(started.out, experiment_record(started))
    weights[0].rename(tmp_path / "moved.pt")  # the same weights elsewhere are the same experiment
    check_same_experiment(started.out, experiment_record(replace(started, weights=str(tmp_path / "moved.pt"),
                                                                 jobs=2, workers=1, seeds=[0, 1, 2])))
    with pytest.raises(SystemExit) as exit_info:
        ablation_command(["--data", data, "--epochs", "3", "--imgsz", "64", "--batch", "4", "--lr0", "0.01", "--weights",
                          str(weights[1]), "--arms", "nearest", "carafe", "dysample", "--out", started.out])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    digests = [experiment_record(replace(started, weights=str(path)))["weights"]
               for path in (tmp_path / "moved.pt", weights[1])]
    for line in ("--epochs: 1 when started, 3 now", "--lr0: 0.003 when started, 0.01 now",
                 f"--weights: {digests[0]} when started, {digests[1]} now"):
        assert f"\n  {line}" in error, error
    assert "give --restart to delete its runs and start it over" in error and "\n  --arms" not in error
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained
    options = replace(started, weights=None, arms=["carafe:kernel_size=3"])  # the arms' definitions are recorded too
    recorded = experiment_record(options)
    recorded["arms"]["carafe:kernel_size=3"]["compressed_channels"] = 32  # as if a release changed a default
    check_same_experiment(tmp_path / "arms", recorded)
    with pytest.raises(SettingsChanged, match=r"--arms carafe:kernel_size=3: upsampler=carafe, kernel_size=3, .*"
                                              r"compressed_channels=32, .* when started, .*compressed_channels=64"):
        check_same_experiment(tmp_path / "arms", experiment_record(options))


def test_head_arms_record_every_option_their_head_builds_its_upsampler_with(monkeypatch):
    arm = parse_arm("carafe-head:compressed_channels=16")
    seg = arm.definition("yolo11n-seg.yaml")
    assert seg["head"] == "carafe" and seg["upsampler"] == "nearest"
    # CARAFE's own defaults, the mask branch's 3×3 kernels, the arm's option
    assert {k: seg["head_options"][k] for k in ("encoder_kernel", "kernel_size", "compressed_channels")} == {
        "encoder_kernel": 3, "kernel_size": 3, "compressed_channels": 16}
    semantic = arm.definition("yolo26n-sem.yaml")["head_options"]
    assert semantic["scale"] == 2 and semantic["kernel_size"] == 3 and semantic["encoder_kernel"] == 1
    assert "head_options" not in parse_arm("carafe").definition("yolo11n-seg.yaml")
    segment_head = head_classes()["SegmentUp"]
    monkeypatch.setattr(segment_head, "DEFAULT_OPTIONS", {"carafe": {"kernel_size": 5}})  # as if a release changed it
    assert arm.definition("yolo11n-seg.yaml")["head_options"]["kernel_size"] == 5  # and a resume would be refused


def test_restart_starts_the_folder_over(tmp_path, data, capsys):
    arguments = ["--data", data, "--imgsz", "64", "--batch", "4", "--workers", "0", "--seeds", "0", "--arms", "nearest",
                 "--out", str(tmp_path / "out")]
    ablation_command(["--epochs", "1", *arguments])
    first = json.loads((tmp_path / "out" / "runs" / "nearest-seed0" / "result.json").read_text())
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        ablation_command(["--epochs", "2", *arguments])
    ablation_command(["--epochs", "2", "--restart", *arguments])
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["epochs"] == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["settings"]["epochs"] == 2
    again = json.loads((tmp_path / "out" / "runs" / "nearest-seed0" / "result.json").read_text())
    assert again["train_seconds"] != first["train_seconds"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # only the ablation's own files went
    assert "already finished" not in capsys.readouterr().out


# --- instance segmentation ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    return tiny_seg_dataset(tmp_path_factory.mktemp("seg-data"))


def test_a_seg_model_makes_a_segmentation_ablation_from_a_pretrained_base(tmp_path, seg_data, monkeypatch):
    monkeypatch.setenv("CARAFE_ULTRA_CACHE", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(ablation, "default_data", lambda imgsz, seed=0, task="detect": asked.append(task) or seg_data)
    settings = tiny(tmp_path, None, model="yolo11n-seg.yaml", pretrain_epochs=1,
                    arms=["nearest", "carafe", "carafe-head", "carafe-all"])
    summary = run_ablation(settings, log=lambda line: None)
    assert set(asked) == {"segment"}  # the generated set with instance masks, for the base and the arms
    assert summary["task"] == "segment" and summary["verdict_metric"] == "mask_mAP50-95"
    for arm in summary["arms"]:
        assert {"mAP50", "mAP50-95", "mask_mAP50", "mask_mAP50-95"} <= set(arm) and arm["weights_taken"][0] > 300
        if arm["upsampler"] != "nearest":
            assert set(arm["delta_vs_nearest"]) == {"mAP50", "mAP50-95", "mask_mAP50", "mask_mAP50-95"}
    runs = tmp_path / "out" / "runs"
    for arm, neck, mask_branch in (("carafe", CARAFE, torch.nn.ConvTranspose2d),
                                   ("carafe-head", torch.nn.Upsample, CARAFE), ("carafe-all", CARAFE, CARAFE)):
        network = ultralytics_model(runs / f"{arm}-seed0" / "weights" / "best.pt").model
        assert sum(isinstance(m, neck) for m in network.model) == 2 and isinstance(network.model[-1].proto.upsample,
                                                                                    mask_branch), arm
    result = json.loads((runs / "carafe-head-seed0" / "result.json").read_text())
    assert 0 <= result["mask_mAP50_95"] <= result["mask_mAP50"] <= 1
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "verdict (mask mAP50-95)" in table and "| carafe-all |" in table
    assert sorted(p.name for p in (tmp_path / "out").glob("show-*.png")) == [
        "show-carafe-all.png", "show-carafe-head.png", "show-carafe.png"]


def test_a_seg_ablation_from_stock_weights_says_what_each_arm_took(tmp_path, seg_data):
    stock = YOLO("yolo11n-seg.yaml")
    stock.save(tmp_path / "yolo11n-seg.pt")
    summary = run_ablation(tiny(tmp_path, seg_data, model="yolo11n-seg.yaml", weights=str(tmp_path / "yolo11n-seg.pt"),
                                arms=["nearest", "carafe-head"]), log=lambda line: None)
    taken = {a["upsampler"]: a["weights_taken"] for a in summary["arms"]}
    assert taken["nearest"][1] - taken["nearest"][0] == 6  # the class convs: 80 classes in the weights, 5 in the data
    # The same but the mask branch: its ConvTranspose2d (2 entries) is gone, its CARAFE (4) starts fresh.
    assert taken["carafe-head"] == [taken["nearest"][0] - 2, taken["nearest"][1] - 2 + 4]


@pytest.mark.parametrize("model", ["yolov8n.yaml", "yolo11n-pose.yaml"])
def test_head_arms_need_a_model_whose_head_upsamples(model):
    with pytest.raises(ValueError, match=f"arm carafe-head swaps a task head's own upsampling .*, but {model} is a"):
        Settings(model=model, arms=["nearest", "carafe-head"])


@pytest.mark.parametrize("model,task,figures,judged", [
    ("yolo26n-sem.yaml", "semantic", {"pixel_accuracy", "mIoU"}, "mIoU"),
    ("yolo26n-depth.yaml", "depth", {"AbsRel", "delta1"}, "delta1"),
])
def test_a_semantic_or_depth_model_makes_an_ablation_of_its_task(model, task, figures, judged, tmp_path, dense_data,
                                                                   monkeypatch):
    asked = []
    monkeypatch.setattr(ablation, "default_data",
                        lambda imgsz, seed=0, task="detect": asked.append(task) or dense_data[task])
    settings = tiny(tmp_path, None, model=model, seeds=[0, 1], arms=["nearest", "carafe-all"])  # the neck and the head
    summary = run_ablation(settings, log=lambda line: None)
    assert set(asked) == {task} and summary["task"] == task and summary["verdict_metric"] == judged
    assert summary["lower_is_better"] == (["AbsRel"] if task == "depth" else [])
    for arm in summary["arms"]:
        assert figures <= set(arm) and "mAP50" not in arm
        if arm["upsampler"] != "nearest":
            assert set(arm["delta_vs_nearest"]) == figures and arm["delta_vs_nearest"][judged]["n"] == 2
    runs = tmp_path / "out" / "runs"
    head = ultralytics_model(runs / "carafe-all-seed1" / "weights" / "best.pt").model.model[-1]
    assert type(head).__name__ == {"semantic": "SemanticSegmentUp", "depth": "DepthUp"}[task]
    result = json.loads((runs / "carafe-all-seed0" / "result.json").read_text())
    own, other = (("pixel_accuracy", "mIoU"), ("abs_rel", "delta1"))[:: 1 if task == "semantic" else -1]
    assert result["mAP50"] is None and all(result[f] >= 0 for f in own) and all(result[f] is None for f in other)
    table = (tmp_path / "out" / "summary.md").read_text()
    assert f"verdict ({judged})" in table and "| carafe-all |" in table
    assert ("Lower is better for AbsRel." in table) == (task == "depth")
    assert [p.name for p in (tmp_path / "out").glob("show-*.png")] == ["show-carafe-all.png"]


def test_the_generated_set_follows_the_models_task():
    from carafe_ultra.experiments import data

    captured = []
    original = data.shapes_dataset
    try:
        data.shapes_dataset = lambda spec: captured.append(spec) or "data.yaml"
        ablation.generated_data(Settings(model="yolo11n-seg.yaml")), ablation.generated_data(Settings(), seed=1)
    finally:
        data.shapes_dataset = original
    assert [(spec.task, spec.seed) for spec in captured] == [("segment", 0), ("detect", 1)]
    with pytest.raises(ValueError, match="there is no generated data for pose models: give --data"):
        ablation.generated_data(Settings(model="yolo11n-pose.yaml"))

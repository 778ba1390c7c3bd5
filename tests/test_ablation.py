"""The ablation: arm YAMLs for any family, a tiny end-to-end run with every arm, resuming, the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from carafe_ultra import CARAFE, DySample, convert_yaml
from carafe_ultra.experiments.ablation import RunResult, Settings, latency_ms, run_ablation
from carafe_ultra.experiments.report import markdown_table, summarise
from carafe_ultra.integration import ultralytics_model
from carafe_ultra.upsamplers import UPSAMPLERS
from tests.helpers import tiny_dataset

UPSAMPLER_TYPES = {"nearest": torch.nn.Upsample, "bilinear": torch.nn.Upsample, "carafe": CARAFE,
                   "convtranspose": torch.nn.ConvTranspose2d, "dysample": DySample}


def test_every_upsampler_has_its_module_type_here():
    assert set(UPSAMPLER_TYPES) == set(UPSAMPLERS)


@pytest.mark.parametrize("family", ["yolov8n.yaml", "yolov8s-carafe.yaml", "yolo11n.yaml", "rtdetr-l.yaml"])
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


def fake(arm, seed, m50, m):
    return RunResult(upsampler=arm, seed=seed, mAP50=m50, mAP50_95=m, params=100, GFLOPs=1.0, latency_ms=2.0,
                     train_seconds=1.0)


def test_report_deltas_and_honest_verdict():
    settings = Settings(seeds=[0, 1])
    results = [fake("nearest", 0, 0.50, 0.30), fake("carafe", 0, 0.52, 0.31),
               fake("nearest", 1, 0.52, 0.32), fake("carafe", 1, 0.50, 0.29)]
    summary = {"arms": summarise(results), "settings": {**settings.__dict__, "data": "d.yaml"}, "seeds": [0, 1]}
    table = markdown_table(summary)
    assert "| carafe | 0.510 ± 0.014 | +0.000 | 0.300 ± 0.014 | -0.010 |" in table
    assert "carafe is within the seed spread of nearest" in table
    clear = [fake("nearest", 0, 0.5, 0.30), fake("carafe", 0, 0.4, 0.20)]
    table = markdown_table({"arms": summarise(clear), "settings": summary["settings"], "seeds": [0]})
    assert "carafe trails nearest (-0.100 mAP50-95" in table and "One seed only" in table


def test_tiny_ablation_end_to_end_and_resume(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    settings = Settings(data=data, epochs=1, imgsz=64, batch=4, workers=0, arms=list(UPSAMPLERS),
                        out=str(tmp_path / "out"))
    summary = run_ablation(settings)
    arms = {a["upsampler"]: a for a in summary["arms"]}
    assert set(arms) == set(UPSAMPLERS)
    for a in arms.values():
        assert {"upsampler", "mAP50", "mAP50-95", "params", "GFLOPs", "latency_ms"} <= set(a)
        assert a["GFLOPs"] > 0 and a["latency_ms"] > 0
    assert arms["carafe"]["params"] > arms["dysample"]["params"] > arms["nearest"]["params"]
    assert arms["nearest"]["params"] == arms["bilinear"]["params"]
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text())["settings"]["epochs"] == 1
    assert "| nearest |" in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 10_000
    capsys.readouterr()
    again = run_ablation(settings)  # everything finished: nothing is trained again
    assert capsys.readouterr().out.count("already finished") == len(UPSAMPLERS)
    assert again["arms"] == summary["arms"]


def test_unknown_arm_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown upsampler 'pixelshuffle'; choose from nearest, bilinear"):
        run_ablation(Settings(arms=["nearest", "pixelshuffle"], out=str(tmp_path)))


def test_command_line(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    script = Path(__file__).parents[1] / "scripts" / "ablate.py"
    run = subprocess.run([sys.executable, str(script), "--data", data, "--epochs", "1", "--imgsz", "64",
                          "--batch", "4", "--workers", "0", "--arms", "nearest", "carafe", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| carafe |" in run.stdout and f"plot: {tmp_path / 'o' / 'summary.png'}" in run.stdout


def test_latency_accepts_ultralytics_device_strings():
    net = torch.nn.Conv2d(3, 4, 3)
    assert latency_ms(net, 32, "cpu", repeats=2) > 0
    if torch.cuda.is_available():
        assert latency_ms(net, 32, "0", repeats=2) > 0

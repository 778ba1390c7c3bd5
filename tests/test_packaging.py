"""The shipped model YAMLs live in the checkout's top-level models/ and travel inside the wheel: a wheel installed into
a fresh virtual environment finds them (and registers CARAFE there), and so do the editable install and a checkout."""

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import carafe_ultra
from carafe_ultra import model_dir, model_yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "models").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = out.glob("carafe_ultra-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"carafe_ultra_autoload.pth", "_carafe_ultra_autoload.py", "carafe_ultra/__init__.py",
            "carafe_ultra/backends/kernels/carafe.cu", "carafe_ultra/backends/kernels/host_shim.cpp"} <= names
    assert len(SHIPPED) == 16  # 9 CARAFE conversions, 2 with both swaps, 4 with CARAFE heads, the RT-DETR-R18 base
    assert sorted(n.removeprefix("carafe_ultra/models/") for n in names if n.startswith("carafe_ultra/models/")) == SHIPPED
    assert not any(n.startswith("models/") for n in names)  # inside the package, not beside it
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: AGPL-3.0-only" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


FRESH_CHECK = (
    "import sys\n"
    "from ultralytics.nn.tasks import DetectionModel\n"
    "import carafe_ultra\n"
    "from carafe_ultra import carafe_yaml, model_dir, model_yaml\n"
    "assert carafe_ultra.__file__.startswith(sys.prefix), carafe_ultra.__file__\n"
    "print('models:', model_dir())\n"
    "m = DetectionModel(model_yaml('yolov8n-carafe.yaml'), verbose=False)\n"
    "print('CARAFE layers:', sum(type(x).__name__ == 'CARAFE' for x in m.model))\n"
    "print('converted:', carafe_yaml('rtdetr-l-carafe.yaml', sys.argv[1]))\n"
)


def test_a_wheel_in_a_fresh_virtual_environment_finds_the_models(wheel, tmp_path):
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # The fresh environment borrows this one's dependencies (torch, Ultralytics) through a path entry; this
    # environment's own .pth files (its editable carafe_ultra among them) are not processed from there.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([python, "-c", FRESH_CHECK, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"models: {site / 'carafe_ultra' / 'models'}" in run.stdout and "CARAFE layers: 2" in run.stdout
    assert f"converted: {tmp_path / 'rtdetr-l-carafe.yaml'}" in run.stdout
    listing = subprocess.run([python, "-m", "carafe_ultra", "models"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300).stdout.split()
    assert listing == [str(site / "carafe_ultra" / "models" / name) for name in SHIPPED]


def test_the_editable_install_and_the_checkout_read_the_top_level_models():
    assert Path(carafe_ultra.__file__).parent == ROOT / "carafe_ultra"  # this environment's install is editable
    assert model_dir() == ROOT / "models" and not (ROOT / "carafe_ultra" / "models").exists()
    assert Path(model_yaml("yolo11s-carafe.yaml")) == ROOT / "models" / "yolo11s-carafe.yaml"
    listing = subprocess.run([sys.executable, "-m", "carafe_ultra", "models"], capture_output=True, text=True,
                             timeout=300, cwd="/").stdout.split()
    assert listing == [str(ROOT / "models" / name) for name in SHIPPED]

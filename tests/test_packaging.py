"""A non-editable install (the real wheel) carries the auto-registration hook and the model YAMLs."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    shipped = {n.split("/")[-1] for n in names if n.startswith("carafe_ultra/models/")}
    assert {p.name for p in (ROOT / "carafe_ultra" / "models").glob("*.yaml")} == shipped
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: AGPL-3.0-only" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_wheel_registers_in_a_fresh_interpreter(wheel, tmp_path):
    site_dir = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site_dir),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # -S hides this environment's site-packages (and with it the editable install); its packages stay
    # importable through PYTHONPATH, which processes no .pth. addsitedir then installs the wheel the way
    # site-packages would, .pth included.
    code = (
        "import site, sys; site.addsitedir(sys.argv[1])\n"
        "from ultralytics.nn.tasks import DetectionModel\n"
        "import carafe_ultra\n"
        "assert carafe_ultra.__file__.startswith(sys.argv[1]), carafe_ultra.__file__\n"
        "m = DetectionModel(carafe_ultra.model_yaml('yolov8n-carafe.yaml'), verbose=False)\n"
        "print('CARAFE layers:', sum(type(x).__name__ == 'CARAFE' for x in m.model))\n"
    )
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    run = subprocess.run([sys.executable, "-S", "-c", code, str(site_dir)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "CARAFE layers: 2" in run.stdout

"""Two-process DDP (gloo, CPU) with a CARAFE model (one with CARAFEDown too, one with CARAFE in its segmentation
head's mask branch, one in its depth decoder) built from YAML in each worker, without an import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carafe_ultra import model_yaml


@pytest.mark.parametrize("model,modules", [("yolov8n-carafe.yaml", 2), ("yolo11n-carafe-both.yaml", 4),
                                           ("yolo11n-seg-carafe-head.yaml", 3),
                                           ("yolo26n-depth-carafe-head.yaml", 5)])
def test_two_process_gloo_training_keeps_weights_equal(model, modules):
    worker = Path(__file__).with_name("ddp_worker.py")
    assert "carafe_ultra" not in worker.read_text().split('"""')[2]  # the worker's code never imports it
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
         model_yaml(model)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"carafe_modules={modules} weights_equal=True" in run.stdout

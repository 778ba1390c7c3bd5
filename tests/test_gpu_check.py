"""``python -m carafe_ultra gpu-check``: its dry run on the CPU exercises every stage's code and writes the report a GPU
run writes; a machine with only torch, CuPy, numpy and pytest runs every stage that needs nothing more."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from carafe_ultra.backends.kernel_variants import VARIANTS
from carafe_ultra.experiments import gpu_check

ROOT = Path(__file__).resolve().parents[1]
# What a bare CUDA machine may lack: everything of ours but torch, CuPy, numpy and pytest.
ABSENT = ("ultralytics", "yaml", "cv2", "matplotlib", "onnx", "onnxruntime", "openvino", "PIL", "scipy",
          "torchvision", "polars", "tensorrt")


def hide(folder: Path, modules: tuple[str, ...]) -> dict:
    """An environment whose interpreters lack ``modules``: a sitecustomize puts a view of site-packages without
    them in its place, so they are as absent as if never installed (``find_spec`` finds nothing)."""
    site = Path(sysconfig.get_paths()["purelib"])
    view = folder / "site-packages"
    view.mkdir(parents=True)
    for entry in site.iterdir():
        if entry.name not in modules:
            (view / entry.name).symlink_to(entry)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:] = [{str(view)!r} if p == {str(site)!r} else p for p in sys.path]\n")
    return {"PYTHONPATH": str(folder)}


def run_gpu_check(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carafe_ultra", "gpu-check", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def stages(report: dict) -> dict:
    return {s["name"]: s for s in report["stages"]}


def test_dry_run_on_a_machine_with_only_torch_cupy_numpy_and_pytest(tmp_path):
    run = run_gpu_check(tmp_path / "out", "--dry-run", env=hide(tmp_path / "site", ABSENT))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    by_name = stages(report)
    assert list(by_name) == list(gpu_check.STAGE_NAMES)
    assert all(set(s) == {"name", "status", "seconds", "detail"} for s in report["stages"])
    assert {name: s["status"] for name, s in by_name.items()} == {
        "tests": "passed", "sanitizer": "skipped", "kernels": "passed", "modules": "passed", "training": "skipped",
        "tensorrt": "skipped"}
    assert by_name["training"]["detail"] == "needs ultralytics, which does not import here"
    assert by_name["tensorrt"]["detail"] == "needs ultralytics, onnx, which does not import here"
    assert "compute-sanitizer is not on the PATH" in by_name["sanitizer"]["detail"]
    # 144 launches of every variant, 36 of the downsampling's kernels.
    assert "the kernel exercise ran without it (180 launches)" in by_name["sanitizer"]["detail"]
    # The fields of the report.
    assert report["dry_run"] and report["device"] == "cpu (dry run)" and report["torch"] == torch.__version__
    assert report["kernel_files"] == ["carafe_ultra/backends/kernels/carafe.cu", "carafe_ultra/backends/kernel_variants.py"]
    assert len(report["kernel_sha256"]) == 64 and report["copy_bandwidth_gbs"] > 0
    assert report["gpu_tests"]["failed"] == 0 and report["gpu_tests"]["passed"] > 0 and report["gpu_tests"]["skipped"] > 0
    assert report["sanitizer"] == {"errors": None, "tools": dict.fromkeys(gpu_check.SANITIZER_TOOLS, "not run")}
    pairs = {("float16", None), ("float32", None), ("bfloat16", None), ("float16", "float32")}
    assert {(c["case"]["dtype"], c["case"]["mask_dtype"], c["case"]["downsample"]) for c in report["cases"]} == {
        (*pair, downsample) for pair in pairs for downsample in (False, True)}
    assert all(c["max_abs_error_vs_torch_path"] < 3e-2 and c["forward_gbs"] > 0 for c in report["cases"])
    for dtype in ("float16", "float32"):
        for kernel, names in VARIANTS.items():
            entries = report["variants"][dtype][kernel]
            assert [e["variant"] for e in entries] == [*names, "torch", "torch_compile"]
            assert all(e["ms"] > 0 and e["gbs"] > 0 and e["max_abs_error"] < 3e-2 for e in entries)
    assert set(report["goals"]) == {"fwd_bw_fraction_fp16", "fwd_bw_fraction_fp32", "bwd_bw_fraction_fp16",
                                    "bwd_bw_fraction_fp32", "module_speedup_vs_unfold_matmul", "module_time_vs_dysample"}
    assert report["goals"]["fwd_bw_fraction_fp16"]["target"] == ">= 0.7"
    tables = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| kernels | passed |" in tables and "| forward | block |" in tables and "| fwd_bw_fraction_fp32 |" in tables
    assert "===== stage modules" in (tmp_path / "out" / "gpu-check.log").read_text()
    assert "training   skipped" in run.stdout


def test_dry_run_of_the_stages_that_need_ultralytics(tmp_path):
    run = run_gpu_check(tmp_path, "--dry-run", "--stages", "training", "tensorrt")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [(s["name"], s["status"]) for s in report["stages"]] == [("training", "passed"), ("tensorrt", "skipped")]
    for model in ("rtdetr_l", "yolo11n"):
        entry = report["training"][model]
        assert entry["carafe_ms"] > 0 and entry["nearest_ms"] > 0
        assert report["goals"][f"train_step_overhead_{model}"]["value"] == entry["overhead"]
    assert report["goals"]["train_step_overhead_rtdetr_l"]["target"] == "<= 0.03"
    stand_in = report["tensorrt"]["stand_in"]
    assert stand_in["format"] == "onnx" and stand_in["detections"] > 0 and stand_in["same"]
    assert "the export and comparison ran with ONNX Runtime instead" in stages(report)["tensorrt"]["detail"]


def test_without_a_gpu_the_check_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = run_gpu_check(tmp_path)
    assert run.returncode == 1 and "gpu-check needs a CUDA GPU, and torch sees none here" in run.stderr
    assert not (tmp_path / "gpu-check.json").exists()


def test_a_stage_past_its_time_limit_fails_and_the_check_goes_on(tmp_path, monkeypatch):
    slow = gpu_check.Stage("kernels", gpu_check.stage_kernels, 1)  # the interpreter alone takes longer to start
    monkeypatch.setattr(gpu_check, "STAGES", (slow, next(s for s in gpu_check.STAGES if s.name == "modules")))
    report = gpu_check.run_check(tmp_path, dry_run=True, stages=("kernels", "modules"), log=lambda line: None)
    assert [(s["name"], s["status"]) for s in report["stages"]] == [("kernels", "failed"), ("modules", "passed")]
    assert report["stages"][0]["detail"] == "timed out after 1 s (its limit)"


def test_junit_counts(tmp_path):
    xml = tmp_path / "report.xml"
    xml.write_text('<testsuites><testsuite tests="10" failures="1" errors="1" skipped="3"/></testsuites>')
    assert gpu_check.junit_counts(xml) == {"passed": 5, "failed": 2, "skipped": 3}


@pytest.mark.parametrize("output,errors", [
    ("========= ERROR SUMMARY: 0 errors\n", 0),
    ("========= ERROR SUMMARY: 3 errors\n", 3),
    ("========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n", 2),
    ("Traceback (most recent call last):\n", 1),  # no summary: the tool did not finish
])
def test_sanitizer_findings(output, errors):
    assert gpu_check.sanitizer_findings("===== some output\n" + output)["errors"] == errors


def test_goals_say_whether_they_are_met_and_by_how_much():
    assert gpu_check._goal("fwd_bw_fraction_fp16", 0.55) == {"value": 0.55, "target": ">= 0.7", "met": False,
                                                            "missed_by": pytest.approx(0.15)}
    assert gpu_check._goal("train_step_overhead_rtdetr_l", 0.01)["met"]
    assert gpu_check._goal("train_step_overhead_yolo11n", 0.2) == {"value": 0.2}  # measured, no target


def test_compute_sanitizer_is_found_in_the_cuda_toolkit_too(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    tool = tmp_path / "cuda" / "compute-sanitizer" / "compute-sanitizer"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    assert gpu_check.compute_sanitizer() == str(tool)


def test_an_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no stage everything; the stages are tests, sanitizer, kernels, modules"):
        gpu_check.run_check(tmp_path, dry_run=True, stages=("everything",))

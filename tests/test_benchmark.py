"""The CPU benchmark runs end to end, and its baseline computes the same thing as the op."""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from carafe_ultra import CARAFE
from carafe_ultra.backends.cuda_backend import use_launcher
from carafe_ultra.backends.kernel_types import Specialisation
from carafe_ultra.experiments.baselines import UnfoldMatmulCARAFE, unfold_matmul_carafe, unfold_matmul_carafe_downsample
from carafe_ultra.experiments.benchmark import (
    Case,
    PeakMemory,
    cpu_reassembly_comparison,
    first_use_check_ms,
    format_cpu_comparison,
    format_gpu_report,
    kernel_files,
    kernel_sha256,
)
from carafe_ultra.experiments.timing import interleaved_seconds, synchronizer
from tests.helpers import random_down_inputs, random_inputs
from tests.host_launcher import FaultyLauncher, HostShimLauncher
from tests.reference import carafe_downsample_reference, carafe_reference

ROOT = Path(__file__).resolve().parents[1]


def test_unfold_matmul_baseline_is_correct():
    features, masks = random_inputs(2, 3, 4, 5, 5, 1, 3)
    torch.testing.assert_close(unfold_matmul_carafe(features, masks, 5, 3), carafe_reference(features, masks, 5, 1, 3))


def test_unfold_matmul_downsampling_baseline_is_correct():
    features, masks = random_down_inputs(2, 3, 7, 6, 5, 1, 2)
    torch.testing.assert_close(unfold_matmul_carafe_downsample(features, masks, 5, 2),
                               carafe_downsample_reference(features, masks, 5, 1, 2))


def test_interleaved_seconds_takes_turns_and_drops_the_warm_up():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or time.sleep(0.01)}
    samples = interleaved_seconds(runs, repeats=3, warmup=2, synchronize=lambda: calls.append("sync"))
    assert calls == ["sync", "a", "sync", "sync", "b", "sync"] * 5  # turns within each round, synchronised
    assert {name: len(times) for name, times in samples.items()} == {"a": 3, "b": 3}
    assert min(samples["b"]) >= 0.01 > max(samples["a"])
    with pytest.raises(ValueError, match="need repeats >= 1 and warmup >= 0, got 0 and 1"):
        interleaved_seconds(runs, repeats=0, warmup=1)


def test_synchronizer_waits_for_cuda_only():
    assert synchronizer(torch.device("cpu")) is None
    cuda = synchronizer(torch.device("cuda", 1))
    assert cuda.func is torch.cuda.synchronize and cuda.args == (torch.device("cuda", 1),)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ for the host shim")
def test_first_use_check_ms_times_the_check_after_an_untimed_build(tmp_path):
    spec = Specialisation(torch.float16, torch.float32, 5, 2)
    with use_launcher(FaultyLauncher(HostShimLauncher(tmp_path))) as launcher:
        ms = first_use_check_ms(spec, torch.device("cpu"), repeats=3)
    assert ms > 0
    # Each check runs every kernel once: one warm-up (the build) and three timed checks.
    assert launcher.launches == {"forward": 4, "backward_masks": 4, "backward_features": 4}


def test_peak_memory_sees_a_large_allocation():
    meter = PeakMemory()
    peak = meter.measure(lambda: torch.ones(64, 2**20 // 4))  # 64 MiB, touched
    assert 60 * 2**20 < peak < 80 * 2**20


def test_comparison_reports_every_mode():
    # Large enough that the unfolded input (6.5 MiB) stands out of the allocator's noise: smaller peaks read as 0.
    result = cpu_reassembly_comparison(Case(n=1, channels=64, height=32, width=32, kernel=5), repeats=1)
    for mode in ("forward", "forward_backward"):
        assert set(result[mode]) == {"median_ms", "speedup", "peak_added_mib", "memory_ratio"}
        assert result[mode]["speedup"] > 0 and result[mode]["memory_ratio"] > 1
    assert "forward_backward" in format_cpu_comparison(result)


def test_downsampling_comparison_through_the_command_line(tmp_path):
    out = tmp_path / "down.json"
    run = subprocess.run([sys.executable, "-m", "carafe_ultra", "benchmark", "--downsample", "--small", "--repeats", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "32x32 -> /2 (CARAFE++ downsampling), k=5" in run.stdout
    result = json.loads(out.read_text())
    assert result["case"]["downsample"] and result["forward"]["memory_ratio"] > 1


def test_script_writes_json(tmp_path):
    out = tmp_path / "cpu.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--repeats", "1", "--json", str(out), "--small"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "speedup" in run.stdout and out.exists()


def test_unfold_matmul_module_equals_carafe_module():
    ours, blog = CARAFE(16, kernel_size=5), UnfoldMatmulCARAFE(16, kernel_size=5)
    blog.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 7, 6)
    torch.testing.assert_close(blog(x), ours(x))


def test_gpu_report_helpers_without_a_gpu():
    files = kernel_files()
    assert [f.name for f in files] == ["carafe.cu", "kernel_variants.py"]  # what runs, and which variant does
    assert kernel_sha256(files) == hashlib.sha256(files[0].read_bytes() + files[1].read_bytes()).hexdigest()
    case = {"n": 16, "channels": 256, "height": 40, "width": 40, "kernel": 5, "scale": 2, "dtype": "float16",
            "mask_dtype": None}
    report = {"device": "GPU", "copy_bandwidth_gbs": 3000.0, "first_use_check_ms": 12.5,
              "goals": {"fwd_bw_fraction_fp16": 0.8},
              "cases": [{"case": case, "forward_ms": 0.1, "forward_gbs": 2400.0, "backward_ms": 0.3,
                         "backward_gbs": 1600.0}],
              "variants": {"float16": {"forward": [{"variant": "row", "ms": 0.05}]}},
              "modules": [{"module": "dysample", "case": case, "forward_backward_ms": 1.5}]}
    text = format_gpu_report(report)
    assert "copy bandwidth 3000 GB/s, first-use check 12.5 ms" in text and "fwd_bw_fraction_fp16=0.800" in text
    assert "forward float16: row 0.050 ms" in text and "module dysample" in text


def test_export_cost_counts_nodes_and_times_each_runtime_in_a_process_of_its_own(monkeypatch):
    pytest.importorskip("openvino")
    from carafe_ultra.experiments import export_cost as cost

    processes = []
    timed = cost._timed_in_a_process_of_its_own
    monkeypatch.setattr(cost, "_timed_in_a_process_of_its_own",
                        lambda runtime, *args: processes.append(runtime) or timed(runtime, *args))
    pytest.importorskip("nncf")
    result = cost.export_cost("yolov8n.yaml", imgsz=64, repeats=2, rounds=2, profile=True)
    # Never two runtimes in one process.
    assert processes == ["onnxruntime", "onnxruntime", "openvino", "openvino", "openvino-int8", "openvino-int8"]
    nodes = result["onnx_nodes"]
    assert result["carafe_layers"] == 2 and nodes["nearest"]["by_op"]["Resize"] == 2
    assert "Resize" not in nodes["carafe"]["by_op"] or nodes["carafe"]["by_op"]["Resize"] == 0
    assert result["nodes_added"] == nodes["carafe"]["total"] - nodes["nearest"]["total"] > 0
    assert set(result["latency_ms"]) == {"onnxruntime", "openvino", "openvino-int8"}
    assert result["fake_quantize"]["carafe"] >= result["fake_quantize"]["nearest"] > 0
    for ms in result["latency_ms"].values():
        ratios = [r["carafe"] / r["nearest"] for r in ms["per_round"]]
        assert len(ratios) == 2 and ms["ratio"] == pytest.approx(sum(ratios) / 2)
        assert ms["ratio_range"] == [min(ratios), max(ratios)] and ms["nearest"] > 0 and ms["carafe"] > 0
    profile = result["profile"]
    assert 0 < profile["carafe_layers_ms"] < profile["total_ms"]
    assert profile["carafe_layers_by_op_ms"]["MatMul"] > 0 and "Resize" not in profile["carafe_layers_by_op_ms"]
    text = cost.format_export_cost(result)
    assert "ONNX nodes:" in text and "each runtime in a process of its own" in text and "in its CARAFE layers" in text


@pytest.mark.parametrize("heads,layers,said", [(True, 3, "CARAFE in the neck and the mask branch"),
                                               ("only", 1, "CARAFE in the mask branch")])
def test_export_cost_of_a_carafe_mask_branch_against_the_stock_seg_model(heads, layers, said):
    from carafe_ultra.experiments.export_cost import export_cost, format_export_cost

    result = export_cost("yolo11n-seg.yaml", imgsz=64, repeats=2, rounds=1, runtimes=("onnxruntime",), profile=True,
                         heads=heads)
    nodes = result["onnx_nodes"]
    assert result["carafe_layers"] == layers and nodes["nearest"]["by_op"]["ConvTranspose"] == 1  # the stock Proto's
    assert "ConvTranspose" not in nodes["carafe"]["by_op"] and nodes["carafe"]["by_op"]["Gather"] == layers
    assert nodes["carafe"]["by_op"].get("Resize", 0) == (2 if heads == "only" else 0)  # the neck's, kept or swapped
    assert 0 < result["profile"]["carafe_layers_ms"] < result["profile"]["total_ms"]
    assert f"{said} against the stock model" in format_export_cost(result)


def test_export_cost_of_a_carafe_semantic_decoder_against_the_stock_semantic_model():
    from carafe_ultra.experiments.export_cost import export_cost, format_export_cost

    result = export_cost("yolo26n-sem.yaml", imgsz=64, repeats=2, rounds=1, runtimes=("onnxruntime",), heads=True)
    nodes = result["onnx_nodes"]
    assert result["carafe_layers"] == 3 and nodes["nearest"]["by_op"]["Resize"] == 3  # the neck's two, the logits' ×8
    # The logits' last ×4 after the decoder's CARAFE ×2, then the baked class map.
    assert nodes["carafe"]["by_op"]["Resize"] == 1 and nodes["carafe"]["by_op"]["ArgMax"] == 1
    assert "CARAFE in the neck and the semantic decoder against the stock model" in format_export_cost(result)


@pytest.mark.parametrize("runtimes", [("tensorrt",), ()])
def test_export_cost_refuses_an_unknown_runtime(runtimes):
    from carafe_ultra.experiments.export_cost import export_cost

    with pytest.raises(ValueError, match="runtimes must be among onnxruntime, openvino, openvino-int8; got"):
        export_cost("yolov8n.yaml", imgsz=64, runtimes=runtimes)


def test_the_notes_hold_the_budget_of_every_variant():
    pytest.importorskip("cupy")  # the cuda extras bring the NVRTC wheels; cuobjdump comes with Triton
    import torch

    from carafe_ultra.backends.kernel_variants import VARIANTS
    from carafe_ultra.experiments import kernel_budget, nvrtc

    notes = (ROOT / "benchmarks" / "NOTES.md").read_text()
    for dtype in (torch.float32, torch.float16):
        budgets = kernel_budget.budgets(dtype=dtype)
        assert [(b.kernel, b.variant) for b in budgets] == [(k, v) for k, names in VARIANTS.items() for v in names]
        assert all(0 < b.predicted_fraction <= 1 and b.predicted_us >= b.floor_us for b in budgets)
        if nvrtc.version(nvrtc.load(13) or nvrtc.load(12)) == (13, 0):  # the release the notes were read with
            rows = kernel_budget.markdown(budgets).splitlines()[2:]
            assert [row for row in rows if row not in notes] == []


def test_the_hot_loop_is_the_shortest_loop_with_the_most_multiply_adds():
    from carafe_ultra.experiments.kernel_budget import Instruction, hot_loop

    def code(*lines):
        return [Instruction(16 * i, line.split()[0], line) for i, line in enumerate(lines)]

    straight = code("LDG R0", "FFMA R1", "STG R1", "EXIT")
    assert hot_loop(straight) == straight  # no loop: the whole function
    looped = code("LDC R0", "LDG R1", "FFMA R2", "FFMA R3", "ISETP P0", "ISETP P1", "BRA 0x10",  # checked twin
                  "LDG R1", "FFMA R2", "FFMA R3", "BRA 0x70",  # the fast path
                  "IADD R4", "BRA 0xb0", "EXIT")  # a loop without multiply-adds
    assert [i.text for i in hot_loop(looped)] == ["LDG R1", "FFMA R2", "FFMA R3", "BRA 0x70"]

"""Side-by-side speed and memory measurements (the library behind ``scripts/benchmark.py``).

Only ratios measured in one run mean anything on a shared machine: every case runs our op and the
baseline alternately on the same inputs, and reports medians.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import json
import multiprocessing
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..backends import kernel_variants
from ..backends.cuda_backend import (
    carafe_backward,
    carafe_down_backward,
    carafe_down_forward,
    carafe_forward,
    first_use_check,
    run_backward_features,
    run_backward_masks,
    run_forward,
)
from ..backends.cupy_launcher import KERNEL_SOURCE
from ..backends.kernel_types import Specialisation
from ..backends.kernel_variants import VARIANTS
from ..backends.torch_backend import carafe_torch, carafe_traceable, reassemble, reassemble_backward
from ..backends.torch_downsample import carafe_downsample_torch
from ..dysample import DySample
from ..functional import carafe, carafe_downsample
from ..module import CARAFE
from ..yamls import find_model_yaml
from .baselines import UnfoldMatmulCARAFE, unfold_matmul_carafe, unfold_matmul_carafe_downsample
from .export_cost import export_cost, format_export_cost, format_int8_accuracy, int8_accuracy
from .kernel_budget import Budget, budget_report, min_bytes_per_output
from .kernel_budget import markdown as budget_markdown
from .timing import interleaved_seconds, median_ms, synchronizer


@dataclass(frozen=True)
class Case:
    """One reassembly problem: features (n, channels, height, width) upsampled by ``scale`` with window ``kernel``
    (with ``downsample``: downsampled by CARAFE++ at stride ``scale``)."""

    n: int = 4
    channels: int = 256
    height: int = 40
    width: int = 40
    kernel: int = 5
    scale: int = 2
    dtype: str = "float32"
    mask_dtype: str | None = None  # None: the features' dtype; float32 with float16 features is what AMP hands over
    downsample: bool = False

    def masks_size(self) -> tuple[int, int]:
        """The masks' (and output's) height and width."""
        if self.downsample:
            return -(-self.height // self.scale), -(-self.width // self.scale)
        return self.height * self.scale, self.width * self.scale

    def inputs(self, device: str = "cpu", requires_grad: bool = False) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(self.n, self.channels, self.height, self.width, generator=generator)
        logits = torch.randn(self.n, self.kernel**2, *self.masks_size(), generator=generator)
        masks = logits.softmax(dim=1)
        return tuple(t.to(device, d).requires_grad_(requires_grad) for t, d in zip((features, masks), self.dtypes()))

    def dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """(features' dtype, masks' dtype)."""
        return getattr(torch, self.dtype), getattr(torch, self.mask_dtype or self.dtype)


class PeakMemory:
    """Peak bytes a CPU call adds on top of what is live when it starts (Linux).

    glibc serves large blocks with mmap and unmaps them on free, so the resident set tracks live tensors;
    fixing the mmap threshold stops glibc from raising it (and caching freed blocks), trimming the heap before each
    call returns what earlier work freed there (else a call could reuse those resident pages unseen), and writing 5
    to /proc/self/clear_refs resets the kernel's high-water mark before each call.
    """

    _M_MMAP_THRESHOLD = -3

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("CPU peak-memory measurement needs Linux (/proc/self/status)")
        self._libc = ctypes.CDLL("libc.so.6")
        self._libc.mallopt(self._M_MMAP_THRESHOLD, 64 * 1024)

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} missing from /proc/self/status")

    def measure(self, fn: Callable[[], object]) -> int:
        self._libc.malloc_trim(0)
        baseline = self._status_kib("VmRSS:")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        result = fn()
        del result
        return (self._status_kib("VmHWM:") - baseline) * 1024


def _forward(op: Callable[[Tensor, Tensor], Tensor], case: Case) -> Callable[[], Tensor]:
    features, masks = case.inputs()

    def run() -> Tensor:
        with torch.no_grad():
            return op(features, masks)

    return run


def _forward_backward(op: Callable[[Tensor, Tensor], Tensor], case: Case) -> Callable[[], None]:
    features, masks = case.inputs(requires_grad=True)

    def run() -> None:
        features.grad = masks.grad = None
        op(features, masks).sum().backward()

    return run


def _reassembly_ops(case: Case) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    if case.downsample:
        return {
            "carafe_ultra": lambda f, m: carafe_downsample(f, m, case.kernel, 1, case.scale),
            "unfold_matmul": lambda f, m: unfold_matmul_carafe_downsample(f, m, case.kernel, case.scale),
        }
    return {
        "carafe_ultra": lambda f, m: carafe(f, m, case.kernel, 1, case.scale),
        "unfold_matmul": lambda f, m: unfold_matmul_carafe(f, m, case.kernel, case.scale),
    }


_MODES = {"forward": _forward, "forward_backward": _forward_backward}


def _peak_added_bytes(case: Case, mode: str, name: str) -> int:
    """Runs in a fresh process, so no freed-but-cached memory from earlier runs hides a peak."""
    meter = PeakMemory()  # before any tensor exists
    run = _MODES[mode](_reassembly_ops(case)[name], case)
    run()  # warm-up: one-time allocations are not the op's
    return meter.measure(run)


def cpu_reassembly_comparison(case: Case, repeats: int = 7) -> dict:
    """Our PyTorch path against the unfold + matmul formulation: median times, peak memory, ratios."""
    ops = _reassembly_ops(case)
    result: dict = {"case": asdict(case), "threads": torch.get_num_threads()}
    for mode, build in _MODES.items():
        runs = {name: build(op, case) for name, op in ops.items()}
        samples = interleaved_seconds(runs, repeats, warmup=2)
        ms = {name: 1e3 * statistics.median(times) for name, times in samples.items()}
        peaks = {}
        for name in runs:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                peaks[name] = pool.apply(_peak_added_bytes, (case, mode, name))
        result[mode] = {
            "median_ms": ms,
            "speedup": ms["unfold_matmul"] / ms["carafe_ultra"],
            "peak_added_mib": {name: peak / 2**20 for name, peak in peaks.items()},
            "memory_ratio": peaks["unfold_matmul"] / max(peaks["carafe_ultra"], 1),
        }
    return result


def format_cpu_comparison(result: dict) -> str:
    case = result["case"]
    what = f"/{case['scale']} (CARAFE++ downsampling)" if case.get("downsample") else f"x{case['scale']}"
    lines = [
        f"CARAFE reassembly on CPU ({result['threads']} threads): N={case['n']} C={case['channels']} "
        f"{case['height']}x{case['width']} -> {what}, k={case['kernel']}, {case['dtype']}",
        f"{'mode':<18}{'carafe_ultra ms':>17}{'unfold+matmul ms':>18}{'speedup':>9}"
        f"{'ours MiB':>10}{'theirs MiB':>12}{'mem ratio':>11}",
    ]
    for mode in ("forward", "forward_backward"):
        r = result[mode]
        lines.append(
            f"{mode:<18}{r['median_ms']['carafe_ultra']:>17.1f}{r['median_ms']['unfold_matmul']:>18.1f}"
            f"{r['speedup']:>8.2f}x{r['peak_added_mib']['carafe_ultra']:>10.1f}"
            f"{r['peak_added_mib']['unfold_matmul']:>12.1f}{r['memory_ratio']:>10.2f}x"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# GPU: kernel bandwidth against the device's own copy bandwidth, every kernel variant, and module speed against the
# rivals. Each function takes the device; on a CPU (with the host shim as the CUDA path's launcher) the same code
# runs on the small cases, which is how ``gpu-check --dry-run`` proves it before a GPU sees it.

GPU_REFERENCE = Case(n=16, channels=256, height=40, width=40, kernel=5, scale=2)  # RT-DETR-l P4 -> P3, batch 16
SMALL_REFERENCE = Case(n=1, channels=8, height=6, width=5, kernel=5, scale=2)  # the same code, on a CPU
# What a dtype pair is called in the reports: features, then masks where they differ (what AMP hands over).
PAIRS = (("float16", None), ("float32", None), ("bfloat16", None), ("float16", "float32"))


def kernel_files() -> list[Path]:
    """The files that decide what the kernels compute and which variant runs."""
    return [KERNEL_SOURCE, Path(kernel_variants.__file__)]


def kernel_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def copy_bandwidth_gbs(device: torch.device, mib: int = 1024) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    source = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    ms = median_ms(lambda _: target.copy_(source), device, repeats=20)
    return 2 * source.numel() / (ms * 1e-3) / 1e9


def _input_sets(case: Case, device: torch.device, rotate: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``rotate`` distinct (features, masks, grad_out) sets of ``case`` on ``device``."""
    sets = []
    for i in range(rotate):
        features, masks = case.inputs(str(device))
        features.add_(i)
        grad_out = torch.randn(case.n, case.channels, *case.masks_size(), device=device).to(features.dtype)
        sets.append((features, masks, grad_out))
    return sets


def _case_bytes(case: Case, kernel: str) -> int:
    """The fewest bytes ``kernel`` moves on ``case`` (each input read once, each output written once)."""
    feature_bytes, mask_bytes = (torch.empty(0, dtype=d).element_size() for d in case.dtypes())
    if case.downsample:  # every kernel reads or writes the features, the output (or its gradient) and the masks once
        pixels = case.masks_size()[0] * case.masks_size()[1]
        features = case.n * case.channels * (case.height * case.width + pixels)
        return features * feature_bytes + case.n * case.kernel**2 * pixels * mask_bytes
    outputs = case.n * case.channels * case.height * case.width * case.scale**2
    shape = {"channels": case.channels, "groups": 1, "kernel": case.kernel, "scale": case.scale}
    return round(outputs * min_bytes_per_output(kernel, shape, feature_bytes, mask_bytes))


def _kernel_case(case: Case, device: torch.device, repeats: int, rotate: int = 3) -> dict:
    """The table's kernels (through the CUDA path's custom ops; CARAFE++ downsampling's for a ``downsample`` case) on
    ``case``: times, bandwidth, and their error against the PyTorch path."""
    forward, backward, op, torch_path = ((carafe_down_forward, carafe_down_backward, carafe_downsample,
                                          carafe_downsample_torch) if case.downsample
                                         else (carafe_forward, carafe_backward, carafe, carafe_torch))
    sets = _input_sets(case, device, rotate)
    forward_ms = median_ms(lambda i: forward(*sets[i][:2], case.kernel, 1, case.scale), device, repeats, rotate=rotate)
    backward_ms = median_ms(lambda i: backward(sets[i][2], *sets[i][:2], case.kernel, 1, case.scale, True, True),
                            device, repeats, rotate=rotate)
    forward_bytes = _case_bytes(case, "forward")
    backward_bytes = _case_bytes(case, "backward_masks") + _case_bytes(case, "backward_features")
    features, masks, _ = sets[0]
    error = (op(features, masks, case.kernel, 1, case.scale).float()
             - torch_path(features.float(), masks.float(), case.kernel, 1, case.scale)).abs().max().item()
    return {"case": asdict(case), "forward_ms": forward_ms, "backward_ms": backward_ms,
            "forward_bytes": forward_bytes, "backward_bytes": backward_bytes,
            "forward_gbs": forward_bytes / (forward_ms * 1e-3) / 1e9,
            "backward_gbs": backward_bytes / (backward_ms * 1e-3) / 1e9, "max_abs_error_vs_torch_path": error}


def _yardsticks(kernel: str, case: Case, compile_backend: str) -> dict[str, Callable]:
    """The PyTorch path (what a fallback runs) and the plain ops of the export path under torch.compile (Inductor
    fuses the taps), computing what ``kernel`` computes: each a function of (features, masks, grad_out). A gradient
    yardstick times the backward pass alone: its graph is built once per input set."""
    k, s = case.kernel, case.scale
    traceable = torch.compile(functools.partial(carafe_traceable, kernel_size=k, group_size=1, scale_factor=s),
                              backend=compile_backend, dynamic=False)
    graphs: dict[int, tuple[Tensor, Tensor]] = {}

    def compiled(features: Tensor, masks: Tensor, grad_out: Tensor) -> Tensor:
        if kernel == "forward":
            with torch.no_grad():
                return traceable(features, masks)
        if features.data_ptr() not in graphs:
            wanted = (masks if kernel == "backward_masks" else features).detach().requires_grad_()
            out = traceable(features, wanted) if kernel == "backward_masks" else traceable(wanted, masks)
            graphs[features.data_ptr()] = out, wanted
        out, wanted = graphs[features.data_ptr()]
        return torch.autograd.grad(out, wanted, grad_out, retain_graph=True)[0]

    def eager(features: Tensor, masks: Tensor, grad_out: Tensor) -> Tensor:
        if kernel == "forward":
            return reassemble(features, masks, k, 1, s)
        grads = reassemble_backward(grad_out, features, masks, k, 1, s, kernel == "backward_features",
                                    kernel == "backward_masks")
        return grads[0] if kernel == "backward_features" else grads[1]

    return {"torch": eager, "torch_compile": compiled}


_KERNEL_RUNS = {"forward": lambda spec, f, m, go: run_forward(spec, f, m, 1),
                "backward_masks": lambda spec, f, m, go: run_backward_masks(spec, go, f, m, 1),
                "backward_features": lambda spec, f, m, go: run_backward_features(spec, go, f, m, 1)}


def variant_timings(case: Case, device: torch.device, repeats: int, compile_backend: str = "inductor",
                    rotate: int = 3) -> dict[str, list[dict]]:
    """Every variant of every kernel on ``case``, and the PyTorch yardsticks, timed on the same inputs: kernel ->
    [{variant, ms, gbs, bandwidth ... }]. Each result's largest error against the PyTorch path in float64 comes with
    it (a wrong variant shows there, not as a fast time)."""
    sets = _input_sets(case, device, rotate)
    dtypes = case.dtypes()
    f64, m64, g64 = (t.double() for t in sets[0])
    want = {"forward": reassemble(f64, m64, case.kernel, 1, case.scale),
            **dict(zip(("backward_features", "backward_masks"),
                       reassemble_backward(g64, f64, m64, case.kernel, 1, case.scale, True, True)))}
    results: dict[str, list[dict]] = {}
    for kernel, names in VARIANTS.items():
        nbytes = _case_bytes(case, kernel)
        runs = {name: functools.partial(_KERNEL_RUNS[kernel],
                                        Specialisation(*dtypes, case.kernel, case.scale, **{kernel: name}))
                for name in names}
        runs.update(_yardsticks(kernel, case, compile_backend))
        entries = []
        for name, run in runs.items():
            got = run(*sets[0])
            error = (got.double() - want[kernel]).abs().max().item()
            ms = median_ms(lambda i, run=run: run(*sets[i]), device, repeats, rotate=rotate)
            entries.append({"variant": name, "ms": ms, "gbs": nbytes / (ms * 1e-3) / 1e9, "bytes": nbytes,
                            "max_abs_error": error})
        results[kernel] = entries
    return results


def first_use_check_ms(spec: Specialisation, device: torch.device | None = None, repeats: int = 5) -> float:
    """Median time of the CUDA path's first-use check of ``spec`` on ``device`` (default: the current GPU) once
    its kernels are built and loaded, which the untimed warm-up call does (or CuPy's disk cache)."""
    device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
    samples = interleaved_seconds({"check": functools.partial(first_use_check, device, spec)}, repeats, warmup=1,
                                  synchronize=synchronizer(device))
    return 1e3 * statistics.median(samples["check"])


def kernel_report(device: torch.device, repeats: int = 50, compile_backend: str = "inductor") -> dict:
    """Copy bandwidth, the table's kernels on the reference case in every dtype pair (and three more shapes in
    float16), CARAFE++ downsampling's kernels in every dtype pair, every variant on the reference case in float16 and
    float32, and the first-use check's cost. On a CPU, the same on the small cases."""
    small = device.type != "cuda"
    reference = SMALL_REFERENCE if small else GPU_REFERENCE
    extras = () if small else (Case(n=16, channels=256, height=80, width=80, kernel=5, scale=2),
                               Case(n=16, channels=256, height=20, width=20, kernel=3, scale=2),
                               Case(n=8, channels=128, height=40, width=40, kernel=7, scale=4))
    cases = [_kernel_case(replace(reference, dtype=f, mask_dtype=m), device, repeats) for f, m in PAIRS]
    cases += [_kernel_case(replace(extra, dtype="float16"), device, repeats) for extra in extras]
    # CARAFE++ downsampling's kernels on the neck's downsampling of the same features (twice the size, stride 2).
    down = replace(reference, height=2 * reference.height, width=2 * reference.width, downsample=True)
    cases += [_kernel_case(replace(down, dtype=f, mask_dtype=m), device, repeats) for f, m in PAIRS]
    variants = {dtype: variant_timings(replace(reference, dtype=dtype), device, repeats, compile_backend)
                for dtype in ("float16", "float32")}
    return {"copy_bandwidth_gbs": copy_bandwidth_gbs(device, 64 if small else 1024),
            "first_use_check_ms": first_use_check_ms(Specialisation(torch.float16, torch.float32, 5, 2), device),
            "cases": cases, "variants": variants}


def _module_case(name: str, module: nn.Module, case: Case, dtype: torch.dtype, device: torch.device, repeats: int,
                 rotate: int = 3) -> dict:
    module = module.to(device)
    inputs = [torch.randn(case.n, case.channels, case.height, case.width, device=device, requires_grad=True)
              for _ in range(rotate)]

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = module(inputs[i])
        out.float().sum().backward()

    ms = median_ms(step, device, repeats, rotate=rotate)
    return {"module": name, "case": {**asdict(case), "dtype": str(dtype).replace("torch.", "")}, "forward_backward_ms": ms}


def module_report(device: torch.device, repeats: int = 50) -> list[dict]:
    """CARAFE's module against the unfold + matmul formulation (same weights) and DySample, forward + backward,
    float32 and under autocast (float16 on a GPU, bfloat16 on a CPU) on the reference case."""
    case = SMALL_REFERENCE if device.type != "cuda" else GPU_REFERENCE
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    results = []
    for dtype in (torch.float32, half):
        ours = CARAFE(case.channels, kernel_size=case.kernel, compressed_channels=64)
        blog = UnfoldMatmulCARAFE(case.channels, kernel_size=case.kernel, compressed_channels=64)
        blog.load_state_dict(ours.state_dict())
        for name, module in (("carafe_ultra", ours), ("unfold_matmul", blog), ("dysample", DySample(case.channels))):
            results.append(_module_case(name, module, case, dtype, device, repeats))
    return results


def bandwidth_goals(kernels: dict, modules: list[dict]) -> dict:
    """What the kernel and module measurements say about the goals (values; the targets are gpu_check's)."""
    bandwidth = kernels["copy_bandwidth_gbs"]
    # The reference case in each dtype pair: the first cases (the other shapes and the downsampling's come after).
    reference = {(c["case"]["dtype"], c["case"]["mask_dtype"]): c for c in kernels["cases"][: len(PAIRS)]}
    module_ms = {(m["module"], m["case"]["dtype"]): m["forward_backward_ms"] for m in modules}
    return {
        "fwd_bw_fraction_fp16": reference["float16", None]["forward_gbs"] / bandwidth,
        "fwd_bw_fraction_fp32": reference["float32", None]["forward_gbs"] / bandwidth,
        "bwd_bw_fraction_fp16": reference["float16", None]["backward_gbs"] / bandwidth,
        "bwd_bw_fraction_fp32": reference["float32", None]["backward_gbs"] / bandwidth,
        "module_speedup_vs_unfold_matmul": module_ms["unfold_matmul", "float32"] / module_ms["carafe_ultra", "float32"],
        "module_time_vs_dysample": module_ms["carafe_ultra", "float32"] / module_ms["dysample", "float32"],
    }


def gpu_report(repeats: int = 50) -> dict:
    """What ``scripts/benchmark.py --gpu`` measures (the kernel and module stages of ``gpu-check``)."""
    import cupy

    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    kernels, modules = kernel_report(device, repeats), module_report(device, repeats)
    root = Path(__file__).resolve().parents[2]
    files = kernel_files()
    return {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cupy": cupy.__version__,
            "kernel_files": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in files],
            "kernel_sha256": kernel_sha256(files), **kernels, "modules": modules,
            "goals": bandwidth_goals(kernels, modules)}


def format_gpu_report(report: dict) -> str:
    lines = [f"{report['device']}: copy bandwidth {report['copy_bandwidth_gbs']:.0f} GB/s, "
             f"first-use check {report['first_use_check_ms']:.1f} ms per specialisation"]
    for case in report["cases"]:
        c = case["case"]
        masks = f" (masks {c['mask_dtype']})" if c.get("mask_dtype") else ""
        down = " downsampling" if c.get("downsample") else ""
        label = (f"N={c['n']} C={c['channels']} {c['height']}x{c['width']} k={c['kernel']} s={c['scale']}{down} "
                 f"{c['dtype']}{masks}")
        lines.append(f"  kernels {label}: fwd {case['forward_ms']:.3f} ms ({case['forward_gbs']:.0f} GB/s), "
                     f"bwd {case['backward_ms']:.3f} ms ({case['backward_gbs']:.0f} GB/s)")
    for dtype, kernels in report.get("variants", {}).items():
        for kernel, entries in kernels.items():
            timings = ", ".join(f"{e['variant']} {e['ms']:.3f} ms" for e in entries)
            lines.append(f"  {kernel} {dtype}: {timings}")
    for m in report.get("modules", []):
        lines.append(f"  module {m['module']:<14} {m['case']['dtype']}: fwd+bwd {m['forward_backward_ms']:.3f} ms")
    lines.append("goals: " + ", ".join(f"{k}={v:.3f}" for k, v in report["goals"].items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options (``python -m carafe_ultra benchmark``, ``scripts/benchmark.py``)."""
    mode = parser.add_mutually_exclusive_group()  # neither: the CPU comparison
    mode.add_argument("--gpu", action="store_true", help="benchmark the CUDA path (needs a GPU and CuPy)")
    mode.add_argument("--export", action="store_true",
                        help="the cost of CARAFE in an exported model: ONNX nodes, ONNX Runtime and OpenVINO latency "
                             "(each runtime in a process of its own, several rounds)")
    mode.add_argument("--int8-accuracy", dest="int8_accuracy", nargs="+", metavar="WEIGHTS",
                      help="trained checkpoints: the accuracy of their OpenVINO FP32 and INT8 exports on --data")
    mode.add_argument("--budget", action="store_true",
                      help="the static budget of every kernel variant from its sm_90 machine code (no GPU needed)")
    parser.add_argument("--model", default="yolov8n.yaml",
                        help="--export: any stock or shipped YOLO or RT-DETR YAML (default yolov8n.yaml)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="image size (--export: default 640; --int8-accuracy: the size each was trained at)")
    parser.add_argument("--data", default=None, help="--int8-accuracy: the data YAML to calibrate and validate on")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per implementation (default: 7 CPU, median reported; 40 --export, fastest "
                             "reported)")
    parser.add_argument("--rounds", type=int, default=5, help="--export: rounds, each a fresh process per runtime")
    parser.add_argument("--profile", action="store_true",
                        help="--export: also ONNX Runtime's per-operator profile of the CARAFE model")
    parser.add_argument("--heads", nargs="?", const=True, default=False, choices=[True, "only"], metavar="only",
                        help="--export of a segmentation, semantic or depth model: CARAFE in its head's own "
                             "upsampling too (convert --heads), against the stock model; --heads only: there alone")
    parser.add_argument("--json", metavar="PATH", help="write the measurements to this JSON file")
    parser.add_argument("--small", action="store_true", help="CPU: a tiny case, to check the script itself quickly")
    parser.add_argument("--downsample", action="store_true",
                        help="CPU: CARAFE++ downsampling (N=4, C=256, 80x80 -> 40x40, k=5, RT-DETR-l's neck) instead "
                             "of the upsampling")


def main(args: argparse.Namespace) -> None:
    """Run the benchmark the parsed options describe, print it, and write the JSON if asked."""
    for name in ("repeats", "imgsz", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            args.error(f"--{name} must be a positive int, got {getattr(args, name)}")
    if args.export:
        try:
            find_model_yaml(args.model)  # before any export work
        except FileNotFoundError as error:
            args.error(str(error))
    if args.int8_accuracy:
        missing = [w for w in args.int8_accuracy if not Path(w).is_file()]
        if missing or not args.data:
            args.error(f"--int8-accuracy needs trained checkpoints and --data; not files: {', '.join(missing)}"
                       if missing else "--int8-accuracy needs --data, the data YAML to calibrate and validate on")
    if args.gpu:
        result = gpu_report(args.repeats or 50)
        print(format_gpu_report(result))
    elif args.budget:
        result = budget_report()
        for dtype, budgets in result["budgets"].items():
            print(f"{dtype}, reference case (N=16, C=256, 40x40 -> 80x80, k=5), NVRTC {result['nvrtc']}:")
            print(budget_markdown([Budget(**b) for b in budgets]) + "\n")
    elif args.export:
        result = export_cost(args.model, args.imgsz or 640, repeats=args.repeats or 40, rounds=args.rounds,
                             profile=args.profile, heads=args.heads)
        print(format_export_cost(result))
    elif args.int8_accuracy:
        try:
            result = int8_accuracy(args.int8_accuracy, args.data, args.imgsz)
        except ValueError as error:  # a checkpoint of a task without figures, found before any export
            args.error(str(error))
        print(format_int8_accuracy(result))
    else:
        case = Case(n=1, channels=32, height=16, width=16) if args.small else Case()
        if args.downsample:  # the same input sizes at the downsampler's input: twice the upsampler's
            case = replace(case, height=2 * case.height, width=2 * case.width, downsample=True)
        result = cpu_reassembly_comparison(case, repeats=args.repeats or 7)
        print(format_cpu_comparison(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")

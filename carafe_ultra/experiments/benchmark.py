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

from ..backends.cuda_backend import carafe_backward, carafe_forward, first_use_check
from ..backends.cupy_launcher import KERNEL_SOURCE
from ..backends.kernel_types import Specialisation
from ..backends.torch_backend import carafe_torch
from ..dysample import DySample
from ..functional import carafe
from ..module import CARAFE
from ..yamls import find_model_yaml
from .baselines import UnfoldMatmulCARAFE, unfold_matmul_carafe
from .export_cost import export_cost, format_export_cost
from .timing import interleaved_seconds, synchronizer


@dataclass(frozen=True)
class Case:
    """One reassembly problem: features (n, channels, height, width) upsampled by ``scale`` with window ``kernel``."""

    n: int = 4
    channels: int = 256
    height: int = 40
    width: int = 40
    kernel: int = 5
    scale: int = 2
    dtype: str = "float32"
    mask_dtype: str | None = None  # None: the features' dtype; float32 with float16 features is what AMP hands over

    def inputs(self, device: str = "cpu", requires_grad: bool = False) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(self.n, self.channels, self.height, self.width, generator=generator)
        logits = torch.randn(self.n, self.kernel**2, self.height * self.scale, self.width * self.scale, generator=generator)
        masks = logits.softmax(dim=1)
        dtypes = (getattr(torch, self.dtype), getattr(torch, self.mask_dtype or self.dtype))
        return tuple(t.to(device, d).requires_grad_(requires_grad) for t, d in zip((features, masks), dtypes))


class PeakMemory:
    """Peak bytes a CPU call adds on top of what is live when it starts (Linux).

    glibc serves large blocks with mmap and unmaps them on free, so the resident set tracks live tensors;
    fixing the mmap threshold stops glibc from raising it (and caching freed blocks), and writing 5 to
    /proc/self/clear_refs resets the kernel's high-water mark before each call.
    """

    _M_MMAP_THRESHOLD = -3

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("CPU peak-memory measurement needs Linux (/proc/self/status)")
        ctypes.CDLL("libc.so.6").mallopt(self._M_MMAP_THRESHOLD, 64 * 1024)

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} missing from /proc/self/status")

    def measure(self, fn: Callable[[], object]) -> int:
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
    lines = [
        f"CARAFE reassembly on CPU ({result['threads']} threads): N={case['n']} C={case['channels']} "
        f"{case['height']}x{case['width']} -> x{case['scale']}, k={case['kernel']}, {case['dtype']}",
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
# GPU: kernel bandwidth against the device's own copy bandwidth, and module speed against the rivals.

GPU_REFERENCE = Case(n=16, channels=256, height=40, width=40, kernel=5, scale=2)  # RT-DETR-l P4 -> P3, batch 16


def kernel_files() -> list[Path]:
    return [KERNEL_SOURCE]


def kernel_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cuda_median_ms(fn: Callable[[int], object], repeats: int = 50, warmup: int = 10, rotate: int = 1) -> float:
    """Median CUDA-event time of ``fn(i)``, ``i`` cycling through ``rotate`` input sets (so L2 does not serve them)."""
    for i in range(warmup):
        fn(i % rotate)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % rotate)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(mib: int = 1024) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    source = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda").random_()
    target = torch.empty_like(source)
    ms = cuda_median_ms(lambda _: target.copy_(source), repeats=20)
    return 2 * source.numel() / (ms * 1e-3) / 1e9


def _kernel_case(case: Case, rotate: int = 3) -> dict:
    sets = [case.inputs("cuda") for _ in range(rotate)]
    for i, (features, masks) in enumerate(sets):  # distinct data per set
        features.add_(i)
    features, masks = sets[0]
    grads = [torch.randn(case.n, case.channels, case.height * case.scale, case.width * case.scale,
                         device="cuda", dtype=features.dtype) for _ in range(rotate)]
    forward_ms = cuda_median_ms(lambda i: carafe_forward(*sets[i], case.kernel, 1, case.scale), rotate=rotate)
    backward_ms = cuda_median_ms(lambda i: carafe_backward(grads[i], *sets[i], case.kernel, 1, case.scale, True, True),
                                 rotate=rotate)
    feature_bytes, mask_bytes = features.numel() * features.element_size(), masks.numel() * masks.element_size()
    out_bytes = grads[0].numel() * features.element_size()
    forward_bytes = feature_bytes + mask_bytes + out_bytes  # read features and masks, write the output
    backward_bytes = out_bytes + 2 * feature_bytes + 2 * mask_bytes  # read grad_out, f, m; write both gradients
    # Sanity: the kernels agree with the PyTorch path on this very case.
    error = (carafe(features, masks, case.kernel, 1, case.scale).float()
             - carafe_torch(features.float(), masks.float(), case.kernel, 1, case.scale)).abs().max().item()
    return {"case": asdict(case), "forward_ms": forward_ms, "backward_ms": backward_ms,
            "forward_bytes": forward_bytes, "backward_bytes": backward_bytes,
            "forward_gbs": forward_bytes / (forward_ms * 1e-3) / 1e9,
            "backward_gbs": backward_bytes / (backward_ms * 1e-3) / 1e9, "max_abs_error_vs_torch_path": error}


def first_use_check_ms(spec: Specialisation, device: torch.device | None = None, repeats: int = 5) -> float:
    """Median time of the CUDA path's first-use check of ``spec`` on ``device`` (default: the current GPU) once
    its kernels are built and loaded, which the untimed warm-up call does (or CuPy's disk cache)."""
    device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
    samples = interleaved_seconds({"check": functools.partial(first_use_check, device, spec)}, repeats, warmup=1,
                                  synchronize=synchronizer(device))
    return 1e3 * statistics.median(samples["check"])


def _module_case(name: str, module: nn.Module, case: Case, dtype: torch.dtype, rotate: int = 3) -> dict:
    module = module.to("cuda")
    inputs = [torch.randn(case.n, case.channels, case.height, case.width, device="cuda", requires_grad=True)
              for _ in range(rotate)]

    def step(i: int) -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = module(inputs[i])
        out.float().sum().backward()

    ms = cuda_median_ms(step, rotate=rotate)
    return {"module": name, "case": {**asdict(case), "dtype": str(dtype).replace("torch.", "")}, "forward_backward_ms": ms}


def gpu_report() -> dict:
    """Everything ``scripts/benchmark.py --gpu`` measures, as one JSON-ready dict."""
    import cupy

    torch.manual_seed(0)
    files = kernel_files()
    bandwidth = copy_bandwidth_gbs()
    cases = [_kernel_case(replace(GPU_REFERENCE, dtype=dtype)) for dtype in ("float16", "float32", "bfloat16")]
    cases.append(_kernel_case(replace(GPU_REFERENCE, dtype="float16", mask_dtype="float32")))  # what AMP hands over
    for extra in (Case(n=16, channels=256, height=80, width=80, kernel=5, scale=2),
                  Case(n=16, channels=256, height=20, width=20, kernel=3, scale=2),
                  Case(n=8, channels=128, height=40, width=40, kernel=7, scale=4)):
        cases.append(_kernel_case(replace(extra, dtype="float16")))
    modules = {}
    for dtype in (torch.float32, torch.float16):
        ours = CARAFE(256, kernel_size=5, compressed_channels=64)
        blog = UnfoldMatmulCARAFE(256, kernel_size=5, compressed_channels=64)
        blog.load_state_dict(ours.state_dict())
        for name, module in (("carafe_ultra", ours), ("unfold_matmul", blog), ("dysample", DySample(256))):
            result = _module_case(name, module, GPU_REFERENCE, dtype)
            modules[(name, dtype)] = result["forward_backward_ms"]
            cases.append(result)
    reference = {c["case"]["dtype"]: c for c in cases[:2]}
    goals = {
        "fwd_bw_fraction_fp16": reference["float16"]["forward_gbs"] / bandwidth,
        "fwd_bw_fraction_fp32": reference["float32"]["forward_gbs"] / bandwidth,
        "bwd_bw_fraction_fp16": reference["float16"]["backward_gbs"] / bandwidth,
        "bwd_bw_fraction_fp32": reference["float32"]["backward_gbs"] / bandwidth,
        "speedup_vs_seed_fwd_bwd": modules[("unfold_matmul", torch.float32)] / modules[("carafe_ultra", torch.float32)],
        "time_vs_dysample_fwd_bwd": modules[("carafe_ultra", torch.float32)] / modules[("dysample", torch.float32)],
    }
    root = Path(__file__).resolve().parents[2]
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cupy": cupy.__version__,
        "kernel_files": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in files],
        "kernel_sha256": kernel_sha256(files),
        "copy_bandwidth_gbs": bandwidth,
        "first_use_check_ms": first_use_check_ms(Specialisation(torch.float16, torch.float32, 5, 2)),
        "cases": cases,
        "goals": goals,
    }


def format_gpu_report(report: dict) -> str:
    lines = [f"{report['device']}: copy bandwidth {report['copy_bandwidth_gbs']:.0f} GB/s, "
             f"first-use check {report['first_use_check_ms']:.1f} ms per specialisation"]
    for case in report["cases"]:
        c = case["case"]
        masks = f" (masks {c['mask_dtype']})" if c.get("mask_dtype") else ""
        label = f"N={c['n']} C={c['channels']} {c['height']}x{c['width']} k={c['kernel']} s={c['scale']} {c['dtype']}{masks}"
        if "module" in case:
            lines.append(f"  module {case['module']:<14} {label}: fwd+bwd {case['forward_backward_ms']:.3f} ms")
        else:
            lines.append(f"  kernels {label}: fwd {case['forward_ms']:.3f} ms ({case['forward_gbs']:.0f} GB/s), "
                         f"bwd {case['backward_ms']:.3f} ms ({case['backward_gbs']:.0f} GB/s)")
    lines.append("goals: " + ", ".join(f"{k}={v:.3f}" for k, v in report["goals"].items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options (``python -m carafe_ultra benchmark``, ``scripts/benchmark.py``)."""
    mode = parser.add_mutually_exclusive_group()  # neither: the CPU comparison
    mode.add_argument("--gpu", action="store_true", help="benchmark the CUDA path (needs a GPU and CuPy)")
    mode.add_argument("--export", action="store_true",
                        help="the cost of CARAFE in an exported model: ONNX nodes, ONNX Runtime and OpenVINO latency")
    parser.add_argument("--model", default="yolov8n.yaml", help="--export: the model family (default yolov8n.yaml)")
    parser.add_argument("--imgsz", type=int, default=640, help="--export: image size (default 640)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per implementation, median reported (default: 7 CPU, 30 --export)")
    parser.add_argument("--json", metavar="PATH", help="write the measurements to this JSON file")
    parser.add_argument("--small", action="store_true", help="CPU: a tiny case, to check the script itself quickly")


def main(args: argparse.Namespace) -> None:
    """Run the benchmark the parsed options describe, print it, and write the JSON if asked."""
    for name in ("repeats", "imgsz"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            args.error(f"--{name} must be a positive int, got {getattr(args, name)}")
    if args.export:
        try:
            find_model_yaml(args.model)  # before any export work
        except FileNotFoundError as error:
            args.error(str(error))
    if args.gpu:
        result = gpu_report()
        print(format_gpu_report(result))
    elif args.export:
        result = export_cost(args.model, args.imgsz, repeats=args.repeats or 30)
        print(format_export_cost(result))
    else:
        case = Case(n=1, channels=32, height=16, width=16) if args.small else Case()
        result = cpu_reassembly_comparison(case, repeats=args.repeats or 7)
        print(format_cpu_comparison(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")

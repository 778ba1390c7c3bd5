"""Side-by-side speed and memory measurements (the library behind ``scripts/benchmark.py``).

Only ratios measured in one run mean anything on a shared machine: every case runs our op and the
baseline alternately on the same inputs, and reports medians.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .baselines import unfold_matmul_carafe
from .functional import carafe


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

    def inputs(self, device: str = "cpu", requires_grad: bool = False) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0)
        dtype = getattr(torch, self.dtype)
        features = torch.randn(self.n, self.channels, self.height, self.width, generator=generator)
        logits = torch.randn(self.n, self.kernel**2, self.height * self.scale, self.width * self.scale, generator=generator)
        masks = logits.softmax(dim=1)
        return tuple(t.to(device, dtype).requires_grad_(requires_grad) for t in (features, masks))


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


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
        for run in runs.values():  # warm-up
            run(), run()
        # Interleave the two implementations so drifting machine load hits both alike.
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                samples[name].append(seconds(run))
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

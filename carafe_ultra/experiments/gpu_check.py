"""``python -m carafe_ultra gpu-check``: every check the CUDA path needs a GPU for, in one command and one report.

The stages run in this order, each in a process of its own under its own time limit (a hang cannot eat the run),
and the check goes on past a stage that fails:

=========  ========================================================================  =============================
stage      what it does                                                              what it imports beyond the core
=========  ========================================================================  =============================
tests      ``tests/test_cuda_gpu.py`` and ``tests/test_cuda_path.py`` with the CuPy   pytest; a checkout's tests/
           launcher, counted
sanitizer  compute-sanitizer's memcheck, racecheck, initcheck and synccheck over a     compute-sanitizer (CUDA
           run of every kernel variant and of the downsampling's kernels (forward,    toolkit) on the PATH
           both gradients; float32, float16, bfloat16 and the AMP pair; borders,
           groups, odd sizes)
kernels    copy bandwidth; the table's kernels on the reference cases, and CARAFE++   nothing more
           downsampling's; every variant and the PyTorch yardsticks (eager,
           torch.compile); the first-use check
modules    CARAFE against unfold + matmul and DySample, forward + backward, float32   nothing more
           and float16
training   one AMP training step (batch 8, 640 px) of RT-DETR-l and of YOLO11n,       ultralytics
           CARAFE against nn.Upsample, timed round-robin
tensorrt   an engine built from the ONNX export of rtdetr-l-carafe.yaml, its output  ultralytics, onnx, tensorrt
           against PyTorch's
=========  ========================================================================  =============================

The core is torch, numpy and pyyaml, and CuPy for the kernels (``pip install "carafe-ultra[cuda12]"`` or
``[cuda13]``); a stage whose package is missing says which and is skipped. Everything lands in ``--out``:
``gpu-check.json`` (the report), ``gpu-check.md`` (its tables) and ``gpu-check.log`` (every stage's full output).

``--dry-run`` runs every stage's own code on the CPU instead: the kernels through the host shim, small cases,
torch.compile with the aot_eager backend, tiny images; steps that need what a CPU lacks (compute-sanitizer,
TensorRT) are skipped with the reason, and what can stand in for them runs (the kernel exercise without the
sanitizer, the export comparison with ONNX Runtime). It writes the same report and exits 0 when the code works.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..backends.cuda_backend import (
    DOWNSAMPLING,
    UPSAMPLING,
    run_backward_features,
    run_backward_masks,
    run_forward,
    use_launcher,
)
from ..backends.kernel_types import Specialisation
from ..backends.kernel_variants import SELECTED, VARIANTS, variant_sets
from . import benchmark

REPORT, TABLES, LOG = "gpu-check.json", "gpu-check.md", "gpu-check.log"
ROOT = Path(__file__).resolve().parents[2]  # a checkout's root (tests/ lives there)
GPU_TESTS = ("tests/test_cuda_gpu.py", "tests/test_cuda_path.py")
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
# The goals the report measures itself against: (value's name in goals, comparison, target).
TARGETS = {
    "fwd_bw_fraction_fp16": (">=", 0.70), "fwd_bw_fraction_fp32": (">=", 0.70),
    "bwd_bw_fraction_fp16": (">=", 0.50), "bwd_bw_fraction_fp32": (">=", 0.50),
    "module_speedup_vs_unfold_matmul": (">=", 5.0), "module_time_vs_dysample": ("<=", 1.0),
    "train_step_overhead_rtdetr_l": ("<=", 0.03),
}


@dataclass(frozen=True)
class Stage:
    """One stage: its function (the stage's report fields from a context), its time limit and the modules it needs
    (a missing one skips it)."""

    name: str
    run: Callable[[Context], dict]
    limit_s: int
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    """Where a stage runs: the device (CUDA, or the CPU in a dry run) and a scratch folder of its own."""

    dry_run: bool
    device: torch.device
    scratch: Path


class Skipped(Exception):
    """A stage that cannot run here; the message says why (and what would let it run)."""


# ---------------------------------------------------------------------------------------------------------------
# The stages. Each returns its fields of the report and may set "detail" (a line for the summary) and "status"
# ("passed" unless it says otherwise); raising Skipped skips it, any other exception fails it.


def stage_tests(ctx: Context) -> dict:
    """The GPU tests with the CuPy launcher (the host-shim half of test_cuda_path runs in CI already)."""
    files = [ROOT / name for name in GPU_TESTS]
    if not all(path.is_file() for path in files):
        raise Skipped(f"the tests are not installed with the package: run from a checkout ({', '.join(GPU_TESTS)})")
    xml = ctx.scratch / "tests.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, files),
                          "-k", "not host-shim", f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True)
    print(run.stdout[-20000:], run.stderr[-5000:], sep="\n")
    counts = junit_counts(xml)
    status = "passed" if counts["failed"] == 0 and (ctx.dry_run or counts["passed"] > 0) else "failed"
    detail = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    return {"gpu_tests": counts, "status": status, "detail": detail}


def junit_counts(xml: Path) -> dict:
    """{"passed", "failed", "skipped"} from a pytest JUnit XML report (errors count as failed)."""
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def stage_sanitizer(ctx: Context) -> dict:
    """compute-sanitizer's tools, one run of the kernel exercise each, limited to our kernels."""
    tool = compute_sanitizer()
    if tool is None:
        launches = exercise_kernels(ctx.device) if ctx.dry_run else None
        reason = "compute-sanitizer is not on the PATH nor in the CUDA toolkit's folders (it comes with the toolkit)"
        if launches is None:
            raise Skipped(reason)
        return {"sanitizer": {"errors": None, "tools": dict.fromkeys(SANITIZER_TOOLS, "not run")},
                "status": "skipped", "detail": f"{reason}; the kernel exercise ran without it ({launches} launches)"}
    tools = {}
    for name in SANITIZER_TOOLS:
        # Without PyTorch's caching allocator every tensor is an allocation of its own, so memcheck sees an access
        # past a tensor's end even where the cache would have put another tensor there.
        run = subprocess.run([tool, "--tool", name, "--kernel-name", "kns=carafe_", sys.executable, "-m",
                              "carafe_ultra", "gpu-check", "--exercise"], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        print(f"--- compute-sanitizer --tool {name} (exit {run.returncode})", run.stdout[-20000:], run.stderr[-5000:],
              sep="\n")
        tools[name] = {**sanitizer_findings(run.stdout + run.stderr), "exit_code": run.returncode}
    errors = sum(t["errors"] for t in tools.values())
    clean = errors == 0 and all(t["exit_code"] == 0 for t in tools.values())
    return {"sanitizer": {"errors": errors, "tools": tools}, "status": "passed" if clean else "failed",
            "detail": ", ".join(f"{name} {t['errors']}" for name, t in tools.items())}


def compute_sanitizer() -> str | None:
    """compute-sanitizer from the PATH, or from the CUDA toolkit's usual folders."""
    found = shutil.which("compute-sanitizer")
    candidates = [Path(found)] if found else []
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", *sorted(map(str, Path("/usr/local").glob("cuda-*")))):
        if root:
            candidates += [Path(root) / "bin" / "compute-sanitizer",
                           Path(root) / "compute-sanitizer" / "compute-sanitizer"]
    return next((str(path) for path in candidates if path.is_file()), None)


def sanitizer_findings(output: str) -> dict:
    """{"errors": N, "summary": its line} from compute-sanitizer's output (racecheck counts hazards)."""
    summary = re.search(r"(ERROR SUMMARY: (\d+) errors?|RACECHECK SUMMARY: (\d+) hazards?[^\n]*)", output)
    if summary is None:
        return {"errors": 1, "summary": "no summary line: the tool did not finish"}
    return {"errors": int(summary.group(2) or summary.group(3)), "summary": summary.group(1)}


def exercise_kernels(device: torch.device) -> int:
    """Run every variant of every kernel (forward and both gradients), and CARAFE++ downsampling's kernels, in
    float32, float16, bfloat16 and the AMP pair on cases with borders, groups and odd sizes, each against the PyTorch
    path; the number of launches. Raises ``AssertionError`` on a wrong result. What compute-sanitizer watches."""
    cases = [(2, 6, 5, 7, 5, 3, 2), (1, 4, 1, 3, 3, 2, 4), (2, 64, 9, 11, 3, 1, 2)]  # n, c, h, w, k, groups, s
    pairs = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
             (torch.float16, torch.float32)]
    generator = torch.Generator().manual_seed(0)
    launches = 0
    for n, c, h, w, k, g, s in cases:
        features = torch.randn(n, c, h, w, generator=generator)
        for operation in (UPSAMPLING, DOWNSAMPLING):
            out_size = operation.output_size(h, w, s)
            masks = torch.randn(n, g, k * k, *out_size, generator=generator).softmax(2).flatten(1, 2)
            grad_out = torch.randn(n, c, *out_size, generator=generator)
            for feature_dtype, mask_dtype in pairs:
                f, m = features.to(device, feature_dtype), masks.to(device, mask_dtype)
                go = grad_out.to(device, feature_dtype)
                f64, m64, g64 = (t.cpu().double() for t in (f, m, go))
                want = [operation.torch_forward(f64, m64, k, g, s),
                        *reversed(operation.torch_backward(g64, f64, m64, k, g, s, True, True))]
                # The downsampling's kernels are in every module: the first table builds them.
                for table in variant_sets() if operation is UPSAMPLING else variant_sets()[:1]:
                    spec = Specialisation(feature_dtype, mask_dtype, k, s, **table)
                    got = [run_forward(spec, f, m, g, operation), run_backward_masks(spec, go, f, m, g, operation),
                           run_backward_features(spec, go, f, m, g, operation)]
                    launches += 3
                    for kernel, result, expected in zip(("forward", "backward_masks", "backward_features"), got, want):
                        error = (result.cpu().double() - expected).abs().max().item()
                        limit = 3e-2 * max(1.0, expected.abs().max().item())
                        name = operation.prefix + kernel
                        assert error <= limit, f"{name} {spec.variant(name).name} {spec}: off by {error:.3g}"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return launches


def stage_kernels(ctx: Context) -> dict:
    """Copy bandwidth, the table's kernels, every variant and the yardsticks, the first-use check."""
    report = benchmark.kernel_report(ctx.device, repeats=3 if ctx.dry_run else 50,
                                     compile_backend="aot_eager" if ctx.dry_run else "inductor")
    wrong = [f"{dtype} {kernel} {e['variant']}" for dtype, kernels in report["variants"].items()
             for kernel, entries in kernels.items() for e in entries if e["max_abs_error"] > 3e-2]
    best = {dtype: {kernel: min(entries, key=lambda e: e["ms"])["variant"] for kernel, entries in kernels.items()}
            for dtype, kernels in report["variants"].items()}
    detail = f"copy {report['copy_bandwidth_gbs']:.0f} GB/s; fastest: " + "; ".join(
        f"{dtype} " + ", ".join(f"{k} {v}" for k, v in kernels.items()) for dtype, kernels in best.items())
    if wrong:
        return {**report, "status": "failed", "detail": f"wrong results from {', '.join(wrong)}"}
    return {**report, "detail": detail}


def stage_modules(ctx: Context) -> dict:
    modules = benchmark.module_report(ctx.device, repeats=3 if ctx.dry_run else 50)
    return {"modules": modules, "detail": ", ".join(
        f"{m['module']} {m['case']['dtype']} {m['forward_backward_ms']:.2f} ms" for m in modules)}


def stage_training(ctx: Context) -> dict:
    from .train_step import train_step_overheads

    size = {"imgsz": 64, "batch": 2, "warmup": 1, "repeats": 2} if ctx.dry_run else {}
    overheads = train_step_overheads(ctx.device, **size)
    return {"training": overheads,
            "goals": {f"train_step_overhead_{name}": entry["overhead"] for name, entry in overheads.items()},
            "detail": ", ".join(f"{name} {entry['overhead']:+.1%} ({entry['carafe_ms']:.1f} vs "
                                f"{entry['nearest_ms']:.1f} ms)" for name, entry in overheads.items())}


def stage_tensorrt(ctx: Context) -> dict:
    from .export_parity import exported_parity

    if importable("tensorrt") and not ctx.dry_run:
        parity = exported_parity("rtdetr-l-carafe.yaml", "engine", ctx.device, ctx.scratch, imgsz=640)
        return {"tensorrt": parity, "status": "passed" if parity["same"] else "failed",
                "detail": f"engine vs PyTorch: boxes within {parity['max_box_px']:.3f} px, "
                          f"scores within {parity['max_score']:.4f}"}
    if not ctx.dry_run:
        raise Skipped("not available: tensorrt does not import (pip install tensorrt)")
    parity = exported_parity("rtdetr-l-carafe.yaml", "onnx", ctx.device, ctx.scratch, imgsz=64)
    return {"tensorrt": {"available": False, "stand_in": parity}, "status": "skipped",
            "detail": "tensorrt does not import; the export and comparison ran with ONNX Runtime instead "
                      f"(boxes within {parity['max_box_px']:.3f} px)"}


# Time limits: what each stage should take on an H200 (the estimate in benchmarks/NOTES.md) with room to spare. Without
# TensorRT (skipped at once) they sum to 8.5 minutes, so one run fits a 10-minute slot even if every stage hangs.
STAGES = (
    Stage("tests", stage_tests, 120, ("pytest",)),
    Stage("sanitizer", stage_sanitizer, 150),
    Stage("kernels", stage_kernels, 120),
    Stage("modules", stage_modules, 45),
    Stage("training", stage_training, 75, ("ultralytics",)),
    Stage("tensorrt", stage_tensorrt, 240, ("ultralytics", "onnx")),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


# ---------------------------------------------------------------------------------------------------------------
# The orchestration: stages in subprocesses, the report.


def _device(dry_run: bool) -> torch.device:
    return torch.device("cpu") if dry_run else torch.device("cuda", torch.cuda.current_device())


def run_stage(name: str, dry_run: bool, result_path: Path) -> None:
    """Run one stage in this process and write its outcome to ``result_path`` (what the orchestrator reads)."""
    stage = next(s for s in STAGES if s.name == name)
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as scratch:
        ctx = Context(dry_run, _device(dry_run), Path(scratch))
        try:
            if dry_run:
                from .host_shim import HostShimLauncher

                with use_launcher(HostShimLauncher(Path(scratch) / "shim")):
                    fields = stage.run(ctx)
            else:
                fields = stage.run(ctx)
            outcome = {"status": "passed", **fields}
        except Skipped as reason:
            outcome = {"status": "skipped", "detail": str(reason)}
    result_path.write_text(json.dumps(outcome, indent=2, default=str) + "\n")


def importable(module: str) -> bool:
    """Whether ``module`` imports here (a package that is present but broken counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _missing(stage: Stage) -> list[str]:
    return [module for module in stage.needs if not importable(module)]


def _header(dry_run: bool) -> dict:
    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    files = benchmark.kernel_files()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": dry_run,
        "device": "cpu (dry run)" if dry_run else torch.cuda.get_device_name(),
        "carafe_ultra": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "cupy": cupy_version,
        "kernel_files": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in files],
        "kernel_sha256": benchmark.kernel_sha256(files),
        "table": dict(SELECTED),
    }


def run_check(out: Path, dry_run: bool = False, stages: tuple[str, ...] = STAGE_NAMES,
              log: Callable[[str], None] = print) -> dict:
    """Run ``stages`` in order, each in a subprocess under its time limit; write the report, its tables and the log
    into ``out`` (the report after every stage, so that a run cut short keeps what it measured); return it."""
    unknown = sorted(set(stages) - {stage.name for stage in STAGES})
    if unknown:
        raise ValueError(f"no stage {', '.join(unknown)}; the stages are {', '.join(STAGE_NAMES)}")
    out.mkdir(parents=True, exist_ok=True)
    report = {**_header(dry_run), "stages": [], "goals": {}}
    with open(out / LOG, "w") as log_file, tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        for stage in (s for s in STAGES if s.name in stages):
            start = time.perf_counter()
            log_file.write(f"===== stage {stage.name}\n")
            log_file.flush()
            missing = _missing(stage)
            if missing:
                outcome = {"status": "skipped",
                           "detail": f"needs {', '.join(missing)}, which does not import here"}
            else:
                outcome = _run_stage_process(stage, dry_run, Path(folder) / f"{stage.name}.json", log_file)
            seconds = time.perf_counter() - start
            status, detail = outcome.pop("status"), outcome.pop("detail", "")
            report["goals"].update(outcome.pop("goals", {}))
            report.update(outcome)
            report["stages"].append({"name": stage.name, "status": status, "seconds": round(seconds, 1),
                                     "detail": detail})
            log(f"{stage.name:<10} {status:<8} {seconds:6.1f} s  {detail}")
            _write(out, report)
    return _write(out, report)


def _write(out: Path, report: dict) -> dict:
    """The report as it stands, with its goals judged, into gpu-check.json and gpu-check.md; returns it."""
    goals = dict(report["goals"])
    if "cases" in report and "modules" in report:
        goals.update(benchmark.bandwidth_goals(report, report["modules"]))
    judged = {**report, "goals": {name: _goal(name, value) for name, value in goals.items()}}
    (out / REPORT).write_text(json.dumps(judged, indent=2) + "\n")
    (out / TABLES).write_text(markdown(judged))
    return judged


def _run_stage_process(stage: Stage, dry_run: bool, result: Path, log_file) -> dict:
    command = [sys.executable, "-m", "carafe_ultra", "gpu-check", "--stage", stage.name, "--result", str(result)]
    try:
        run = subprocess.run(command + (["--dry-run"] if dry_run else []), stdout=log_file, stderr=subprocess.STDOUT,
                             timeout=stage.limit_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": f"timed out after {stage.limit_s} s (its limit)"}
    if run.returncode or not result.is_file():
        return {"status": "failed", "detail": f"exit code {run.returncode}: see {LOG}"}
    return json.loads(result.read_text())


def _goal(name: str, value: float) -> dict:
    """A measured goal with its target, whether it is met and by how much it is missed (0 when met)."""
    comparison, target = TARGETS.get(name, (None, None))
    if comparison is None:
        return {"value": value}
    met = value >= target if comparison == ">=" else value <= target
    return {"value": value, "target": f"{comparison} {target}", "met": met,
            "missed_by": 0.0 if met else abs(value - target)}


def markdown(report: dict) -> str:
    """The report's tables: stages, goals, and every variant's time."""
    lines = [f"# GPU check: {report['device']}, {report['date']}", "",
             f"carafe-ultra {report['carafe_ultra']}, torch {report['torch']}, CuPy {report['cupy']}, kernels "
             f"`{report['kernel_sha256'][:12]}`, table {report['table']}" + (" (dry run on the CPU)" if report["dry_run"] else ""),
             "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail']} |" for s in report["stages"]]
    lines += ["", "| goal | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {g['value']:.3f} | {g.get('target', '')} | {g.get('met', '')} |"
              for name, g in report["goals"].items()]
    bandwidth = report.get("copy_bandwidth_gbs")
    for dtype, kernels in report.get("variants", {}).items():
        lines += ["", f"Variants, {dtype}, reference case (copy bandwidth {bandwidth:.0f} GB/s):", "",
                  "| kernel | variant | ms | GB/s | of copy bandwidth | max error | design |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {kernel} | {e['variant']} | {e['ms']:.4f} | {e['gbs']:.0f} | {e['gbs'] / bandwidth:.0%} "
                  f"| {e['max_abs_error']:.2g} | {_design(kernel, e['variant'])} |"
                  for kernel, entries in kernels.items() for e in entries]
    return "\n".join(lines) + "\n"


def _design(kernel: str, name: str) -> str:
    yardsticks = {"torch": "yardstick: the PyTorch path (what a fallback runs)",
                  "torch_compile": "yardstick: the export path's plain ops under torch.compile"}
    return yardsticks.get(name) or VARIANTS[kernel][name].summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m carafe_ultra gpu-check``'s options."""
    parser.add_argument("--out", default="benchmarks/results", help="folder for gpu-check.json, .md and .log")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every stage's code on the CPU (host shim, small sizes): proves the check itself")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, default=list(STAGE_NAMES), metavar="STAGE",
                        help=f"run only these ({', '.join(STAGE_NAMES)})")
    # What the check runs in its own subprocesses.
    parser.add_argument("--stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--exercise", action="store_true", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> None:
    """Run the check (or, inside it, one stage or the kernel exercise)."""
    if args.stage:
        run_stage(args.stage, args.dry_run, Path(args.result))
        return
    if args.exercise:
        print(f"{exercise_kernels(torch.device('cuda'))} kernel launches, all right")
        return
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU, and torch sees none here; --dry-run runs the check's own code on the CPU.",
              file=sys.stderr)
        sys.exit(1)
    report = run_check(Path(args.out), args.dry_run, tuple(args.stages))
    failed = [s["name"] for s in report["stages"] if s["status"] == "failed"]
    print(f"report: {Path(args.out) / REPORT} (tables: {TABLES}, logs: {LOG})")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)

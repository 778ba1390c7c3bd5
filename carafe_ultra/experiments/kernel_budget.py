"""The static budget of every kernel variant, read off the machine code NVRTC makes for sm_90 (no GPU needed).

For each variant: registers, stack frame and shared memory (ptxas' report), and from the SASS (``cuobjdump -sass``)
the hot loop, the loop whose step does one channel's multiply-adds: its instructions, global loads and stores per
output element. Those, with a Hopper's issue and load rates, give a time per kernel on the reference case and the
fraction of copy bandwidth that time would reach; the bytes the kernel must move give the floor. It is a
prediction to be checked on a GPU, written down before measuring (benchmarks/NOTES.md), not a measurement.

Behind ``python -m carafe_ultra benchmark --budget``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..backends.cupy_launcher import KERNEL_SOURCE, nvrtc_options
from ..backends.kernel_types import Specialisation
from ..backends.kernel_variants import CHANNEL_CHUNK, KERNELS, SPLIT_SLICES, VARIANTS, variant_sets
from . import nvrtc

# A Hopper H200 as the budget sees it: multiprocessors, clock, and what each multiprocessor does per clock (warp
# instructions issued by its 4 schedulers; warp-wide 32-bit global loads its L1 serves); copy bandwidth counts bytes
# read plus written, as measured with a device-to-device copy of PyTorch on such a machine.
H200 = {"multiprocessors": 132, "clock_ghz": 1.98, "issue_per_clock": 4, "loads_per_clock": 1, "copy_gbs": 4300}


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # without modifiers: LDG, FFMA, BRA, ...
    text: str


@dataclass
class Budget:
    """One variant's static budget on one case. Per-output numbers count output elements (N*C*H*S*W*S) for every
    kernel, so the three kernels and their variants compare on one scale."""

    kernel: str
    variant: str
    registers: int
    stack_bytes: int
    shared_bytes: int
    loop_instructions: int  # one step (one channel of a thread's work) of the hot loop, as compiled
    instructions_per_output: float  # the step's, plus the rest of the thread (all of it, as if every branch ran)
    # amortised over the thread's steps
    loads_per_output: float  # global loads (LDG) per output element
    bytes_per_output: float  # the fewest bytes the kernel must move, per output element
    floor_us: float  # those bytes at the copy bandwidth
    issue_us: float
    load_us: float
    predicted_us: float  # the largest of the three
    predicted_fraction: float  # floor_us / predicted_us: the fraction of copy bandwidth it would reach


def cuobjdump() -> str:
    """cuobjdump from the PATH, or the one Triton's wheel carries; raises FileNotFoundError when neither is there."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        triton = None
    if triton is not None:
        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.is_file():
            return str(bundled)
    raise FileNotFoundError("cuobjdump is not on the PATH and no Triton wheel carries one (pip install triton)")


def sass(cubin: bytes) -> dict[str, list[Instruction]]:
    """Each function's instructions, from ``cuobjdump -sass``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernels.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([cuobjdump(), "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"\s*Function : (\w+)", line)
        if header:
            current = functions.setdefault(header.group(1), [])
            continue
        code = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([^;]*);", line)
        if code and current is not None:
            current.append(Instruction(int(code.group(1), 16), code.group(2), code.group(2) + code.group(3)))
    return functions


def hot_loop(instructions: list[Instruction]) -> list[Instruction]:
    """The loop (a backward branch and what lies between its target and it) with the most FFMA, the shortest of
    those (a fast path beside its checked twin); the whole function where no loop multiplies."""
    loops = []
    for end, instruction in enumerate(instructions):
        target = re.search(r"BRA\S*\s+(?:`\()?0x([0-9a-f]+)", instruction.text)
        if instruction.opcode == "BRA" and target and int(target.group(1), 16) < instruction.address:
            start = next(i for i, x in enumerate(instructions) if x.address >= int(target.group(1), 16))
            loops.append(instructions[start : end + 1])
    loops = [loop for loop in loops if _count(loop, "FFMA")]
    if not loops:
        return instructions
    return min(loops, key=lambda loop: (-_count(loop, "FFMA"), len(loop)))


def _count(instructions: list[Instruction], opcode: str) -> int:
    return sum(i.opcode == opcode for i in instructions)


def _resources(log: str) -> dict[str, tuple[int, int, int]]:
    """(registers, stack frame bytes, shared bytes) of each entry point, from ptxas' verbose report."""
    found = {}
    for name, body in re.findall(r"Compiling entry function '(\w+)'(.*?)(?=Compiling entry function|\Z)", log, re.S):
        registers = re.search(r"Used (\d+) registers", body)
        stack = re.search(r"(\d+) bytes stack frame", body)
        shared = re.search(r"(\d+) bytes smem", body)
        found[name] = (int(registers.group(1)), int(stack.group(1)), int(shared.group(1)) if shared else 0)
    return found


def min_bytes_per_output(kernel: str, case: dict, feature_bytes: int, mask_bytes: int) -> float:
    """The fewest bytes ``kernel`` moves per output element (N*C*H*S*W*S of them) for a ``case`` with ``channels``,
    ``groups``, ``kernel`` (size) and ``scale``: each input read once, each output written once."""
    s2, taps = case["scale"] ** 2, case["kernel"] ** 2
    features, masks = feature_bytes / s2, taps * case["groups"] * mask_bytes / case["channels"]
    grad_out = output = feature_bytes
    return {"forward": features + masks + output,
            "backward_masks": grad_out + features + masks,
            "backward_features": grad_out + masks + features}[kernel]


def budgets(case: dict | None = None, dtype: torch.dtype = torch.float32, machine: dict = H200) -> list[Budget]:
    """The budget of every variant of every kernel on ``case`` (default: the reference case, N=16, C=256, 40x40,
    k=5, G=1, s=2) with features and masks of ``dtype``."""
    case = case or {"n": 16, "channels": 256, "height": 40, "width": 40, "kernel": 5, "groups": 1, "scale": 2}
    lib = nvrtc.load(13) or nvrtc.load(12)
    if lib is None:
        raise FileNotFoundError("no NVRTC wheel is installed (pip install nvidia-cuda-nvrtc)")
    k, s, per_group = case["kernel"], case["scale"], case["channels"] // case["groups"]
    outputs = case["n"] * case["channels"] * case["height"] * case["width"] * s * s
    element = torch.empty(0, dtype=dtype).element_size()
    clock = machine["multiprocessors"] * machine["clock_ghz"] * 1e3  # SM-clocks per microsecond
    results = []
    for table in variant_sets():
        spec = Specialisation(dtype, dtype, k, s, **table)
        program = nvrtc.compile_program(lib, KERNEL_SOURCE.read_text(),
                                        ["--gpu-architecture=sm_90", "--ptxas-options=--verbose", *nvrtc_options(spec)])
        functions, resources = sass(program.binary), _resources(program.log)
        for kernel in KERNELS:
            chosen = spec.variant(kernel)
            if any(b.kernel == kernel and b.variant == chosen.name for b in results):
                continue  # the first designs come with every table
            code = functions[f"carafe_{kernel}"]
            loop = hot_loop(code)
            outputs_per_step = s**chosen.outputs_per_step
            # A step (one channel of the thread's work) does K*K multiply-adds per output element it accounts for;
            # the compiled loop may do a part of a step (an inner loop kept rolled) or several (an unrolled one).
            loops_per_step = k * k * outputs_per_step / _count(loop, "FFMA")
            steps_per_thread = {"input": 1, "split": -(-per_group // SPLIT_SLICES)}.get(
                chosen.unit, min(CHANNEL_CHUNK, per_group) if chosen.chunked else per_group)
            rest = (len(code) - len(loop)) / steps_per_thread if loop is not code else 0
            instructions = (len(loop) * loops_per_step + rest) / outputs_per_step
            loads = _count(loop, "LDG") * loops_per_step / outputs_per_step
            min_bytes = min_bytes_per_output(kernel, case, element, element)
            floor = outputs * min_bytes / (machine["copy_gbs"] * 1e3)
            issue = outputs * instructions / 32 / (clock * machine["issue_per_clock"])
            load = outputs * loads / 32 / (clock * machine["loads_per_clock"])
            predicted = max(floor, issue, load)
            registers, stack, shared = resources[f"carafe_{kernel}"]
            results.append(Budget(kernel, chosen.name, registers, stack, shared, round(len(loop) * loops_per_step),
                                  round(instructions, 1), round(loads, 2), round(min_bytes, 2), round(floor, 1),
                                  round(issue, 1), round(load, 1), round(predicted, 1), round(floor / predicted, 2)))
    order = {(kernel, name): i for i, (kernel, name) in
             enumerate((kernel, name) for kernel, names in VARIANTS.items() for name in names)}
    return sorted(results, key=lambda b: order[b.kernel, b.variant])


def markdown(results: list[Budget]) -> str:
    """The budget as a Markdown table."""
    lines = ["| kernel | variant | registers | loop instr. | instr. / output | loads / output | bytes / output "
             "| floor us | issue us | loads us | predicted us | of copy bw |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in results:
        extra = f" (+{b.shared_bytes} B shared)" if b.shared_bytes else ""
        extra += f" ({b.stack_bytes} B stack)" if b.stack_bytes else ""
        lines.append(f"| {b.kernel} | {b.variant} | {b.registers}{extra} | {b.loop_instructions} "
                     f"| {b.instructions_per_output} | {b.loads_per_output} | {b.bytes_per_output} | {b.floor_us} "
                     f"| {b.issue_us} | {b.load_us} | {b.predicted_us} | {b.predicted_fraction:.0%} |")
    return "\n".join(lines)


def budget_report(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16)) -> dict:
    """The budgets for each dtype, JSON-ready, with the NVRTC release and the machine they assume."""
    lib = nvrtc.load(13) or nvrtc.load(12)
    return {"nvrtc": ".".join(map(str, nvrtc.version(lib))) if lib else None, "machine": H200,
            "budgets": {str(d).removeprefix("torch."): [asdict(b) for b in budgets(dtype=d)] for d in dtypes}}

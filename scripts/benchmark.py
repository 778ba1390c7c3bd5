"""Benchmark CARAFE side by side with its rivals in one run.

    python scripts/benchmark.py                  # CPU: PyTorch path vs unfold + matmul, N=4 C=256 40x40 -> 80x80 k=5
    python scripts/benchmark.py --gpu --json benchmarks/results/<date>-<gpu>.json
                                                 # CUDA kernels vs copy bandwidth; module vs unfold + matmul, DySample
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from carafe_ultra.benchmark import (
    Case,
    cpu_reassembly_comparison,
    format_cpu_comparison,
    format_gpu_report,
    gpu_report,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="benchmark the CUDA path (needs a GPU and CuPy)")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: timed runs per implementation (median reported)")
    parser.add_argument("--json", metavar="PATH", help="write the measurements to this JSON file")
    parser.add_argument("--small", action="store_true", help="CPU: a tiny case, to check the script itself quickly")
    args = parser.parse_args()

    if args.gpu:
        result = gpu_report()
        print(format_gpu_report(result))
    else:
        case = Case(n=1, channels=32, height=16, width=16) if args.small else Case()
        result = cpu_reassembly_comparison(case, repeats=args.repeats)
        print(format_cpu_comparison(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

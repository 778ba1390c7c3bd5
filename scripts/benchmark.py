"""Benchmark CARAFE against the unfold + matmul formulation, side by side in one run.

    python scripts/benchmark.py                 # CPU: the reference case N=4, C=256, 40x40 -> 80x80, k=5
    python scripts/benchmark.py --json out.json # also write the measurements
"""

from __future__ import annotations

import argparse
import json

from carafe_ultra.benchmark import Case, cpu_reassembly_comparison, format_cpu_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median is reported)")
    parser.add_argument("--json", metavar="PATH", help="write the measurements to this JSON file")
    parser.add_argument("--small", action="store_true", help="a tiny case, to check the script itself quickly")
    args = parser.parse_args()

    case = Case(n=1, channels=32, height=16, width=16) if args.small else Case()
    result = cpu_reassembly_comparison(case, repeats=args.repeats)
    print(format_cpu_comparison(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

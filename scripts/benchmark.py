"""Benchmark CARAFE side by side with its rivals in one run.

    python scripts/benchmark.py                  # CPU: PyTorch path vs unfold + matmul, N=4 C=256 40x40 -> 80x80 k=5
    python scripts/benchmark.py --gpu --json benchmarks/results/<date>-<gpu>.json
                                                 # CUDA kernels vs copy bandwidth; module vs unfold + matmul, DySample

The same as ``python -m carafe_ultra benchmark``.
"""

import sys

from carafe_ultra.__main__ import main

if __name__ == "__main__":
    main(["benchmark", *sys.argv[1:]])

"""Benchmark CARAFE side by side with its rivals in one run.

    python scripts/benchmark.py                  # CPU: PyTorch path vs unfold + matmul, N=4 C=256 40x40 -> 80x80 k=5
    python scripts/benchmark.py --gpu --json benchmarks/results/<date>-<gpu>.json
                                                 # CUDA kernels (every variant) vs copy bandwidth; module vs rivals
    python scripts/benchmark.py --budget         # every kernel variant's static budget from its sm_90 SASS (no GPU)
    python scripts/benchmark.py --export         # CARAFE's cost in ONNX Runtime and OpenVINO

Every GPU check in one run: python -m carafe_ultra gpu-check.

The same as ``python -m carafe_ultra benchmark``.
"""

import sys

from carafe_ultra.__main__ import main

if __name__ == "__main__":
    main(["benchmark", *sys.argv[1:]])

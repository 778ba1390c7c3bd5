"""Train one model family with each upsampler (same data, seeds and settings) and compare them.

    python scripts/ablate.py                                   # the default: YOLOv8n, nearest vs CARAFE, generated data
    python scripts/ablate.py --arms nearest carafe bilinear convtranspose dysample --seeds 0 1 2
    python scripts/ablate.py --model rtdetr-l.yaml --data coco.yaml --epochs 72 --imgsz 640 --batch 16 --device 0

Writes summary.json, summary.md and summary.png into --out. Interrupt it at any time: the same command again skips
the (arm, seed) runs that finished and resumes the others exactly where they stopped (at most the epoch in flight is
lost); other settings on the same --out are refused (--restart starts it over). The same as
``python -m carafe_ultra ablate``.
"""

import sys

from carafe_ultra.__main__ import main

if __name__ == "__main__":
    main(["ablate", *sys.argv[1:]])

"""Train one model family with each upsampler (same data, seeds and settings) and compare them.

    python scripts/ablate.py                                   # the default: YOLOv8n, nearest vs CARAFE, generated data
    python scripts/ablate.py --arms nearest carafe bilinear convtranspose dysample --seeds 0 1 2
    python scripts/ablate.py --model rtdetr-l.yaml --data coco.yaml --epochs 72 --imgsz 640 --batch 16 --device 0

Writes summary.json, summary.md and summary.png into --out. Interrupt it at any time: a re-run skips the
(arm, seed) runs that already finished.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from carafe_ultra.ablation import ARMS, Settings, run_ablation


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=defaults.model,
                        help="model family: any RT-DETR or YOLO YAML, stock (yolov8n.yaml) or ours (yolov8n-carafe.yaml)")
    parser.add_argument("--data", default=None, help="Ultralytics data YAML (default: the generated shapes set)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--imgsz", type=int, default=defaults.imgsz)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--device", default=defaults.device, help="cpu, 0, 0,1, ...")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--optimizer", default=defaults.optimizer, help="Ultralytics optimizer (auto for its default)")
    parser.add_argument("--lr0", type=float, default=defaults.lr0)
    parser.add_argument("--warmup-epochs", dest="warmup_epochs", type=float, default=defaults.warmup_epochs)
    parser.add_argument("--mosaic", type=float, default=defaults.mosaic)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds, help="several give mean ± spread")
    parser.add_argument("--arms", nargs="+", default=defaults.arms, choices=list(ARMS))
    parser.add_argument("--out", default=defaults.out, help="output folder (re-runs resume there)")
    args = parser.parse_args()

    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    run_ablation(settings)
    out = Path(settings.out)
    print("\n" + (out / "summary.md").read_text())
    print(f"plot: {out / 'summary.png'}   numbers: {out / 'summary.json'}")


if __name__ == "__main__":
    main()

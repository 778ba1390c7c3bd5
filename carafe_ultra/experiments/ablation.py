"""The upsampler ablation: one model family trained with each upsampler (same data, seed and settings),
then compared on accuracy and cost. ``scripts/ablate.py`` is its command line.

Each (arm, seed) run lives in ``<out>/runs/<arm>-seed<seed>`` and ends by writing ``result.json`` there, so an
interrupted ablation re-run skips what already finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..integration import ultralytics_model
from ..upsamplers import UPSAMPLERS, upsampler
from ..yamls import convert_yaml
from .data import ShapesSpec, shapes_dataset

DEFAULT_ARMS = ("nearest", "carafe")


@dataclass
class Settings:
    """One ablation: the model family, the data, training settings and what to run."""

    model: str = "yolov8n.yaml"
    data: str | None = None  # None: the generated shapes set
    epochs: int = 20
    imgsz: int = 160
    batch: int = 8
    device: str = "cpu"
    workers: int = 2
    # A recipe that learns the generated set within minutes on a CPU; for real data pass Ultralytics'
    # defaults (optimizer auto, lr0 0.01, warmup_epochs 3, mosaic 1.0).
    optimizer: str = "AdamW"
    lr0: float = 0.003
    warmup_epochs: float = 1.0
    mosaic: float = 0.0
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    out: str = "runs/ablation"


@dataclass
class RunResult:
    upsampler: str
    seed: int
    mAP50: float
    mAP50_95: float
    params: int
    GFLOPs: float
    latency_ms: float
    train_seconds: float


def run_arm(settings: Settings, arm: str, seed: int, data: str, log: Callable[[str], None] = print) -> RunResult:
    """Train and evaluate one arm with one seed, or load the result of a finished earlier run."""
    out = Path(settings.out).resolve()
    run_dir = out / "runs" / f"{arm}-seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        log(f"{arm} seed {seed}: already finished, reusing {done}")
        return RunResult(**json.loads(done.read_text()))
    model_path = convert_yaml(settings.model, arm, out / "yamls")
    start = time.perf_counter()
    model = ultralytics_model(model_path)
    model.train(data=data, epochs=settings.epochs, imgsz=settings.imgsz, batch=settings.batch,
                device=settings.device, workers=settings.workers, seed=seed, deterministic=True,
                optimizer=settings.optimizer, lr0=settings.lr0, warmup_epochs=settings.warmup_epochs,
                mosaic=settings.mosaic,
                project=str(out / "runs"), name=run_dir.name, exist_ok=True, plots=False, verbose=False)
    seconds = time.perf_counter() - start
    best = ultralytics_model(run_dir / "weights" / "best.pt")
    metrics = best.val(data=data, imgsz=settings.imgsz, batch=settings.batch, device=settings.device,
                       workers=settings.workers, plots=False, verbose=False, project=str(out / "runs"),
                       name=f"{run_dir.name}-val", exist_ok=True)
    network = best.model
    result = RunResult(
        upsampler=arm, seed=seed, mAP50=float(metrics.box.map50), mAP50_95=float(metrics.box.map),
        params=sum(p.numel() for p in network.parameters()), GFLOPs=_gflops(network, settings.imgsz),
        latency_ms=latency_ms(network, settings.imgsz, settings.device), train_seconds=seconds,
    )
    done.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _gflops(network: torch.nn.Module, imgsz: int) -> float:
    from ultralytics.utils.torch_utils import get_flops

    return float(get_flops(network, imgsz))


def latency_ms(network: torch.nn.Module, imgsz: int, device: str, repeats: int = 30) -> float:
    """Median forward time of one image (batch 1, float32, eval mode, no pre/post-processing)."""
    import copy

    first = str(device).split(",")[0].strip()  # Ultralytics' "0,1" style: time on the first device
    device = torch.device(f"cuda:{first}" if first.isdigit() else first)
    net = copy.deepcopy(network).float().eval().to(device)
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    timings = []
    with torch.no_grad():
        for i in range(repeats + 5):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= 5:  # warm-up
                timings.append(time.perf_counter() - start)
    return 1e3 * statistics.median(timings)


def default_data() -> str:
    return str(shapes_dataset(ShapesSpec()))


def run_ablation(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Every arm with every seed (finished ones reused), then the summary files in ``settings.out``."""
    from .report import write_summary

    for arm in settings.arms:
        upsampler(arm)  # an unknown name fails here, before any training
    data = settings.data or default_data()
    runs = [(arm, seed) for seed in settings.seeds for arm in settings.arms]
    results = []
    for number, (arm, seed) in enumerate(runs, 1):
        log(f"[{number}/{len(runs)}] {arm} (seed {seed}) on {settings.model}, {settings.epochs} epochs at {settings.imgsz} px")
        results.append(run_arm(settings, arm, seed, data, log))
    return write_summary(settings, data, results)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ablation's command-line options (``python -m carafe_ultra ablate``, ``scripts/ablate.py``)."""
    defaults = Settings()
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
    parser.add_argument("--arms", nargs="+", default=defaults.arms, choices=list(UPSAMPLERS))
    parser.add_argument("--out", default=defaults.out, help="output folder (re-runs resume there)")


def main(args: argparse.Namespace) -> None:
    """Run the ablation the parsed options describe and print its table."""
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    run_ablation(settings)
    out = Path(settings.out)
    print("\n" + (out / "summary.md").read_text())
    print(f"plot: {out / 'summary.png'}   numbers: {out / 'summary.json'}")

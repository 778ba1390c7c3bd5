"""The upsampler ablation: one model family trained with each upsampler (same data, seed and settings),
then compared on accuracy and cost. ``scripts/ablate.py`` is its command line.

Each (arm, seed) run lives in ``<out>/runs/<arm>-seed<seed>`` and ends by writing ``result.json`` there, so an
interrupted ablation re-run skips what already finished.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from .data import ShapesSpec, shapes_dataset
from .integration import model_dir

# How each arm writes an upsampling row, from the row's input channels c (nominal, as in the YAML) and scale s.
ARMS: dict[str, Callable[[int, int], list]] = {
    "nearest": lambda c, s: ["nn.Upsample", ["None", s, "nearest"]],  # "None" as the stock YAMLs write it
    "carafe": lambda c, s: ["CARAFE", [c, 5, s]],
    "bilinear": lambda c, s: ["nn.Upsample", ["None", s, "bilinear"]],
    "convtranspose": lambda c, s: ["nn.ConvTranspose2d", [c, s, s]],
    "dysample": lambda c, s: ["DySample", [c, s]],
}
DEFAULT_ARMS = ("nearest", "carafe")
UPSAMPLERS = {"nn.Upsample", "CARAFE", "DySample", "nn.ConvTranspose2d"}
# Modules whose first YAML argument is their (nominal) output channels, as parse_model's base modules.
CONV_LIKE = {"Conv", "SPPF", "C2f", "C3k2", "C2PSA", "C3", "C2", "C1", "RepC3", "GhostConv", "DWConv", "C2fPSA",
             "SPP", "BottleneckCSP", "C3x", "C3TR", "C3Ghost", "RepNCSPELAN4", "ELAN1", "SPPELAN", "A2C2f",
             "CARAFE", "DySample", "nn.ConvTranspose2d", "ConvTranspose"}


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


def resolve_model_yaml(name: str) -> Path:
    """A model YAML by path, by the name of one we ship, or by the name of an Ultralytics one."""
    from ultralytics.utils.checks import check_yaml

    if Path(name).is_file():
        return Path(name)
    unscaled = _unscaled_name(Path(name).name)
    for candidate in (model_dir() / name, model_dir() / unscaled):
        if candidate.is_file():
            return model_dir() / name
    check_yaml(unscaled)  # raises with Ultralytics' own message if it does not exist
    return Path(name)


def _unscaled_name(name: str) -> str:
    return re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)


def arm_yaml(model: str, arm: str, folder: Path) -> str:
    """Write the family's YAML with every upsampling row replaced by ``arm``'s; return the path to train.

    The returned name keeps the YOLO scale letter (Ultralytics reads it from the name) while the file on
    disk has none, as with Ultralytics' own YAMLs.
    """
    from ultralytics.nn.tasks import yaml_model_load

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    cfg = yaml_model_load(resolve_model_yaml(model))
    scale = cfg.pop("scale", "")
    cfg.pop("yaml_file", None)
    rows = cfg["backbone"] + cfg["head"]
    replaced = 0
    for index, row in enumerate(rows):
        if row[2] in UPSAMPLERS and _is_upsampling(row):
            row[2:] = ARMS[arm](_input_channels(rows, index), _scale_of(row))
            replaced += 1
    if not replaced:
        raise ValueError(f"{model} has no upsampling rows (nn.Upsample, CARAFE, DySample) to replace")
    folder.mkdir(parents=True, exist_ok=True)
    family = Path(_unscaled_name(Path(model).name)).stem.replace("-carafe", "")
    path = folder / f"{family}-{arm}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path.with_name(path.name.replace(family, _with_scale(family, scale), 1)))


def _with_scale(family: str, scale: str) -> str:
    return re.sub(r"^(yolo(?:v)?\d+)", rf"\g<1>{scale}", family) if scale and family.startswith("yolo") else family


def _is_upsampling(row: list) -> bool:
    return row[2] != "nn.ConvTranspose2d" or (len(row[3]) >= 3 and row[3][2] >= 2)


def _scale_of(row: list) -> int:
    module, args = row[2], row[3]
    if module == "nn.Upsample":
        return int(args[1])
    if module == "CARAFE":
        return int(args[2]) if len(args) > 2 else 2
    if module == "DySample":
        return int(args[1]) if len(args) > 1 else 2
    return int(args[2])  # nn.ConvTranspose2d [c2, kernel, stride]


def _input_channels(rows: list, index: int) -> int:
    """Nominal channels entering row ``index`` (what its Conv-like predecessor declares)."""
    row = rows[index]
    if row[2] in CONV_LIKE:
        return int(row[3][0])  # a learned upsampler already states them
    source = row[0] if row[0] >= 0 else index + row[0]
    feeding = rows[source]
    if feeding[2] not in CONV_LIKE:
        raise ValueError(f"cannot tell the channels entering layer {index}: layer {source} is {feeding[2]}")
    return int(feeding[3][0])


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
    from ultralytics import RTDETR, YOLO

    model_path = arm_yaml(settings.model, arm, out / "yamls")
    model_class = RTDETR if "rtdetr" in Path(model_path).stem else YOLO
    start = time.perf_counter()
    model = model_class(model_path)
    model.train(data=data, epochs=settings.epochs, imgsz=settings.imgsz, batch=settings.batch,
                device=settings.device, workers=settings.workers, seed=seed, deterministic=True,
                optimizer=settings.optimizer, lr0=settings.lr0, warmup_epochs=settings.warmup_epochs,
                mosaic=settings.mosaic,
                project=str(out / "runs"), name=run_dir.name, exist_ok=True, plots=False, verbose=False)
    seconds = time.perf_counter() - start
    best = model_class(run_dir / "weights" / "best.pt")
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

    unknown = [arm for arm in settings.arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    data = settings.data or default_data()
    runs = [(arm, seed) for seed in settings.seeds for arm in settings.arms]
    results = []
    for number, (arm, seed) in enumerate(runs, 1):
        log(f"[{number}/{len(runs)}] {arm} (seed {seed}) on {settings.model}, {settings.epochs} epochs at {settings.imgsz} px")
        results.append(run_arm(settings, arm, seed, data, log))
    return write_summary(settings, data, results)

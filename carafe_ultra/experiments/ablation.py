"""The upsampler ablation: one model family trained with each upsampler ("arm"), seed by seed, then compared on
accuracy and cost. ``python -m carafe_ultra ablate`` and ``scripts/ablate.py`` are its command line.

Seeds pair the arms: a seed fixes the data order and every augmentation draw (Ultralytics seeds its loaders from
it), so arm A and arm B with the same seed see the same batches and differ only in their upsampler (and in the
initial weights the upsampler's own parameters consume). The report compares arms through these seed-paired
differences. Each (arm, seed) run lives in ``<out>/runs/<arm>-seed<seed>`` and ends by writing ``result.json``
there, so an interrupted ablation re-run skips what already finished.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import hashlib
import json
import multiprocessing
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..integration import ultralytics_model
from ..module import CARAFE
from ..upsamplers import UPSAMPLERS, Upsampler, upsampler
from ..yamls import convert_yaml
from .timing import interleaved_seconds, synchronizer

DEFAULT_ARMS = ("nearest", "carafe")


@dataclass
class Settings:
    """One ablation: the model family, the data, the training recipe and what to run."""

    model: str = "yolov8n.yaml"
    data: str | None = None  # None: the generated shapes set at imgsz (see default_data)
    weights: str | None = None  # every arm starts from this checkpoint (all layers that match are taken over)
    pretrain_epochs: int = 0  # > 0: first train a base model (nearest) on other generated data; start from it
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
    val: bool = False  # validate after every epoch too (the final model is evaluated either way)
    mask_lr_scale: float = 1.0  # learning-rate factor for CARAFE's mask predictor (compressor and encoder)
    jobs: int = 1  # runs trained at once, in worker processes that share the CPU threads
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    out: str = "runs/ablation"

    def __post_init__(self) -> None:
        for name in ("epochs", "imgsz", "batch", "jobs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.mask_lr_scale > 0:
            raise ValueError(f"mask_lr_scale must be positive, got {self.mask_lr_scale}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise FileNotFoundError(f"weights {self.weights!r} is not a file (a trained Ultralytics .pt)")
        if not isinstance(self.pretrain_epochs, int) or self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be an int >= 0, got {self.pretrain_epochs!r}")
        if self.pretrain_epochs and self.weights:
            raise ValueError("give weights or pretrain_epochs, not both: both say where the arms start")
        if self.pretrain_epochs and self.data:
            raise ValueError("pretrain_epochs needs the generated data (it pretrains on other generated scenes); "
                             "with your own data, give the weights to start from")
        arms = [parse_arm(spec) for spec in self.arms]  # a wrong arm fails here, before any training
        if len({arm.folder for arm in arms}) != len(arms):
            raise ValueError(f"arms must be distinct, got {self.arms}")


@dataclass(frozen=True)
class Arm:
    """One arm: an upsampler of the table, with options for our module's keyword arguments.

    Written ``carafe`` or ``carafe:kernel_size=3,compressed_channels=16`` on the command line.
    """

    spec: str
    upsampler: Upsampler
    options: dict

    @property
    def folder(self) -> str:
        """The spec as a file name: ``carafe:kernel_size=3`` -> ``carafe-kernel_size-3``."""
        return re.sub(r"[^\w.]+", "-", self.spec).strip("-")


def parse_arm(spec: str) -> Arm:
    """The arm a spec names; raises ``ValueError`` naming what is wrong with it."""
    name, _, listed = spec.partition(":")
    entry = upsampler(name.strip())
    options = {}
    for item in filter(None, (part.strip() for part in listed.split(","))):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals:
            raise ValueError(f"arm {spec!r}: options are key=value pairs separated by commas, got {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"arm {spec!r}: {value!r} is not a literal (a number, True, False or None)") from None
    entry.yaml_args(64, 2, options)  # unknown option names fail here
    return Arm(spec, entry, options)


def default_data(imgsz: int, seed: int = 0) -> str:
    """The generated shapes set for this image size: at 160 px 256 training and 64 validation images with 4-12
    objects each; at other sizes the same pixels and objects per split, in fewer, larger images (objects keep
    their pixel sizes, so only the field of view grows). Another ``seed`` draws other scenes."""
    from .data import ShapesSpec, shapes_dataset  # OpenCV draws them: imported where data is made

    area = (imgsz / 160) ** 2
    spec = ShapesSpec(train_images=max(4, round(256 / area)), val_images=max(2, round(64 / area)), image_size=imgsz,
                      objects=(round(4 * area), round(12 * area)), seed=seed)
    return str(shapes_dataset(spec))


def pretrained_base(settings: Settings, log: Callable[[str], None] = print) -> str:
    """A base checkpoint to fine-tune every arm from, as users start from COCO weights: the family with nearest
    upsampling, trained for ``settings.pretrain_epochs`` epochs on generated scenes that are not the ablation's
    (seed 1). Trained once and cached (``CARAFE_ULTRA_CACHE``); returns the path of its best.pt."""
    from .data import default_cache_dir

    base = Settings(**{**asdict(settings), "pretrain_epochs": 0, "weights": None, "mask_lr_scale": 1.0,
                       "epochs": settings.pretrain_epochs, "arms": ["nearest"], "seeds": [0]})
    where_not_what = ("out", "data", "device", "workers", "jobs", "arms", "seeds")  # how it runs, not what it learns
    key = {k: v for k, v in asdict(base).items() if k not in where_not_what}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = default_cache_dir() / "bases" / f"{Path(settings.model).stem}-{digest}"
    best = folder / "weights" / "best.pt"
    if best.is_file():
        log(f"base model: reusing {best}")
        return str(best)
    log(f"base model: training {Path(settings.model).name} (nearest) for {base.epochs} epochs on other generated data")
    model = ultralytics_model(convert_yaml(settings.model, "nearest", folder))
    model.train(**recipe(base, 0), data=default_data(settings.imgsz, seed=1), project=str(folder.parent),
                name=folder.name, exist_ok=True)
    return str(best)


@dataclass
class RunResult:
    """What one (arm, seed) run measured: the final model's accuracy on the validation split."""

    upsampler: str
    seed: int
    mAP50: float
    mAP50_95: float
    train_seconds: float
    weights_taken: list[int] | None = None  # [state entries taken over from the weights, entries in all]


@dataclass
class ArmCost:
    """What one arm costs at inference, measured once per arm after training, the arms' latencies round-robin."""

    upsampler: str
    params: int
    GFLOPs: float
    latency_ms: float


def _run_dir(settings: Settings, arm: Arm, seed: int) -> Path:
    return Path(settings.out).resolve() / "runs" / f"{arm.folder}-seed{seed}"


def _load(kind: type, path: Path):
    """A result written by an earlier run (fields this version does not know are left out)."""
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def run_arm(settings: Settings, arm: Arm, seed: int, data: str, weights: str | None) -> RunResult:
    """Train one arm with one seed (from ``weights``, if given) and evaluate its final model; ends by writing
    ``result.json``."""
    run_dir = _run_dir(settings, arm, seed)
    out = run_dir.parents[1]
    model = ultralytics_model(convert_yaml(settings.model, arm.upsampler.name, out / "yamls" / arm.folder, arm.options))
    taken: list[int] = []
    if weights:
        model.add_callback("on_pretrain_routine_end", lambda trainer: taken.extend(_weights_taken(trainer, weights)))
    trainer = None
    if settings.mask_lr_scale != 1:
        trainer = _with_mask_lr_scale(model.task_map[model.task]["trainer"], settings.mask_lr_scale)
    start = time.perf_counter()
    metrics = model.train(**recipe(settings, seed, weights), data=data, trainer=trainer, project=str(run_dir.parent),
                          name=run_dir.name, exist_ok=True)
    result = RunResult(upsampler=arm.spec, seed=seed, mAP50=float(metrics.box.map50), mAP50_95=float(metrics.box.map),
                       train_seconds=time.perf_counter() - start, weights_taken=taken or None)
    (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def arm_costs(settings: Settings, arms: list[Arm]) -> list[ArmCost]:
    """Parameters, GFLOPs and latency of each arm's trained model (its first seed's), cached in ``runs/costs.json``.

    Latencies are measured round-robin across the arms, so whatever else the machine does hits them alike.
    """
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    path = Path(settings.out).resolve() / "runs" / "costs.json"
    cached = {cost["upsampler"]: cost for cost in json.loads(path.read_text())} if path.is_file() else {}
    if not all(arm.spec in cached for arm in arms):
        networks = {arm.spec: ultralytics_model(_run_dir(settings, arm, settings.seeds[0]) / "weights" / "best.pt").model
                    for arm in arms}
        latencies = latencies_ms(networks, settings.imgsz, settings.device)
        cached.update({spec: asdict(ArmCost(upsampler=spec, params=get_num_params(network),
                                            GFLOPs=float(get_flops(network, settings.imgsz)),
                                            latency_ms=latencies[spec]))
                       for spec, network in networks.items()})
        path.write_text(json.dumps(list(cached.values()), indent=2) + "\n")
    return [ArmCost(**cached[arm.spec]) for arm in arms]


def recipe(settings: Settings, seed: int, weights: str | None = None) -> dict:
    """The ``model.train`` arguments of one seed's run, the same for every arm."""
    return dict(
        epochs=settings.epochs, imgsz=settings.imgsz, batch=settings.batch, device=settings.device,
        workers=settings.workers, seed=seed, deterministic=True, optimizer=settings.optimizer, lr0=settings.lr0,
        warmup_epochs=settings.warmup_epochs, mosaic=settings.mosaic, val=settings.val, plots=False, verbose=False,
        **({"pretrained": weights} if weights else {}),
    )


def _weights_taken(trainer, weights: str) -> list[int]:
    """[entries of the model's state that now equal the checkpoint's, entries in all]: what loading took over."""
    from ultralytics.nn.tasks import load_checkpoint

    source = load_checkpoint(weights)[0].float().state_dict()
    state = trainer.model.state_dict()
    same = sum(name in source and source[name].shape == value.shape and torch.equal(source[name].to(value), value)
               for name, value in state.items())
    return [same, len(state)]


def _with_mask_lr_scale(base: type, factor: float) -> type:
    """``base`` (an Ultralytics trainer class) with CARAFE's mask predictor in param groups of its own whose
    learning rate is ``factor`` times its group's (the schedule then scales them alike)."""

    class MaskLearningRateTrainer(base):
        def build_optimizer(self, model, *args, **kwargs):
            optimizer = super().build_optimizer(model, *args, **kwargs)
            mask_params = {id(p) for m in model.modules() if isinstance(m, CARAFE)
                           for p in (*m.compressor.parameters(), *m.encoder.parameters())}
            for group in list(optimizer.param_groups):
                moved = [p for p in group["params"] if id(p) in mask_params]
                if moved:
                    group["params"] = [p for p in group["params"] if id(p) not in mask_params]
                    optimizer.add_param_group({**group, "params": moved, "lr": group["lr"] * factor})
            return optimizer

    return MaskLearningRateTrainer


def latencies_ms(networks: dict[str, torch.nn.Module], imgsz: int, device: str, repeats: int = 30) -> dict[str, float]:
    """Median forward time of one image (batch 1, float32, eval mode, no pre/post-processing) per network, the
    networks taking turns within each round."""
    first = str(device).split(",")[0].strip()  # Ultralytics' "0,1" style: time on the first device
    device = torch.device(f"cuda:{first}" if first.isdigit() else first)
    nets = {name: copy.deepcopy(network).float().eval().to(device) for name, network in networks.items()}
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    with torch.no_grad():
        timings = interleaved_seconds({name: functools.partial(net, x) for name, net in nets.items()}, repeats,
                                      warmup=5, synchronize=synchronizer(device))
    return {name: 1e3 * statistics.median(times) for name, times in timings.items()}


def run_ablation(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Every arm with every seed (finished runs reused), their costs, then the summary files in ``settings.out``.

    With ``settings.jobs`` > 1 the runs train in that many worker processes at once, each with its share of the
    CPU threads and its output in ``<run>.log``; costs are measured afterwards (see :func:`arm_costs`).
    """
    from .report import write_summary

    arms = [parse_arm(spec) for spec in settings.arms]
    data = settings.data or default_data(settings.imgsz)
    weights = pretrained_base(settings, log) if settings.pretrain_epochs else settings.weights
    runs = [(arm, seed) for seed in settings.seeds for arm in arms]
    results: dict[tuple[str, int], RunResult] = {}
    pending = []
    for arm, seed in runs:
        done = _run_dir(settings, arm, seed) / "result.json"
        if done.is_file():
            log(f"{arm.spec} seed {seed}: already finished, reusing {done}")
            results[arm.spec, seed] = _load(RunResult, done)
        else:
            pending.append((arm, seed))
    label = f"on {settings.model}, {settings.epochs} epochs at {settings.imgsz} px" + (
        f", from {weights}" if weights else "")
    if settings.jobs == 1:
        for number, (arm, seed) in enumerate(pending, 1):
            log(f"[{number}/{len(pending)}] {arm.spec} (seed {seed}) {label}")
            results[arm.spec, seed] = run_arm(settings, arm, seed, data, weights)
    else:
        threads = max(1, (os.cpu_count() or 1) // settings.jobs)
        log(f"{len(pending)} runs {label}, {settings.jobs} at a time ({threads} CPU thread(s) each)")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.jobs, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_run_logged, settings, arm.spec, seed, data, weights): (arm, seed)
                       for arm, seed in pending}
            for number, future in enumerate(as_completed(futures), 1):
                arm, seed = futures[future]
                result = results[arm.spec, seed] = future.result()
                log(f"[{number}/{len(pending)}] {arm.spec} (seed {seed}) done in {result.train_seconds / 60:.1f} min: "
                    f"mAP50 {result.mAP50:.3f}, mAP50-95 {result.mAP50_95:.3f}")
    costs = arm_costs(settings, arms)
    return write_summary(settings, data, weights, [results[arm.spec, seed] for arm, seed in runs], costs)


def _run_logged(settings: Settings, spec: str, seed: int, data: str, weights: str | None) -> RunResult:
    """run_arm in a worker process (the arm by its spec: table entries do not pickle), its output (Ultralytics'
    progress) in ``<run dir>.log``."""
    arm = parse_arm(spec)
    log_path = _run_dir(settings, arm, seed).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log_file.fileno(), 1), os.dup2(log_file.fileno(), 2)
        try:
            return run_arm(settings, arm, seed, data, weights)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ablation's command-line options (``python -m carafe_ultra ablate``, ``scripts/ablate.py``)."""
    defaults = Settings()
    parser.add_argument("--model", default=defaults.model,
                        help="model family: any RT-DETR or YOLO YAML, stock (yolov8n.yaml) or ours (yolov8n-carafe.yaml)")
    parser.add_argument("--data", default=None,
                        help="Ultralytics data YAML (default: the generated shapes set, made for --imgsz)")
    parser.add_argument("--weights", default=None,
                        help="start every arm from this checkpoint (e.g. yolov8n.pt): all matching layers are taken over")
    parser.add_argument("--pretrain-epochs", dest="pretrain_epochs", type=int, default=defaults.pretrain_epochs,
                        help="> 0: start every arm from a base model (nearest) trained this long on other generated "
                             "data, once and cached")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--imgsz", type=int, default=defaults.imgsz)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--device", default=defaults.device, help="cpu, 0, 0,1, ...")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--optimizer", default=defaults.optimizer, help="Ultralytics optimizer (auto for its default)")
    parser.add_argument("--lr0", type=float, default=defaults.lr0)
    parser.add_argument("--warmup-epochs", dest="warmup_epochs", type=float, default=defaults.warmup_epochs)
    parser.add_argument("--mosaic", type=float, default=defaults.mosaic)
    parser.add_argument("--val", action="store_true", help="validate after every epoch too (slower)")
    parser.add_argument("--mask-lr-scale", dest="mask_lr_scale", type=float, default=defaults.mask_lr_scale,
                        help="learning-rate factor for CARAFE's mask predictor (study option)")
    parser.add_argument("--jobs", type=int, default=defaults.jobs,
                        help="runs to train at once (worker processes sharing the CPU threads; 2 on a 2-core CPU)")
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds,
                        help="each seed pairs the arms (same data order and augmentation)")
    parser.add_argument("--arms", nargs="+", default=defaults.arms, metavar="ARM",
                        help=f"upsamplers: {', '.join(UPSAMPLERS)}; options after a colon, e.g. "
                             "carafe:kernel_size=3,compressed_channels=16")
    parser.add_argument("--out", default=defaults.out, help="output folder (re-runs resume there)")


def main(args: argparse.Namespace) -> None:
    """Run the ablation the parsed options describe and print its table."""
    try:
        settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    except (ValueError, FileNotFoundError) as error:  # an option out of range, a missing file, a wrong arm
        args.error(str(error))
    run_ablation(settings)
    out = Path(settings.out)
    print("\n" + (out / "summary.md").read_text())
    print(f"plot: {out / 'summary.png'}   numbers: {out / 'summary.json'}")

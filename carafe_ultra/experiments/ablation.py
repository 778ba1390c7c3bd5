"""The upsampler ablation: one model family trained with each upsampler ("arm"), seed by seed, then compared on
accuracy and cost. ``python -m carafe_ultra ablate`` and ``scripts/ablate.py`` are its command line.

Seeds pair the arms: a seed fixes the data order and every augmentation draw (Ultralytics seeds its loaders from
it), so arm A and arm B with the same seed see the same batches and differ only in their upsampler (and in the
initial weights the upsampler's own parameters consume). The report compares arms through these seed-paired
differences. Each (arm, seed) run lives in ``<out>/runs/<arm>-seed<seed>``: it keeps the checkpoint of its last
completed epoch there (:mod:`.resume`) and ends by writing ``result.json``, so a re-run of an interrupted ablation
skips what finished and resumes the rest exactly where they stopped. A folder holds one experiment: a command whose
settings differ from those it was started with stops before anything runs (:mod:`.settings_record`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from .._checks import is_number
from ..integration import ultralytics_model
from ..downsample import CARAFEDown
from ..module import CARAFE
from ..upsamplers import UPSAMPLERS, Upsampler, upsampler
from ..yamls import convert_yaml, head_row_options
from . import grid, resume
from .atomic import replaced_atomically, write_text_atomically
from .data_check import check_data
from .settings_record import RECORD, SettingsChanged, check_same_experiment
from .tasks import label as metric_label
from .tasks import HEAD_TASKS, task_of
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
    jobs: int = 1  # runs trained at once on this machine, each in a worker process with its own GPUs (or CPU share)
    gpus_per_run: int | None = None  # GPUs of --device each run trains on (several: DDP); default: shared out evenly
    ray: str | None = None  # run each (arm, seed) as a Ray task: "local", "auto" or a cluster address
    cpus_per_run: int | None = None  # Ray: CPUs each task asks for (default: its data loader workers + 1, as fits)
    ray_timeout: float = 600.0  # Ray: seconds tasks may wait to start with none of the grid's runs running
    ray_retries: int = 3  # Ray: times a task whose worker or node died is run again (each resuming its run)
    shard: str | None = None  # "I/N": run only every N-th run of the grid, from the I-th (for job arrays)
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
        for arm in filter(lambda arm: arm.head, arms):  # (Ultralytics is read only here: the GPU check may lack it)
            task = task_of(self.model)
            if task.name not in HEAD_TASKS:
                raise ValueError(f"arm {arm.spec} swaps a task head's own upsampling (a segmentation mask branch, a "
                                 f"semantic or depth decoder), but {self.model} is a {task.name} model, whose head "
                                 "has no upsampling of its own")
        for name in ("gpus_per_run", "cpus_per_run"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (is_number(self.ray_timeout) and self.ray_timeout > 0):
            raise ValueError(f"ray_timeout must be a positive number of seconds, got {self.ray_timeout!r}")
        if not isinstance(self.ray_retries, int) or isinstance(self.ray_retries, bool) or self.ray_retries < 0:
            raise ValueError(f"ray_retries must be an int >= 0, got {self.ray_retries!r}")
        if self.shard is not None:
            grid.parse_shard(self.shard)
        if self.ray is None:
            grid.device_slots(self.device, self.jobs, self.gpus_per_run)  # the GPUs must go round, before training
        if self.data is not None:
            check_data(self.data, self.model)  # missing, unreadable or of another task: before any folder is made


# Arms with CARAFE++'s downsampling swap (the neck's strided Convs as CARAFEDown), by name: the upsampler they keep.
DOWNSAMPLING_ARMS = {"carafe-down": "nearest", "carafe-both": "carafe"}
# Arms that swap a task head's own upsampling (carafe_ultra.heads: a segmentation mask branch, a semantic or depth
# decoder), by name: the neck's upsampler and the head's.
HEAD_ARMS = {"carafe-head": ("nearest", "carafe"), "carafe-all": ("carafe", "carafe")}


@dataclass(frozen=True)
class Arm:
    """One arm: an upsampler of the table, with options for our module's keyword arguments, with ``downsample`` the
    neck's strided Conv rows as CARAFEDown rows, and with ``head`` the task head's own upsampling (a segmentation mask
    branch, a semantic or depth decoder) with that upsampler of the table.

    Written ``carafe`` or ``carafe:kernel_size=3,compressed_channels=16`` on the command line; ``carafe-down``
    (nearest upsampling, CARAFEDown) and ``carafe-both`` (CARAFE and CARAFEDown) name the downsampling arms,
    ``carafe-head`` (the stock neck, CARAFE in the head) and ``carafe-all`` (CARAFE in both) the head arms, whose
    options go to the head's CARAFE (and the neck's, in carafe-all).
    """

    spec: str
    upsampler: Upsampler
    options: dict
    downsample: bool = False
    head: str | None = None

    @property
    def folder(self) -> str:
        """The spec as a file name: ``carafe:kernel_size=3`` -> ``carafe-kernel_size-3``."""
        return re.sub(r"[^\w.]+", "-", self.spec).strip("-")

    def definition(self, model: str) -> dict:
        """What the arm trains on ``model``: its upsampler and every option of our module (defaults included, so that
        a release that changes one is seen), whether the neck's strided Convs are CARAFEDown, and for the head arms
        the head's upsampler with every option the head builds it with (the head's defaults included too)."""
        head = {}
        if self.head:
            head = {"head": self.head, "head_options": head_row_options(model, self.head, self.options)}
        return {"upsampler": self.upsampler.name, **self.upsampler.module_defaults(), **self.options,
                "downsample": self.downsample, **head}

    def yaml(self, model: str, folder: Path) -> str:
        """Write the arm's model YAML (``model`` converted) into ``folder``; its path."""
        neck_options = self.options if self.head in (None, self.upsampler.name) else None
        return convert_yaml(model, self.upsampler.name, folder, neck_options, downsample=self.downsample,
                            heads=self.head or False, head_options=self.options if self.head else None)


def parse_arm(spec: str) -> Arm:
    """The arm a spec names; raises ``ValueError`` naming what is wrong with it."""
    name, _, listed = spec.partition(":")
    name = name.strip()
    if name not in UPSAMPLERS and name not in DOWNSAMPLING_ARMS and name not in HEAD_ARMS:
        names = [*UPSAMPLERS, *DOWNSAMPLING_ARMS, *HEAD_ARMS]
        raise ValueError(f"unknown arm {name!r}; choose from {', '.join(names)}")
    downsample = name in DOWNSAMPLING_ARMS
    neck, head = HEAD_ARMS.get(name, (DOWNSAMPLING_ARMS.get(name, name), None))
    entry = upsampler(neck)
    options = {}
    for item in filter(None, (part.strip() for part in listed.split(","))):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals:
            raise ValueError(f"arm {spec!r}: options are key=value pairs separated by commas, got {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"arm {spec!r}: {value!r} is not a literal (a number, True, False or None)") from None
    upsampler(head or neck).yaml_args(64, 2, options)  # unknown option names fail here
    return Arm(spec, entry, options, downsample, head)


def default_data(imgsz: int, seed: int = 0, task: str = "detect") -> str:
    """The generated shapes set for this image size: at 160 px 256 training and 64 validation images with 4-12
    objects each; at other sizes the same pixels and objects per split, in fewer, larger images (objects keep
    their pixel sizes, so only the field of view grows). Another ``seed`` draws other scenes; ``task`` says what
    labels them: boxes (``"detect"``), exact polygons (``"segment"``), class masks (``"semantic"``) or depth maps
    (``"depth"``)."""
    from .data import ShapesSpec, shapes_dataset  # OpenCV draws them: imported where data is made

    area = (imgsz / 160) ** 2
    spec = ShapesSpec(train_images=max(4, round(256 / area)), val_images=max(2, round(64 / area)), image_size=imgsz,
                      objects=(round(4 * area), round(12 * area)), seed=seed, task=task)
    return str(shapes_dataset(spec))


def generated_data(settings: Settings, seed: int = 0) -> str:
    """The generated set for the model of ``settings`` (labelled for its task) at its image size; ``seed`` 1 draws
    the other scenes the pretrained base trains on."""
    task = task_of(settings.model)
    if task.data is None:
        raise ValueError(f"there is no generated data for {task.name} models: give --data")
    return default_data(settings.imgsz, seed, task.data)


def ablation_data(settings: Settings) -> str:
    """The data the runs of ``settings`` train on: ``--data``, or else the generated set."""
    return settings.data or generated_data(settings)


def base_checkpoint(settings: Settings) -> str:
    """Where the base checkpoint of ``settings`` (see :func:`pretrained_base`) lives, trained or not."""
    from .data import default_cache_dir

    key = {k: v for k, v in asdict(_base_settings(settings)).items() if k not in _HOW_IT_RUNS}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return str(default_cache_dir() / "bases" / f"{Path(settings.model).stem}-{digest}" / "base.pt")


# Settings that say how runs are run, not what they learn: the base's cache key leaves them out.
_HOW_IT_RUNS = ("out", "data", "device", "workers", "jobs", "arms", "seeds", "gpus_per_run", "ray", "cpus_per_run",
                "ray_timeout", "ray_retries", "shard")
# Settings that decide what a run learns: every command on one --out must repeat them (the arms' definitions too).
# The device (which GPUs), the jobs, the loader workers and Ray's address may change between commands.
EXPERIMENT_SETTINGS = ("model", "data", "weights", "pretrain_epochs", "epochs", "imgsz", "batch", "optimizer", "lr0",
                       "warmup_epochs", "mosaic", "val", "mask_lr_scale")


def experiment_record(settings: Settings) -> dict:
    """The settings that make ``settings.out`` one experiment (see :mod:`.settings_record`): the weights by their
    content (a moved file is the same weights), each arm by its definition."""
    record = {name: getattr(settings, name) for name in EXPERIMENT_SETTINGS}
    if settings.weights:
        digest = hashlib.sha256()
        with open(settings.weights, "rb") as weights:
            for chunk in iter(lambda: weights.read(1 << 20), b""):
                digest.update(chunk)
        record["weights"] = f"sha256 {digest.hexdigest()[:16]}"
    record["arms"] = {spec: parse_arm(spec).definition(settings.model) for spec in settings.arms}
    return record


def _base_settings(settings: Settings) -> Settings:
    return Settings(**{**asdict(settings), "pretrain_epochs": 0, "weights": None, "mask_lr_scale": 1.0,
                       "epochs": settings.pretrain_epochs, "arms": ["nearest"], "seeds": [0], "jobs": 1,
                       "gpus_per_run": None, "ray": None, "shard": None})


def pretrained_base(settings: Settings, log: Callable[[str], None] = print) -> str:
    """A base checkpoint to fine-tune every arm from, as users start from COCO weights: the family with nearest
    upsampling, trained for ``settings.pretrain_epochs`` epochs on generated scenes that are not the ablation's
    (seed 1). Trained once and cached (``CARAFE_ULTRA_CACHE``; on a cluster, storage every machine sees): a lock
    makes shards that start together wait for the one that trains it, and an interrupted training resumes where it
    stopped. Returns the path of the base, which appears (atomically) only once its training finished."""
    from .data import exclusive

    base = Path(base_checkpoint(settings))
    folder, training = base.parent, base.parent / "training"
    with exclusive(folder):
        if base.is_file():
            log(f"base model: reusing {base}")
            return str(base)
        recipe_of_base = _base_settings(settings)
        log(f"base model: training {Path(settings.model).name} (nearest) for {recipe_of_base.epochs} epochs on other "
            f"generated data, {resume.how_it_starts(training)}")
        model = ultralytics_model(convert_yaml(settings.model, "nearest", folder))
        resume.train(model, training, _trainer(model, recipe_of_base), **recipe(recipe_of_base, 0),
                     data=generated_data(settings, seed=1))
        with replaced_atomically(base) as temporary:
            shutil.copyfile(training / "weights" / "best.pt", temporary)
        shutil.rmtree(training)
    return str(base)


@dataclass
class RunResult:
    """What one (arm, seed) run measured: the final model's accuracy on the validation split."""

    upsampler: str
    seed: int
    mAP50: float | None  # of the boxes (None for the tasks without boxes: semantic, depth)
    mAP50_95: float | None
    train_seconds: float
    weights_taken: list[int] | None = None  # [state entries taken over from the weights, entries in all]
    mask_mAP50: float | None = None  # instance segmentation: of the masks
    mask_mAP50_95: float | None = None
    pixel_accuracy: float | None = None  # semantic segmentation
    mIoU: float | None = None
    abs_rel: float | None = None  # depth
    delta1: float | None = None


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
    """Train one arm with one seed (from ``weights``, if given), resuming from the checkpoint an interrupted
    attempt left, and evaluate its final model; ends by writing ``result.json``."""
    run_dir = _run_dir(settings, arm, seed)
    model = ultralytics_model(arm.yaml(settings.model, run_dir.parents[1] / "yamls" / arm.folder))
    if weights:
        model.add_callback("on_pretrain_routine_end", functools.partial(_note_weights_taken, weights=weights))
    metrics, trainer = resume.train(model, run_dir, _trainer(model, settings), **recipe(settings, seed, weights),
                                    data=data)
    figures = {"mAP50": None, "mAP50_95": None, **task_of(settings.model).measure(metrics)}
    result = RunResult(upsampler=arm.spec, seed=seed, **figures, train_seconds=trainer.train_seconds,
                       weights_taken=trainer.notes.get("weights_taken"))
    write_text_atomically(run_dir / "result.json", json.dumps(asdict(result), indent=2) + "\n")
    resume.checkpoint_path(run_dir).unlink(missing_ok=True)  # finished: a re-run reuses result.json instead
    return result


def _trainer(model, settings: Settings) -> type:
    """The Ultralytics trainer class of ``model``'s task, with CARAFE's mask learning-rate scale if set."""
    trainer = model.task_map[model.task]["trainer"]
    return _with_mask_lr_scale(trainer, settings.mask_lr_scale) if settings.mask_lr_scale != 1 else trainer


def _note_weights_taken(trainer, weights: str) -> None:
    """``on_pretrain_routine_end``: note in the trainer's kept notes what loading ``weights`` took over (an
    attempt that resumes has its first attempt's note)."""
    if not trainer.resume:
        trainer.notes["weights_taken"] = _weights_taken(trainer, weights)


def arm_costs(settings: Settings, arms: list[Arm], seeds: dict[str, int]) -> tuple[list[ArmCost], str]:
    """Parameters, GFLOPs and latency of each arm's trained model (that of its seed in ``seeds``), and the device the
    latencies were timed on; cached in ``runs/costs.json``.

    Latencies are measured round-robin across the arms, on the first device of ``settings.device`` of the machine
    making the report, so whatever else it does hits them alike; a cache from another device is measured afresh,
    never mixed in.
    """
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    device = latency_device(settings.device)
    where = device_description(device)
    path = Path(settings.out).resolve() / "runs" / "costs.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    cached = {c["upsampler"]: c for c in stored.get("arms", [])} if stored.get("device") == where else {}
    if not all(arm.spec in cached for arm in arms):
        networks = {arm.spec: ultralytics_model(_run_dir(settings, arm, seeds[arm.spec]) / "weights" / "best.pt").model
                    for arm in arms}
        latencies = latencies_ms(networks, settings.imgsz, device)
        cached.update({spec: asdict(ArmCost(upsampler=spec, params=get_num_params(network),
                                            GFLOPs=float(get_flops(network, settings.imgsz)),
                                            latency_ms=latencies[spec]))
                       for spec, network in networks.items()})
        write_text_atomically(path, json.dumps({"device": where, "arms": list(cached.values())}, indent=2) + "\n")
    return [ArmCost(**cached[arm.spec]) for arm in arms], where


def latency_device(device: str) -> torch.device:
    """The device latencies are timed on: the first of an Ultralytics device string (``"0,1"`` -> cuda:0)."""
    ids = grid.gpu_ids(device)  # the one reading of Ultralytics' device strings
    return torch.device("cuda", int(ids[0])) if ids else torch.device(str(device).strip())


def device_description(device: torch.device) -> str:
    """What the report says the latencies were timed on: the GPU's or the CPU's name."""
    from ultralytics.utils.torch_utils import get_cpu_info, get_gpu_info

    if device.type == "cuda":
        return f"{get_gpu_info(device.index or 0)} ({device})"
    threads = torch.get_num_threads()
    return f"{get_cpu_info()} ({threads} thread{'s' if threads > 1 else ''})"


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
            mask_params = {id(p) for m in model.modules() if isinstance(m, (CARAFE, CARAFEDown))
                           for p in (*m.compressor.parameters(), *m.encoder.parameters())}
            for group in list(optimizer.param_groups):
                moved = [p for p in group["params"] if id(p) in mask_params]
                if moved:
                    group["params"] = [p for p in group["params"] if id(p) not in mask_params]
                    optimizer.add_param_group({**group, "params": moved, "lr": group["lr"] * factor})
            return optimizer

    return MaskLearningRateTrainer


def latencies_ms(networks: dict[str, torch.nn.Module], imgsz: int, device: torch.device,
                 repeats: int = 30) -> dict[str, float]:
    """Median forward time of one image (batch 1, float32, eval mode, no pre/post-processing) per network on
    ``device``, the networks taking turns within each round."""
    nets = {name: copy.deepcopy(network).float().eval().to(device) for name, network in networks.items()}
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    with torch.no_grad():
        timings = interleaved_seconds({name: functools.partial(net, x) for name, net in nets.items()}, repeats,
                                      warmup=5, synchronize=synchronizer(device))
    return {name: 1e3 * statistics.median(times) for name, times in timings.items()}


class GridIncomplete(RuntimeError):
    """Some runs of the grid failed; the summary of the others was written, and a re-run trains only the missing,
    each resuming from the last epoch it completed."""


def grid_runs(settings: Settings) -> list[grid.Run]:
    """Every (arm, seed) run of the ablation, in the order the shards split it."""
    return [(spec, seed) for seed in settings.seeds for spec in settings.arms]


def _folder(settings: Settings, run: grid.Run) -> Path:
    return _run_dir(settings, parse_arm(run[0]), run[1])


def finished(settings: Settings) -> dict[grid.Run, RunResult]:
    """The runs of the grid that wrote their ``result.json``."""
    done = {}
    for run in grid_runs(settings):
        path = _folder(settings, run) / "result.json"
        if path.is_file():
            done[run] = _load(RunResult, path)
    return done


def run_ablation(settings: Settings, log: Callable[[str], None] = print, task: grid.Task | None = None) -> dict | None:
    """Train every run of the grid that has no result yet (all of them, or this shard's), then, unless it is a shard,
    measure the costs and write the summary files in ``settings.out``; returns the summary (None for a shard).

    Runs train in this process (``jobs`` 1), in worker processes of one slot each (``jobs`` > 1: their output in
    ``runs/<run>.log``, one console line per epoch) or as Ray tasks (``ray``). ``task(run, device)`` trains one
    run (default: :func:`train_run` here, :func:`train_logged` elsewhere; the tests give their own). A run that
    fails is reported and the others go on; then :class:`GridIncomplete` is raised, after the summary of the others
    is written.
    """
    request = ray_request(settings) if settings.ray else None  # a request that fits no node fails before anything
    check_same_experiment(settings.out, experiment_record(settings))  # before anything is trained or made
    if not settings.data:
        generated_data(settings)  # made once, before the runs that read it
    weights = pretrained_base(settings, log) if settings.pretrain_epochs else settings.weights
    runs = grid_runs(settings)
    if settings.shard:
        runs = grid.shard(runs, *grid.parse_shard(settings.shard))
    done = finished(settings)
    for run in runs:
        if run in done:
            log(f"{run[0]} seed {run[1]}: already finished, reusing {_folder(settings, run) / 'result.json'}")
    pending = [run for run in runs if run not in done]  # each resumes from its checkpoint, if it left one
    label = f"on {settings.model}, {settings.epochs} epochs at {settings.imgsz} px" + (
        f", from {weights}" if weights else "")
    in_place = settings.jobs == 1 and not settings.ray  # trained here, its output on this console
    task = task or functools.partial(train_run if in_place else train_logged, settings, weights)
    failures = _train(settings, pending, task, label, log, request)
    summary = None
    if settings.shard:
        log(f"shard {settings.shard}: {len(runs) - len(failures)} of {len(runs)} runs finished; once every shard has, "
            "the same command with --report (and without --shard) writes the summary")
    elif finished(settings):  # of what finished, if anything did
        summary = write_report(settings, log)
    if failures:
        raise GridIncomplete(f"{len(failures)} run(s) failed; the others are in {settings.out}, and a re-run trains "
                             "only the missing ones, each from the last epoch it completed:\n"
                             + "\n".join(f"  {r[0]} seed {r[1]}: {e}" for r, e in failures.items()))
    return summary


def ray_request(settings: Settings) -> grid.RayRequest:
    """What each Ray task of ``settings`` asks for, fitted to the cluster (connecting to it): ``--gpus-per-run`` GPUs
    (default 1 on GPUs, 0 on a CPU) and ``--cpus-per-run`` CPUs (default ``--workers`` + 1, at most what the largest
    node has). Raises :class:`grid.RayRequestError` if no node can run such a task."""
    gpus = settings.gpus_per_run or (0 if grid.gpu_ids(settings.device) is None else 1)
    return grid.ray_request(settings.ray, gpus, settings.cpus_per_run, settings.workers + 1)


def _train(settings: Settings, pending: list[grid.Run], task: grid.Task, label: str, log: Callable[[str], None],
           request: grid.RayRequest | None) -> dict[grid.Run, str]:
    """Train ``pending`` where ``settings`` says (as Ray tasks of ``request``, with ``settings.ray``); {run: error}
    of those that failed."""
    failures: dict[grid.Run, str] = {}
    count = iter(range(1, len(pending) + 1))
    metrics = task_of(settings.model).metrics

    def done(run: grid.Run, result: RunResult | None, error: str | None) -> None:
        number = next(count)
        if error is not None:
            failures[run] = error
            log(f"[{number}/{len(pending)}] {run[0]} (seed {run[1]}) FAILED: {error}")
        else:
            figures = ", ".join(f"{metric_label(key)} {getattr(result, field):.3f}"
                                for key, (field, _) in metrics.items())
            log(f"[{number}/{len(pending)}] {run[0]} (seed {run[1]}) done in {result.train_seconds / 60:.1f} min: "
                f"{figures}")

    folder_of = functools.partial(_folder, settings)
    resuming = {run: epochs for run in pending if (epochs := resume.completed_epochs(folder_of(run))) is not None}
    progress = grid.Progress(folder_of, settings.epochs, log, resuming)
    if request is not None:
        log(f"{len(pending)} runs {label}, as Ray tasks of {request.gpus} GPU(s) and {request.cpus} CPU(s) each "
            f"({settings.ray})")
        grid.run_on_ray(request, pending, task, Path(settings.out).resolve(), progress, done, settings.ray_timeout,
                        settings.ray_retries)
        return failures
    slots = grid.device_slots(settings.device, settings.jobs, settings.gpus_per_run)
    if settings.jobs > 1:
        gpus = " | ".join(slot.visible for slot in slots if slot.visible)
        where = f"GPUs {gpus}; " if gpus else ""
        log(f"{len(pending)} runs {label}, {settings.jobs} at a time ({where}{slots[0].threads} CPU thread(s) each)")
        grid.run_in_slots(slots, pending, task, progress, done)
        return failures
    for number, run in enumerate(pending, 1):
        log(f"[{number}/{len(pending)}] {run[0]} (seed {run[1]}) {label}")
        progress.started(run)
        try:
            result = task(run, slots[0].device)
        except Exception as error:  # one failing run does not lose the others
            done(run, None, f"{type(error).__name__}: {error}")
        else:
            done(run, result, None)
    return failures


def train_run(settings: Settings, weights: str | None, run: grid.Run, device: str) -> RunResult:
    """Train one run of the grid on ``device``, wherever this process is: generated data is made here (every
    machine makes the same), and ``weights`` must be visible here."""
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"the weights {weights} are not visible on {socket.gethostname()}: put them (and "
                                "CARAFE_ULTRA_CACHE, with --pretrain-epochs) on storage that every machine sees")
    alone = replace(settings, device=device, jobs=1, gpus_per_run=None, ray=None, shard=None)
    return run_arm(alone, parse_arm(run[0]), run[1], ablation_data(settings), weights)


def train_logged(settings: Settings, weights: str | None, run: grid.Run, device: str) -> RunResult:
    """:func:`train_run` with its output (Ultralytics' progress) in ``runs/<arm>-seed<seed>.log``: the task of the
    worker processes and Ray tasks."""
    log_path = _folder(settings, run).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:  # a resumed or retried attempt adds to the log of the earlier ones
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log_file.fileno(), 1), os.dup2(log_file.fileno(), 2)
        try:
            return train_run(settings, weights, run, device)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def write_report(settings: Settings, log: Callable[[str], None] = print) -> dict:
    """summary.json, summary.md and summary.png from the runs that finished (``result.json``), naming those still
    missing; the costs measured here, on this machine's first ``settings.device``."""
    from .report import write_summary

    check_same_experiment(settings.out, experiment_record(settings), create=False)
    done = finished(settings)
    if not done:
        raise FileNotFoundError(f"no run of this ablation has finished in {Path(settings.out) / 'runs'} yet")
    missing = [run for run in grid_runs(settings) if run not in done]
    results = [done[run] for run in grid_runs(settings) if run in done]
    arms = [parse_arm(spec) for spec in settings.arms if any(r.upsampler == spec for r in results)]
    first_seeds = {arm.spec: next(r.seed for r in results if r.upsampler == arm.spec) for arm in arms}
    costs, where = arm_costs(settings, arms, first_seeds)
    weights = base_checkpoint(settings) if settings.pretrain_epochs else settings.weights
    summary = write_summary(settings, ablation_data(settings), weights, results, costs,
                            missing=[f"{spec} seed {seed}" for spec, seed in missing], latency_device=where,
                            task=task_of(settings.model))
    if missing:
        log(f"{len(missing)} run(s) missing from the summary: " + ", ".join(f"{s} seed {d}" for s, d in missing))
    _show_carafe_arms(settings, arms, first_seeds, log)
    return summary


def _show_carafe_arms(settings: Settings, arms: list[Arm], seeds: dict[str, int], log: Callable[[str], None]) -> None:
    """``show-<arm>.png`` beside summary.png for each CARAFE or CARAFEDown arm: what its first seed's model learned, drawn on the
    first validation image."""
    import matplotlib.pyplot as plt

    from .show import show

    image = first_validation_image(ablation_data(settings))
    if image is None:
        log("no validation image found to draw the CARAFE arms' kernels on")
        return
    for arm in arms:
        if arm.upsampler.module_class is CARAFE or arm.downsample or arm.head == "carafe":
            figure, _ = show(_run_dir(settings, arm, seeds[arm.spec]) / "weights" / "best.pt", image,
                             imgsz=settings.imgsz, out=Path(settings.out) / f"show-{arm.folder}.png")
            plt.close(figure)


def first_validation_image(data: str) -> Path | None:
    """The first image (by name) of a data YAML's validation split, if that split is a folder."""
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    split = check_det_dataset(data, autodownload=False).get("val")
    folders = [Path(p) for p in (split if isinstance(split, list) else [split])]
    images = sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*")
                    if p.suffix.lower().lstrip(".") in IMG_FORMATS)
    return images[0] if images else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ablation's command-line options (``python -m carafe_ultra ablate``, ``scripts/ablate.py``)."""
    defaults = Settings()
    parser.add_argument("--model", default=defaults.model,
                        help="model family: any RT-DETR or YOLO YAML, stock (yolov8n.yaml) or ours (yolov8n-carafe.yaml); "
                             "a segmentation model (yolo11n-seg.yaml) makes it a segmentation ablation, judged on "
                             "mask mAP50-95")
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
                        help="runs to train at once on this machine, each in a worker process with GPUs of its own "
                             "(or its share of the CPU threads: 2 on a 2-core CPU)")
    parser.add_argument("--gpus-per-run", dest="gpus_per_run", type=int, default=None,
                        help="GPUs each run trains on (more than one: Ultralytics' DDP); default: --device's GPUs "
                             "shared out evenly among --jobs; with --ray 1 (0 with --device cpu)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run each (arm, seed) as a Ray task: alone a Ray instance on this machine, or 'auto' or "
                             "an address for a running cluster (then --out must be on storage every node sees)")
    parser.add_argument("--cpus-per-run", dest="cpus_per_run", type=int, default=None,
                        help="--ray: CPUs each task asks for (default: --workers + 1, at most the largest node's)")
    parser.add_argument("--ray-timeout", dest="ray_timeout", type=float, default=defaults.ray_timeout,
                        metavar="SECONDS", help="--ray: report and cancel the tasks Ray has not started after this "
                                                "long with none of the grid's runs running (default: %(default)g)")
    parser.add_argument("--ray-retries", dest="ray_retries", type=int, default=defaults.ray_retries, metavar="N",
                        help="--ray: times Ray runs a task again whose worker process or node died, each time resuming "
                             "the run from its last completed epoch (default: %(default)d); a run that raises an "
                             "error is not retried")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="run only every N-th run of the grid, from the I-th (0-based), e.g. a job array's "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; then --report once")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write summary.* from the runs that finished, naming those missing")
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds,
                        help="each seed pairs the arms (same data order and augmentation)")
    parser.add_argument("--arms", nargs="+", default=defaults.arms, metavar="ARM",
                        help=f"upsamplers: {', '.join(UPSAMPLERS)}; options after a colon, e.g. "
                             "carafe:kernel_size=3,compressed_channels=16; carafe-down (the neck's strided Convs as "
                             "CARAFE++ downsamplers, nearest upsampling) and carafe-both (CARAFE and CARAFEDown); "
                             "for segmentation, semantic and depth models carafe-head (CARAFE in the head's own "
                             "upsampling, the stock neck) and carafe-all (CARAFE in the neck and the head)")
    parser.add_argument("--out", default=defaults.out,
                        help="output folder: a re-run of the same command resumes there; other settings are refused")
    parser.add_argument("--restart", action="store_true",
                        help="delete what --out holds of an earlier ablation (runs, summary, settings) and start over")


def main(args: argparse.Namespace) -> None:
    """Run the ablation the parsed options describe and print its table."""
    try:
        settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
        if args.report and settings.shard:
            raise ValueError("--report writes the summary of the whole grid: give it without --shard")
        if args.restart and (args.report or settings.shard):
            raise ValueError("--restart deletes the runs of --out: give it without --report, and with shards clear "
                             "the folder once (--restart without --shard, or rm -r) before they start")
    except (ValueError, FileNotFoundError) as error:  # an option out of range, a missing file, a wrong arm, bad data
        args.error(str(error))
    try:
        if args.restart:
            restart(settings.out)
        if args.report:
            write_report(settings)
        elif run_ablation(settings) is None:  # a shard: no summary yet
            return
    except (FileNotFoundError, grid.RayRequestError, SettingsChanged) as error:  # nothing to report; no node fits;
        args.error(str(error))  # the folder holds another experiment
    except GridIncomplete as error:
        if not settings.shard:
            _print_summary(settings)  # of the runs that finished
        sys.exit(f"error: {error}")
    _print_summary(settings)


def restart(out: str | Path) -> None:
    """Delete what an ablation left in ``out`` (its runs, summary, figures and settings record); other files stay."""
    out = Path(out)
    for folder in ("runs", "yamls"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for path in [*out.glob("summary.*"), *out.glob("show-*.png"), out / RECORD]:
        path.unlink(missing_ok=True)


def _print_summary(settings: Settings) -> None:
    out = Path(settings.out)
    if (out / "summary.md").is_file():
        print("\n" + (out / "summary.md").read_text())
        print(f"plot: {out / 'summary.png'}   numbers: {out / 'summary.json'}")

"""Tasks for the grid tests, importable in worker processes and Ray workers: one records where a run would train
(without training), others fail on a chosen run, or kill their own process in it, and train the others for real."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import torch

from carafe_ultra.experiments import ablation, resume
from carafe_ultra.experiments.ablation import RunResult, train_logged, train_run


def record(settings, weights, run, device, seconds: float = 0.5) -> RunResult:
    """What the run would train with: the GPUs its process sees, the device string, its DDP port and threads, in
    ``<out>/probe/<arm>-<seed>.json``; it takes ``seconds`` (so that runs overlap)."""
    from ultralytics.utils import dist

    time.sleep(seconds)
    folder = Path(settings.out) / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    seen = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": device, "pid": os.getpid(),
            "port": dist.find_free_network_port(), "threads": torch.get_num_threads()}
    (folder / f"{run[0]}-{run[1]}.json").write_text(json.dumps(seen))
    return RunResult(upsampler=run[0], seed=run[1], mAP50=0.5, mAP50_95=0.25, train_seconds=seconds)


def fail_on(failing, settings, weights, run, device) -> RunResult:
    """Raise on the run ``failing``; train every other one for real."""
    if tuple(run) == tuple(failing):
        raise RuntimeError(f"injected failure of {run[0]} seed {run[1]}")
    return train_run(settings, weights, run, device)


def record_but(failing, settings, weights, run, device) -> RunResult:
    """Raise on the run ``failing``; :func:`record` every other one."""
    if tuple(run) == tuple(failing):
        raise RuntimeError(f"injected failure of {run[0]} seed {run[1]}")
    return record(settings, weights, run, device, seconds=0)


def die_on(failing, settings, weights, run, device) -> RunResult:
    """End the worker process itself on the run ``failing`` (as a crash would); :func:`record` every other one."""
    if tuple(run) == tuple(failing):
        os._exit(1)
    return record(settings, weights, run, device, seconds=0)


def die_once_after_an_epoch(failing, marker, settings, weights, run, device) -> RunResult:
    """Train every run for real (:func:`train_logged`); on the first attempt at the run ``failing`` (``marker`` not
    yet there), end this worker process with SIGKILL as soon as the run has kept its first epoch, as a lost node
    would."""
    stop = threading.Event()
    if tuple(run) == tuple(failing) and not Path(marker).exists():
        Path(marker).touch()
        checkpoint = resume.checkpoint_path(ablation._folder(settings, run))

        def kill_when_kept() -> None:
            while not stop.is_set():
                if checkpoint.is_file():
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.005)

        threading.Thread(target=kill_when_kept, daemon=True).start()
    try:
        return train_logged(settings, weights, run, device)
    finally:
        stop.set()  # this worker process may run other tasks: never kill those

"""Trainings that resume exactly where they stopped: an interrupted run, trained again, ends with the weights and
metrics the uninterrupted run ends with, bit for bit, having lost at most the epoch that was in flight.

Ultralytics' own resume (``resume=True`` from ``last.pt``) continues a training but not the same training: its
checkpoint keeps the EMA and the optimizer in float16 and no live weights, no random state, and its loop keeps the
gradient-accumulation cadence in a local variable, so a resumed run steps its optimizer at other batches and drops the
gradients accumulated since the last step. :func:`resumable` makes any Ultralytics trainer class write, after every
epoch the training goes on from, ``weights/resume.pt``: a checkpoint in Ultralytics' format (the keys its resume
reads, with the EMA and the optimizer in float32, so ``yolo train resume model=.../resume.pt`` takes it too) plus what
Ultralytics keeps nowhere:

- the live weights (float32, BatchNorm statistics included);
- the random states: torch's, numpy's and Python's, the train loader's generator (its sampler's order and its
  workers' seeds) and the dataset's mosaic buffer;
- the accumulation cadence: the batch of the last optimizer step and the gradients accumulated since;
- the early-stopping state, the last fitness and metrics, the training seconds so far, and the caller's ``notes``.

Each epoch draws its batches from a fresh loader iterator, so what an epoch sees depends only on those states (with
Ultralytics' persistent iterator it would depend on worker processes, whose random states no checkpoint can hold).
:func:`train` runs a training in a folder: from its ``resume.pt`` when an earlier attempt left one, else afresh.
"""

from __future__ import annotations

import csv
import functools
import io
import random
import shutil
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from .atomic import replaced_atomically, write_text_atomically

CHECKPOINT = "resume.pt"  # in the run's weights/ folder, beside Ultralytics' last.pt and best.pt
EXACT = "carafe_ultra_exact"  # the checkpoint's entry for what Ultralytics' own entries do not hold


def checkpoint_path(folder: str | Path) -> Path:
    """Where the training in ``folder`` (Ultralytics' ``save_dir``) keeps the checkpoint it resumes from."""
    return Path(folder) / "weights" / CHECKPOINT


def completed_epochs(folder: str | Path) -> int | None:
    """How many epochs the training in ``folder`` completed and resumes after; None when there is nothing to resume
    (never started, interrupted before its first epoch ended, or finished)."""
    path = checkpoint_path(folder)
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["epoch"]) + 1


def how_it_starts(folder: str | Path) -> str:
    """``"resumed from epoch E"`` or ``"started"``: what :func:`train` does next with the training in ``folder``."""
    epochs = completed_epochs(folder)
    return "started" if epochs is None else f"resumed from epoch {epochs}"


def train(model, folder: str | Path, trainer: type, **arguments):
    """``model.train(**arguments)`` with ``trainer`` made :func:`resumable`, in ``folder``: resumed from the
    checkpoint there when an earlier attempt left one (``arguments`` must be that attempt's), else started afresh in
    an emptied folder. Returns (``model.train``'s metrics, the trainer). The checkpoint stays until the caller has
    kept what the training gave and removes it (``checkpoint_path(folder).unlink()``): a kill in between costs the
    last epoch, not the run."""
    folder = Path(folder)
    checkpoint = checkpoint_path(folder)
    if checkpoint.is_file():  # save_dir: the folder may have moved (another node's mount of shared storage)
        where = {"resume": str(checkpoint), "save_dir": str(folder)}
    else:  # what an attempt interrupted in its first epoch left behind would mislead (results.csv, weights)
        shutil.rmtree(folder, ignore_errors=True)
        where = {"project": str(folder.parent), "name": folder.name, "exist_ok": True}
    metrics = model.train(trainer=resumable(trainer), **where, **arguments)
    return metrics, model.trainer


@functools.cache
def resumable(base: type) -> type:
    """``base`` (an Ultralytics trainer class) that keeps, after every epoch the training goes on from, everything
    its next epoch depends on in ``weights/resume.pt``, and resumes from such a file exactly (see the module's text).

    Its ``notes`` (a dict of JSON-able values, e.g. what the initial weights took over) are kept with the checkpoint,
    and ``train_seconds`` counts the training time of every attempt up to the checkpoint plus this attempt's."""

    class Resumable(base):
        _accumulate, _catch_up = 1, 0  # class defaults: the base's __init__ may already set accumulate

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.notes: dict = {}
            self._seconds_before, self._attempt_start = 0.0, time.perf_counter()
            self._batch = self._last_step = -1  # the batch being trained, the batch of the last optimizer step
            self._restore: dict | None = None  # what a resumed attempt restores when its first epoch starts
            self.add_callback("on_train_epoch_start", Resumable._start_epoch)
            self.add_callback("on_train_batch_start", Resumable._count_batch)

        @property
        def train_seconds(self) -> float:
            return self._seconds_before + time.perf_counter() - self._attempt_start

        # Ultralytics' loop steps the optimizer when `batch - last_step >= self.accumulate`, with `last_step` a local
        # that a new attempt starts at -1; until a resumed attempt's first step, accumulate reads that much higher.
        @property
        def accumulate(self) -> int:
            return self._accumulate + self._catch_up

        @accumulate.setter
        def accumulate(self, value: int) -> None:
            self._accumulate = value

        def optimizer_step(self):
            super().optimizer_step()
            self._last_step, self._catch_up = self._batch, 0

        def _count_batch(self) -> None:
            self._batch += 1

        def _start_epoch(self) -> None:
            if self._restore is not None:  # after the loop zeroed the gradients, before any data is drawn
                restore_random_states(self._restore["random"], self.train_loader)
                model = _unwrap(self.model)
                for name, parameter in model.named_parameters():
                    gradient = self._restore["gradients"].get(name)
                    parameter.grad = None if gradient is None else gradient.to(parameter)
                self._catch_up, self._restore = self._last_step + 1, None
            self._batch = self.epoch * len(self.train_loader) - 1
            self.train_loader.reset()  # a fresh iterator: this epoch's batches follow from the states above alone

        def save_model(self):
            saved = super().save_model()
            if not self.stop:  # the training goes on after this epoch: keep where it stands
                with replaced_atomically(self.wdir / CHECKPOINT) as temporary:
                    torch.save(self._checkpoint(), temporary)
            return saved

        def _checkpoint(self) -> dict:
            model = _unwrap(self.model)
            ema = deepcopy(self.ema.ema)
            if hasattr(ema, "criterion"):
                ema.criterion = None  # training-only state, rebuilt on use
            return {
                # What Ultralytics' resume reads (check_resume, setup_model, _load_checkpoint_state), in float32.
                "epoch": self.epoch,
                "best_fitness": self.best_fitness,
                "stopper": dict(vars(self.stopper)),
                "model": None,
                "ema": ema,
                "updates": self.ema.updates,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "train_args": vars(self.args),
                EXACT: {
                    "model": model.state_dict(),
                    "gradients": {name: p.grad for name, p in model.named_parameters() if p.grad is not None},
                    "last_step": self._last_step,
                    "random": random_states(self.train_loader),
                    "fitness": self.fitness,
                    "metrics": self.metrics,
                    "seconds": self.train_seconds,
                    "notes": self.notes,
                },
            }

        def resume_training(self, ckpt):
            super().resume_training(ckpt)  # epoch, optimizer, scaler, EMA, best fitness, early stopping
            exact = ckpt.get(EXACT) if ckpt and self.resume else None
            if exact is None:  # not resuming, or from a plain Ultralytics checkpoint: as Ultralytics resumes
                return
            _unwrap(self.model).load_state_dict(exact["model"])
            self.fitness, self.metrics, self.notes = exact["fitness"], exact["metrics"], exact["notes"]
            self._seconds_before, self._last_step, self._restore = exact["seconds"], exact["last_step"], exact
            _keep_rows_up_to(self.csv, self.start_epoch)  # the interrupted epoch's row, if it was written

    Resumable.__name__ = Resumable.__qualname__ = f"Resumable{base.__name__}"
    return Resumable


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(model)


def random_states(loader) -> dict:
    """Every random state the next epoch draws from, as tensors and plain numbers (safe to load)."""
    numpy = np.random.get_state(legacy=False)
    buffer = getattr(loader.dataset, "buffer", None)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {**numpy, "state": {"key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
                                     "pos": int(numpy["state"]["pos"])}},
        "python": random.getstate(),
        "loader": loader.generator.get_state(),
        "mosaic_buffer": list(buffer) if isinstance(buffer, list) else [],
    }


def restore_random_states(states: dict, loader) -> None:
    """Put back what :func:`random_states` kept; the images of the mosaic buffer are loaded again."""
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state({**numpy, "state": {"key": numpy["state"]["key"].numpy().astype(np.uint32),
                                            "pos": numpy["state"]["pos"]}})
    random.setstate(states["python"])
    loader.generator.set_state(states["loader"])
    dataset = loader.dataset
    if isinstance(getattr(dataset, "buffer", None), list):
        # Mosaic draws its partners from the images loaded last: load them again, oldest first, as they were.
        for index in dataset.buffer:
            dataset.ims[index] = dataset.im_hw0[index] = dataset.im_hw[index] = None
        dataset.buffer.clear()
        for index in states["mosaic_buffer"]:
            dataset.load_image(index)


def _keep_rows_up_to(path: Path, epochs: int) -> None:
    """Drop the rows of Ultralytics' results.csv after epoch ``epochs`` (1-based): an attempt killed after writing
    an epoch's row but before its checkpoint trains that epoch again."""
    if not path.is_file():
        return
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    kept = rows[:1] + [row for row in rows[1:] if row and float(row[0]) <= epochs]
    if len(kept) < len(rows):
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(kept)
        write_text_atomically(path, text.getvalue())

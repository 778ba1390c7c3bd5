"""Exact resume: a training process killed with SIGKILL at a random batch of an epoch and run again ends with the
weights, metrics and per-epoch losses of the uninterrupted run, having seen its batches; each epoch's data follow
from the kept random states alone, with loader worker processes too; files are never half-written."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from carafe_ultra.experiments import resume
from carafe_ultra.experiments.atomic import write_text_atomically
from carafe_ultra.experiments.data import ShapesSpec, shapes_dataset
from tests.ultralytics_helpers import ENV

PROBE = Path(__file__).with_name("resume_probe.py")
# 48 training images at batch 4: 12 batches an epoch, and Ultralytics accumulates 16 batches (its nominal 64 / 4)
# per optimizer step, so steps fall mid-epoch and gradients carry over the ends of epochs.
SPEC = ShapesSpec(train_images=48, val_images=8, image_size=64, objects=(2, 5), object_size=(8, 20))
BATCHES = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(shapes_dataset(SPEC, root=tmp_path_factory.mktemp("data")))


def probe(arguments: list[str], batches: Path, **environment: str) -> subprocess.Popen:
    """A training process (tests/resume_probe.py) writing each batch it trains on to ``batches``."""
    return subprocess.Popen([sys.executable, str(PROBE), *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**ENV, "RESUME_PROBE_BATCHES": str(batches), **environment}, text=True)


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def kill_mid_epoch(process: subprocess.Popen, batches: Path, epoch: int) -> int:
    """SIGKILL ``process`` once it has trained on a random number of ``epoch``'s batches (0-based epoch); that
    number."""
    at = random.randint(1, BATCHES - 3)
    deadline = time.monotonic() + 600
    while sum(line.startswith(f"{epoch} ") for line in lines(batches)) < at:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the training never got there"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return at


def results_without_time(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as file:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(file)]


def assert_same_training(whole: Path, resumed: Path, at: int) -> None:
    """Both folders hold the same training: every epoch's losses and metrics, and the final weights, bit for bit."""
    assert results_without_time(resumed) == results_without_time(whole), f"killed at batch {at}"
    for name in ("last.pt", "best.pt"):
        want, got = (torch.load(folder / "weights" / name, weights_only=False)["model"].state_dict()
                     for folder in (whole, resumed))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), (name, at)
    assert not resume.checkpoint_path(resumed).exists()  # finished: nothing left to resume from


def test_an_ablation_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(data, tmp_path):
    arguments = ["ablate", "--data", data, "--epochs", "4", "--imgsz", "64", "--batch", "4", "--workers", "0",
                 "--seeds", "0", "--arms", "carafe"]
    finished(probe([*arguments, "--out", str(tmp_path / "whole")], tmp_path / "whole.txt"))
    first = probe([*arguments, "--out", str(tmp_path / "interrupted")], tmp_path / "first.txt")
    at = kill_mid_epoch(first, tmp_path / "first.txt", epoch=2)
    run = tmp_path / "interrupted" / "runs" / "carafe-seed0"
    assert resume.completed_epochs(run) == 2 and not (run / "result.json").exists()

    output = finished(probe([*arguments, "--out", str(tmp_path / "interrupted")], tmp_path / "again.txt"))
    assert "carafe (seed 0): resumed from epoch 2" in output
    # The resumed attempt trained on exactly the batches (order, augmentation) of the whole run's epochs 3 and 4.
    assert lines(tmp_path / "again.txt") == [line for line in lines(tmp_path / "whole.txt") if line[0] in "23"]
    whole = tmp_path / "whole" / "runs" / "carafe-seed0"
    assert_same_training(whole, run, at)
    want, got = (json.loads((folder / "result.json").read_text()) for folder in (whole, run))
    assert (got["mAP50"], got["mAP50_95"]) == (want["mAP50"], want["mAP50_95"])
    assert got["train_seconds"] > 0


def test_a_mosaic_training_killed_mid_epoch_resumes_exactly(data, tmp_path):
    # Mosaic for epochs 1-2 (its partners come from the images loaded last), closed for 3-4: killed in epoch 2.
    finished(probe(["train", data, str(tmp_path / "whole")], tmp_path / "whole.txt"))
    first = probe(["train", data, str(tmp_path / "interrupted")], tmp_path / "first.txt")
    at = kill_mid_epoch(first, tmp_path / "first.txt", epoch=1)
    assert resume.completed_epochs(tmp_path / "interrupted") == 1
    finished(probe(["train", data, str(tmp_path / "interrupted")], tmp_path / "again.txt"))
    assert lines(tmp_path / "again.txt") == [line for line in lines(tmp_path / "whole.txt") if line[0] in "123"]
    assert_same_training(tmp_path / "whole", tmp_path / "interrupted", at)


def epoch_batches(loader, fresh: bool = True) -> list[tuple]:
    if fresh:
        loader.reset()  # what the resumable trainer does as each epoch starts
    return [(tuple(Path(f).stem for f in batch["im_file"]), float(batch["img"].double().sum())) for batch in loader]


def mosaic_loader(data: str, workers: int):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    resolved = check_det_dataset(data, autodownload=False)
    cfg = get_cfg(overrides={"imgsz": 64, "mosaic": 1.0, "close_mosaic": 0})
    dataset = build_yolo_dataset(cfg, resolved["train"], 4, resolved, mode="train")
    return build_dataloader(dataset, batch=4, workers=workers, shuffle=True)


def test_each_epoch_draws_from_the_kept_states_alone_with_loader_workers(data):
    # On a GPU, Ultralytics' loaders have worker processes (on a CPU it sets workers=0): their random states cannot
    # be kept, so each epoch starts a fresh iterator whose workers are seeded from the kept generator.
    uninterrupted = mosaic_loader(data, workers=2)
    epoch_batches(uninterrupted)
    kept = resume.random_states(uninterrupted)
    second_epoch = epoch_batches(uninterrupted)
    resumed = mosaic_loader(data, workers=2)  # a new process's loader, before its first epoch
    resume.restore_random_states(kept, resumed)
    assert epoch_batches(resumed) == second_epoch
    # Ultralytics' persistent iterator keeps its workers (and their random states) from epoch to epoch: a loader
    # restored from the same states does not see what it saw.
    persistent = mosaic_loader(data, workers=2)
    epoch_batches(persistent, fresh=False)
    kept = resume.random_states(persistent)
    second_epoch = epoch_batches(persistent, fresh=False)
    resumed = mosaic_loader(data, workers=2)
    resume.restore_random_states(kept, resumed)
    assert epoch_batches(resumed) != second_epoch
    for loader in (uninterrupted, resumed, persistent):
        loader.close()


def test_the_mosaic_buffer_is_restored_with_its_images(data):
    first = mosaic_loader(data, workers=0)  # no workers: the buffer lives in this process, and the global states
    epoch_batches(first)
    kept = resume.random_states(first)
    buffer = list(first.dataset.buffer)
    second_epoch = epoch_batches(first)
    assert len(kept["mosaic_buffer"]) > 0
    resumed = mosaic_loader(data, workers=0)
    resume.restore_random_states(kept, resumed)
    assert resumed.dataset.buffer == buffer and all(resumed.dataset.ims[i] is not None for i in buffer)
    assert epoch_batches(resumed) == second_epoch


WRITER = """
import sys
from carafe_ultra.experiments.atomic import write_text_atomically
path, size = sys.argv[1], int(sys.argv[2])
versions = ["[" + ", ".join([str(v)] * size) + "]\\n" for v in (1, 2)]
for number in range(10 ** 9):
    write_text_atomically(path, versions[number % 2])
    if number == 0:
        print("writing", flush=True)
"""


def test_a_process_killed_while_it_writes_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "result.json"
    write_text_atomically(path, "[0]\n")
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "300000"], stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline() == "writing\n"
        time.sleep(random.uniform(0, 0.3))  # each version is ~2 MB: the kill lands in a write or a rename
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert set(json.loads(path.read_text())) in ({1}, {2})
    strays = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(re.fullmatch(r"\.result\.\d+\.partial\.json", name) for name in strays), strays


def test_the_pretrained_base_resumes_and_is_cached_only_once_finished(data, tmp_path):
    cache = {name: tmp_path / name for name in ("whole", "interrupted")}
    whole = probe(["base", data], tmp_path / "whole.txt", CARAFE_ULTRA_CACHE=str(cache["whole"]))
    (base,) = [Path(line) for line in finished(whole).splitlines() if line.endswith("base.pt")]
    first = probe(["base", data], tmp_path / "first.txt", CARAFE_ULTRA_CACHE=str(cache["interrupted"]))
    at = kill_mid_epoch(first, tmp_path / "first.txt", epoch=2)
    (folder,) = [path for path in (cache["interrupted"] / "bases").iterdir() if path.is_dir()]
    assert not (folder / "base.pt").exists()  # the half-trained base is never taken for the base
    assert resume.completed_epochs(folder / "training") == 2
    output = finished(probe(["base", data], tmp_path / "again.txt", CARAFE_ULTRA_CACHE=str(cache["interrupted"])))
    assert "base model: training yolov8n.yaml (nearest) for 4 epochs on other generated data, resumed from epoch 2" in (
        output)
    assert lines(tmp_path / "again.txt") == [line for line in lines(tmp_path / "whole.txt") if line[0] in "23"]
    want, got = (torch.load(path, weights_only=False)["model"].state_dict() for path in (base, folder / "base.pt"))
    assert all(torch.equal(want[k], got[k]) for k in want), at
    assert sorted(p.name for p in folder.iterdir()) == ["base.pt", "yolov8n-nearest.yaml"]

"""The ablation's grid spread out: one GPU (or several, with DDP ports of their own) per run on one machine, Ray
tasks on a real local Ray cluster (which hands out GPU ids without GPUs, so each run's assignment is observable),
shards for any scheduler, a report of what exists, and failures that lose nothing but themselves."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from carafe_ultra.experiments import ablation, grid, resume
from carafe_ultra.experiments.ablation import GridIncomplete, Settings, run_ablation, write_report
from tests import grid_probe
from tests.ultralytics_helpers import tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def tiny(out, data, **overrides):
    return Settings(**{"data": data, "epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "seeds": [0],
                       "arms": ["nearest", "carafe"], "out": str(out), **overrides})


def probes(out):
    return {path.stem: json.loads(path.read_text()) for path in (Path(out) / "probe").glob("*.json")}


def record(settings, seconds=0.5):
    return functools.partial(grid_probe.record, settings, None, seconds=seconds)


# --- one machine ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,jobs,per_run,slots", [
    ("0,1,2,3", 4, None, [("0", "0"), ("0", "1"), ("0", "2"), ("0", "3")]),
    ("0,1,2,3", 2, None, [("0,1", "0,1"), ("0,1", "2,3")]),
    ("0,1,2,3", 2, 1, [("0", "0"), ("0", "1")]),
    ("0,1,2,3", 1, None, [("0,1,2,3", None)]),  # one run at a time, here, with DDP over all four
    ("0,1,2,3", 1, 2, [("0,1", None)]),
    ("cpu", 2, None, [("cpu", None), ("cpu", None)]),
])
def test_device_slots(device, jobs, per_run, slots):
    assert [(slot.device, slot.visible) for slot in grid.device_slots(device, jobs, per_run)] == slots


@pytest.mark.parametrize("device,jobs,per_run,message", [
    ("0,1,2,3", 4, 2, "--jobs 4 with 2 GPU(s) per run needs 8 GPUs; --device '0,1,2,3' has 4"),
    ("0,1", 3, None, "--jobs 3 with 1 GPU(s) per run needs 3 GPUs; --device '0,1' has 2"),
    ("cpu", 2, 1, "--gpus-per-run 1 needs GPUs in --device, got 'cpu'"),
])
def test_slots_that_do_not_go_round_fail_before_training(device, jobs, per_run, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(device=device, jobs=jobs, gpus_per_run=per_run)


def test_ddp_ports_follow_the_gpus():
    assert grid.ddp_port("2,3") == grid.DDP_PORT_BASE + 2 and grid.ddp_port(None) is None


@pytest.mark.parametrize("jobs,per_run,seen", [
    (4, None, {("0", "0"), ("0", "1"), ("0", "2"), ("0", "3")}),
    (2, 2, {("0,1", "0,1"), ("0,1", "2,3")}),
])
def test_jobs_give_each_run_gpus_of_its_own(tmp_path, jobs, per_run, seen):
    # Four runs on a four-GPU server (no GPU is touched: the task only records where it would train).
    settings = tiny(tmp_path, None, device="0,1,2,3", jobs=jobs, gpus_per_run=per_run, seeds=[0, 1], shard="0/1")
    run_ablation(settings, log=lambda line: None, task=record(settings))
    runs = probes(tmp_path)
    assert set(runs) == {"nearest-0", "nearest-1", "carafe-0", "carafe-1"}
    assert {(r["device"], r["visible"]) for r in runs.values()} == seen
    # Runs at the same time never share a GPU or a DDP port; each slot keeps its process (and its GPUs).
    ports = {r["visible"]: r["port"] for r in runs.values()}
    assert ports == {visible: grid.ddp_port(visible) for visible in ports}
    assert len({r["pid"] for r in runs.values()}) == jobs and {r["threads"] for r in runs.values()} == {max(1, os.cpu_count() // jobs)}


def test_parallel_jobs_killed_mid_training_resume_where_they_stopped(data, tmp_path):
    # A power cut: the ablation and its worker processes all die at once; the same command resumes both runs.
    arguments = [sys.executable, str(ROOT / "scripts" / "ablate.py"), "--data", data, "--epochs", "4", "--imgsz", "64",
                 "--batch", "4", "--workers", "0", "--seeds", "0", "--arms", "nearest", "carafe", "--jobs", "2"]
    subprocess.run([*arguments, "--out", str(tmp_path / "whole")], check=True, capture_output=True, timeout=600)
    first = subprocess.Popen([*arguments, "--out", str(tmp_path / "cut")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    runs = [tmp_path / "cut" / "runs" / f"{arm}-seed0" for arm in ("nearest", "carafe")]
    deadline = time.monotonic() + 600
    while not all(resume.checkpoint_path(run).is_file() for run in runs):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    kept = {run.name: resume.completed_epochs(run) for run in runs}
    assert all(epochs in (1, 2, 3) for epochs in kept.values()), kept
    again = subprocess.run([*arguments, "--out", str(tmp_path / "cut")], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for run in runs:
        arm = run.name.removesuffix("-seed0")
        assert f"{arm} (seed 0): resumed from epoch {kept[run.name]}" in again.stdout
        assert same_weights(tmp_path / "whole" / "runs" / run.name, run), arm


def test_a_worker_that_dies_fails_its_run_and_its_slot_goes_on(tmp_path):
    settings = tiny(tmp_path, None, jobs=2, seeds=[0, 1], shard="0/1")
    with pytest.raises(GridIncomplete, match=r"carafe seed 0: BrokenProcessPool"):
        run_ablation(settings, log=lambda line: None,
                     task=functools.partial(grid_probe.die_on, ("carafe", 0), settings, None))
    assert set(probes(tmp_path)) == {"nearest-0", "nearest-1", "carafe-1"}


def test_console_shows_each_start_and_each_finished_epoch(tmp_path):
    folders = {("carafe", 0): tmp_path / "carafe", ("nearest", 0): tmp_path / "nearest"}
    for folder in folders.values():
        folder.mkdir()
    lines = []
    progress = grid.Progress(folders.__getitem__, 3, lines.append, completed={("nearest", 0): 1})
    (folders["nearest", 0] / "results.csv").write_text("epoch,time,train/box_loss\n1,2.0,1.0\n2,4.0,0.5\n")
    progress.poll(list(folders))  # not started: nothing to say yet
    progress.started(("carafe", 0))
    progress.started(("nearest", 0))  # its first epoch came from an earlier attempt; its second row is new
    progress.started(("carafe", 0))  # once only
    progress.poll(list(folders))
    (folders["carafe", 0] / "results.csv").write_text("epoch,time,train/box_loss,train/cls_loss\n1,2.0,1.5,2.25\n")
    progress.poll(list(folders))
    progress.poll(list(folders))  # nothing new
    with open(folders["carafe", 0] / "results.csv", "a") as csv:
        csv.write("2,4.0,1.25,2\n")
    progress.poll(list(folders))
    assert lines == ["carafe (seed 0): started", "nearest (seed 0): resumed from epoch 1",
                     "nearest (seed 0): epoch 2/3, box_loss 0.500",
                     "carafe (seed 0): epoch 1/3, box_loss 1.500, cls_loss 2.250",
                     "carafe (seed 0): epoch 2/3, box_loss 1.250, cls_loss 2.000"]


# --- shards and the report -----------------------------------------------------------------------------------------


def test_shards_split_the_grid_without_overlap(tmp_path):
    settings = tiny(tmp_path, None, seeds=[0, 1, 2], arms=["nearest", "carafe", "dysample"])
    whole = ablation.grid_runs(settings)
    seen = []
    for index in range(4):
        shard = tiny(tmp_path / str(index), None, seeds=[0, 1, 2], arms=["nearest", "carafe", "dysample"],
                     shard=f"{index}/4")
        run_ablation(shard, log=lambda line: None, task=record(shard, seconds=0))
        seen += [tuple(name.rsplit("-", 1)) for name in probes(tmp_path / str(index))]
    assert sorted(seen) == sorted((spec, str(seed)) for spec, seed in whole) and len(seen) == len(whole) == 9


@pytest.mark.parametrize("text", ["4/4", "1", "a/2", "-1/2", "1/0"])
def test_a_wrong_shard_is_refused(text):
    with pytest.raises(ValueError, match=r"--shard must be I/N with 0 <= I < N \(SLURM: --array=0-\{N-1\}\)"):
        Settings(shard=text)


@pytest.fixture(scope="module")
def local_grid(data, tmp_path_factory):
    """nearest and carafe, seed 0, trained for real, one at a time in this process."""
    out = tmp_path_factory.mktemp("local")
    run_ablation(tiny(out, data), log=lambda line: None)
    return out


def test_report_names_the_runs_still_missing(local_grid, data):
    summary = write_report(tiny(local_grid, data, seeds=[0, 1]), log=lambda line: None)
    assert summary["missing"] == ["nearest seed 1", "carafe seed 1"]
    assert [a["upsampler"] for a in summary["arms"]] == ["nearest", "carafe"]
    text = (local_grid / "summary.md").read_text()
    assert ("Missing runs (failed or not run yet; a re-run trains only these, resuming where they stopped): nearest "
            "seed 1, carafe seed 1.") in text
    assert re.search(r"every arm on .+ \(\d+ threads?\)\.", text)  # the device the latencies were timed on
    assert json.loads((local_grid / "runs" / "costs.json").read_text())["device"] == summary["latency_device"]


def test_report_before_any_run_finished_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run of this ablation has finished in"):
        write_report(tiny(tmp_path, None))


def test_a_failing_run_loses_only_itself(tmp_path, data):
    settings = tiny(tmp_path, data)
    failing = functools.partial(grid_probe.fail_on, ("carafe", 0), settings, None)
    lines = []
    with pytest.raises(GridIncomplete, match=r"1 run\(s\) failed.*\n  carafe seed 0: RuntimeError: injected failure"):
        run_ablation(settings, log=lines.append, task=failing)
    assert any("carafe (seed 0) FAILED: RuntimeError: injected failure of carafe seed 0" in line for line in lines)
    summary = json.loads((tmp_path / "summary.json").read_text())  # the report of what finished
    assert [a["upsampler"] for a in summary["arms"]] == ["nearest"] and summary["missing"] == ["carafe seed 0"]
    lines.clear()
    run_ablation(settings, log=lines.append)  # the re-run trains only the missing run
    assert any("nearest seed 0: already finished" in line for line in lines)
    assert sum("done in" in line for line in lines) == 1
    assert not json.loads((tmp_path / "summary.json").read_text())["missing"]


# --- Ray --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for these tests: 2 CPUs and 2 GPUs (ids only: Ray hands them out without GPUs)."""
    ray = pytest.importorskip("ray")
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))  # tests/, for tasks
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.mark.parametrize("per_run,seen", [(1, {("0", "0"), ("0", "1")}), (2, {("0,1", "0,1")})])
def test_ray_gives_each_task_its_gpus(ray_cluster, tmp_path, per_run, seen):
    settings = tiny(tmp_path, None, device="0", ray="local", gpus_per_run=per_run, cpus_per_run=1, shard="0/1")
    run_ablation(settings, log=lambda line: None, task=record(settings, seconds=2))
    runs = probes(tmp_path)
    assert set(runs) == {"nearest-0", "carafe-0"}
    assert {(r["device"], r["visible"]) for r in runs.values()} == seen  # what Ray made visible, as Ultralytics ids
    assert all(r["port"] == grid.ddp_port(r["visible"]) and r["threads"] == 1 for r in runs.values())


def test_a_ray_grid_gives_exactly_the_numbers_of_the_local_grid(ray_cluster, local_grid, data, tmp_path):
    summary = run_ablation(tiny(tmp_path, data, ray="local", cpus_per_run=os.cpu_count()), log=lambda line: None)
    for spec in ("nearest", "carafe"):
        here = json.loads((local_grid / "runs" / f"{spec}-seed0" / "result.json").read_text())
        there = json.loads((tmp_path / "runs" / f"{spec}-seed0" / "result.json").read_text())
        assert (there["mAP50"], there["mAP50_95"]) == (here["mAP50"], here["mAP50_95"])
        assert (tmp_path / "runs" / f"{spec}-seed0.log").stat().st_size > 0  # the task's output went to its log
    assert [a["upsampler"] for a in summary["arms"]] == ["nearest", "carafe"]
    assert not list((tmp_path / "runs").glob(".driver-*"))  # the marker for shared storage is gone


def same_weights(one: Path, other: Path) -> bool:
    want, got = (torch.load(f / "weights" / "best.pt", weights_only=False)["model"].state_dict() for f in (one, other))
    return want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_ray_task_whose_worker_dies_is_retried_and_resumes_its_run(ray_cluster, data, tmp_path):
    whole = tiny(tmp_path / "whole", data, epochs=3, arms=["carafe"])
    expected = run_ablation(whole, log=lambda line: None)["arms"][0]
    settings = tiny(tmp_path / "ray", data, epochs=3, arms=["carafe"], ray="local", cpus_per_run=os.cpu_count())
    dying = functools.partial(grid_probe.die_once_after_an_epoch, ("carafe", 0), str(tmp_path / "killed"), settings,
                              None)
    summary = run_ablation(settings, log=lambda line: None, task=dying)["arms"][0]
    assert (tmp_path / "killed").exists()  # the first attempt's worker process was killed
    log = (tmp_path / "ray" / "runs" / "carafe-seed0.log").read_text()
    assert "Resuming training" in log and "from epoch 2 to 3 total epochs" in log  # the retry, from the checkpoint
    accuracy = [{k: v for k, v in arm.items() if k.startswith("mAP")} for arm in (expected, summary)]
    assert accuracy[0] == accuracy[1]
    assert same_weights(tmp_path / "whole" / "runs" / "carafe-seed0", tmp_path / "ray" / "runs" / "carafe-seed0")


def test_ray_retries_are_bounded(ray_cluster, data, tmp_path):
    settings = tiny(tmp_path, data, epochs=3, arms=["carafe"], ray="local", cpus_per_run=os.cpu_count(), ray_retries=0)
    dying = functools.partial(grid_probe.die_once_after_an_epoch, ("carafe", 0), str(tmp_path / "killed"), settings,
                              None)
    with pytest.raises(GridIncomplete, match="carafe seed 0: The worker died unexpectedly while executing this task"):
        run_ablation(settings, log=lambda line: None, task=dying)
    assert resume.completed_epochs(tmp_path / "runs" / "carafe-seed0") == 1  # kept for the re-run to resume


def test_a_ray_task_that_cannot_see_out_fails_with_that_message(ray_cluster, tmp_path):
    remote = ray_cluster.remote(grid._ray_task)
    with pytest.raises(ray_cluster.exceptions.RayTaskError) as error:
        ray_cluster.get(remote.remote(record(tiny(tmp_path, None)), ("nearest", 0), 0, 1,
                                      str(tmp_path / "runs" / ".driver-elsewhere"), str(tmp_path / "started")))
    assert f"--out {tmp_path} is not visible on" in str(error.value)
    assert "must be on storage that every node sees" in str(error.value)


def test_a_failing_ray_task_is_reported_and_the_others_finish(ray_cluster, tmp_path):
    settings = tiny(tmp_path, None, device="cpu", ray="local", cpus_per_run=1, shard="0/1")
    lines = []
    with pytest.raises(GridIncomplete, match=r"carafe seed 0: RuntimeError: injected failure of carafe seed 0"):
        run_ablation(settings, log=lines.append,
                     task=functools.partial(grid_probe.record_but, ("carafe", 0), settings, None))
    assert set(probes(tmp_path)) == {"nearest-0"}
    assert any("carafe (seed 0) FAILED: RuntimeError: injected failure" in line for line in lines)


def test_ctrl_c_cancels_the_outstanding_ray_tasks(ray_cluster, tmp_path, monkeypatch):
    settings = tiny(tmp_path, None, device="cpu", ray="local", cpus_per_run=1, shard="0/1")

    def interrupted(self, running):
        raise KeyboardInterrupt

    monkeypatch.setattr(grid.Progress, "poll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(settings, log=lambda line: None, task=record(settings, seconds=4))
    time.sleep(6)  # long enough for the tasks to have finished, had they not been cancelled
    assert probes(tmp_path) == {}


def test_ray_without_ray_installed_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ray)
    with pytest.raises(RuntimeError, match=r'--ray needs Ray: pip install "carafe-ultra\[ray\]"'):
        grid.ray_request("local", 0, 1, 1)


# --- Ray requests that fit the cluster -----------------------------------------------------------------------------


@pytest.mark.parametrize("nodes,gpus,cpus,fitted", [
    ([(2, 0)], 0, None, (0, 2)),  # the default --workers 2 + 1 on a 2-CPU machine: as much as its node has
    ([(16, 0)], 0, None, (0, 3)),  # never more than the default
    ([(2, 0), (64, 4)], 1, None, (1, 3)),  # sized to the nodes that have the GPUs
    ([(8, 1), (2, 2)], 2, None, (2, 2)),
    ([(0, 0), (4, 1)], 0, 4, (0, 4)),  # an explicit request that some node fits stays as asked
])
def test_requests_are_fitted_to_the_nodes(nodes, gpus, cpus, fitted):
    request = grid.fit_request(nodes, gpus, cpus, default_cpus=3)
    assert (request.gpus, request.cpus) == fitted


@pytest.mark.parametrize("nodes,gpus,cpus,message", [
    ([(2, 0)], 0, 3, "3 CPU(s), but no node of the Ray cluster has that much; the largest has 2 CPU(s) and 0 GPU(s)"),
    ([(2, 0), (4, 0)], 1, None,
     "1 GPU(s) and 3 CPU(s), but no node .* the largest has 4 CPU(s) and 0 GPU(s) (2 node(s))"),
    ([(64, 1), (2, 2)], 2, 4, "2 GPU(s) and 4 CPU(s), but no node .* the largest has 2 CPU(s) and 2 GPU(s)"),
])
def test_a_request_no_node_fits_is_refused(nodes, gpus, cpus, message):
    with pytest.raises(grid.RayRequestError, match=re.escape(message).replace(r"\.\*", ".*")):
        grid.fit_request(nodes, gpus, cpus, default_cpus=3)


def test_default_options_fit_a_2_cpu_cluster(ray_cluster, tmp_path):
    # --workers 2 (the default) used to ask for 3 CPUs on a 2-CPU instance, where Ray waits forever.
    settings = tiny(tmp_path, None, device="cpu", ray="local", workers=Settings().workers, shard="0/1")
    lines = []
    run_ablation(settings, log=lines.append, task=record(settings, seconds=0))
    assert any("as Ray tasks of 0 GPU(s) and 2 CPU(s) each" in line for line in lines)
    assert {r["threads"] for r in probes(tmp_path).values()} == {2}


@pytest.mark.parametrize("options,message", [
    (["--cpus-per-run", "3"], "each task would ask for 0 GPU(s) and 3 CPU(s), but no node"),
    (["--device", "0", "--gpus-per-run", "3"], "each task would ask for 3 GPU(s) and 3 CPU(s), but no node"),
])
def test_a_request_larger_than_any_node_fails_at_once(ray_cluster, tmp_path, capsys, options, message):
    from carafe_ultra.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--ray", "--epochs", "1", "--seeds", "0", "1", "--arms", "nearest", "carafe",
              "--out", str(tmp_path), *options])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "the largest has 2 CPU(s) and 2 GPU(s) (1 node(s))" in error
    assert not (tmp_path / "runs").exists()  # nothing was submitted, no data made


def test_tasks_ray_never_starts_are_reported_not_waited_on(ray_cluster, tmp_path):
    @ray_cluster.remote(num_cpus=2)
    class Occupant:  # another job holding every CPU of the cluster
        def ready(self):
            return True

    occupant = Occupant.remote()
    ray_cluster.get(occupant.ready.remote())
    try:
        settings = tiny(tmp_path, None, device="cpu", ray="local", cpus_per_run=1, ray_timeout=3, shard="0/1")
        lines = []
        started = time.monotonic()
        expected = (r"nearest seed 0: not started by Ray within 3 s \(asking for 0 GPU\(s\) and 1 CPU\(s\); free now: "
                    r"0 CPU\(s\), 2 GPU\(s\)\); cancelled")
        with pytest.raises(GridIncomplete, match=expected):
            run_ablation(settings, log=lines.append, task=record(settings, seconds=0))
        assert time.monotonic() - started < 30
        assert sum("FAILED: not started by Ray" in line for line in lines) == 2
    finally:
        ray_cluster.kill(occupant)
    assert probes(tmp_path) == {}
    assert not list((tmp_path / "runs").glob(".driver-*"))  # nor the files that say a task started


@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_a_wrong_ray_timeout_is_refused(value):
    with pytest.raises(ValueError, match="ray_timeout must be a positive number of seconds"):
        Settings(ray_timeout=value)

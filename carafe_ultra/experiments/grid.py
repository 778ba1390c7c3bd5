"""Spreading the ablation's grid of (arm, seed) runs: over the GPUs of one machine, over a Ray cluster, or over any
scheduler's jobs as shards. Ultralytics trains one model on one machine (its DDP is single-node), so the grid is
what gets distributed; its runs are independent (each writes its own folder and ``result.json``).

- **Slots, one machine.** ``device_slots`` splits ``--device`` into ``--jobs`` slots of ``--gpus-per-run`` GPUs
  each. Each slot is a worker process that sees only its GPUs (``CUDA_VISIBLE_DEVICES``) and trains on them with
  Ultralytics' device ids ``0`` or ``0,1``, so a run never shares a GPU with another; a slot of several GPUs trains
  with Ultralytics' DDP on a port of its own (:func:`ddp_port`), so two DDP runs never race for one.
- **Ray.** Each run is a Ray Core task asking for ``--gpus-per-run`` GPUs and ``--cpus-per-run`` CPUs; Ray places
  it and hides the other GPUs from it, the result comes back to the driver. The request is fitted to the cluster's
  nodes before anything is submitted (a request no node can run would wait forever), and tasks Ray does not start
  within a deadline are reported, not waited on.
- **Shards.** ``--shard I/N`` takes every N-th run of the grid, the same split on every machine.

A run that fails is reported with its error and the others go on; runs that finished wrote ``result.json``, so a
re-run trains only what is missing, each run resuming from the last epoch it completed. Ray runs a task again whose
worker or node died (``retries`` times), and the task resumes its run from the checkpoint on the shared ``--out``.
While runs train elsewhere, the console gets a line when each starts (or resumes) and one per finished epoch of each,
read from the ``results.csv`` Ultralytics writes in the run's folder.
"""

from __future__ import annotations

import concurrent.futures
import csv
import multiprocessing
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Run = tuple[str, int]  # (arm spec, seed)
Task = Callable[[Run, str], object]  # run, device string -> its result; a module-level function (it is pickled)
DDP_PORT_BASE = 29400  # + the slot's first GPU: below the ephemeral ports, one per GPU of a host
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Slot:
    """Where one run at a time trains: the device string it trains with, the GPUs its process may see (physical
    ids, None: all, as given) and its share of the CPU threads."""

    device: str
    visible: str | None
    threads: int


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; raises ``ValueError`` saying what is expected otherwise."""
    index, slash, count = text.partition("/")
    if not (slash and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise ValueError(f"--shard must be I/N with 0 <= I < N (SLURM: --array=0-{{N-1}}), got {text!r}")
    return int(index), int(count)


def shard(runs: list[Run], index: int, count: int) -> list[Run]:
    """Every ``count``-th run of the grid from the ``index``-th: the shards of one grid split it without overlap."""
    return runs[index::count]


def gpu_ids(device: str) -> list[str] | None:
    """The GPU ids of an Ultralytics device string (``"0,1"``, ``"cuda:2"``, ``[0, 1]`` as text), or None for a
    CPU or MPS device."""
    text = str(device).strip().removeprefix("cuda:").strip("[]").replace(" ", "")
    ids = [part for part in text.split(",") if part]
    return ids if ids and all(part.isdigit() for part in ids) else None


def device_slots(device: str, jobs: int, gpus_per_run: int | None = None) -> list[Slot]:
    """``jobs`` slots from ``device``: on GPUs, each of ``gpus_per_run`` of them (default: all of them shared out
    evenly); on a CPU, each a share of the threads. Raises ``ValueError`` when the GPUs do not go round."""
    ids = gpu_ids(device)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if ids is None:
        if gpus_per_run:
            raise ValueError(f"--gpus-per-run {gpus_per_run} needs GPUs in --device, got {device!r}")
        return [Slot(device, None, threads) for _ in range(jobs)]
    per_run = gpus_per_run or max(1, len(ids) // jobs)
    if per_run * jobs > len(ids):
        raise ValueError(f"--jobs {jobs} with {per_run} GPU(s) per run needs {per_run * jobs} GPUs; --device "
                         f"{device!r} has {len(ids)}")
    groups = [ids[i * per_run:(i + 1) * per_run] for i in range(jobs)]
    if jobs == 1:  # trained in this process, on the GPUs as given
        return [Slot(",".join(groups[0]), None, threads)]
    return [Slot(",".join(str(i) for i in range(per_run)), ",".join(group), threads) for group in groups]


def ddp_port(visible: str | None) -> int | None:
    """The DDP port of a process that sees the GPUs ``visible`` (physical ids): DDP_PORT_BASE + the first, so that
    runs on one host, which never share a GPU, never share a port; None without a restriction."""
    ids = gpu_ids(visible) if visible else None
    return DDP_PORT_BASE + int(ids[0]) if ids else None


def prepare_process(visible: str | None, threads: int) -> None:
    """Make this (fresh) process one run's home: only its GPUs visible, its share of the threads, its own DDP port.
    Must run before CUDA is initialised here."""
    import torch

    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    torch.set_num_threads(threads)
    port = ddp_port(visible)
    if port is not None:
        from ultralytics.utils import dist

        dist.find_free_network_port = lambda: port  # generate_ddp_command asks it for the port torchrun binds


class Progress:
    """The console's view of runs training elsewhere: a line when each starts, saying whether it resumes (after the
    epochs ``completed`` gives it, read before any run started) or starts afresh, and one per epoch it finishes, read
    from the ``results.csv`` in its folder."""

    def __init__(self, folder_of: Callable[[Run], Path], epochs: int, log: Callable[[str], None],
                 completed: dict[Run, int] | None = None) -> None:
        self.folder_of, self.epochs, self.log, self.completed = folder_of, epochs, log, completed or {}
        self.reported: dict[Run, int] = {}  # the last epoch reported of each run that started

    def started(self, run: Run) -> None:
        """Say how ``run`` starts (once: later calls are no news)."""
        if run in self.reported:
            return
        epochs = self.completed.get(run)
        self.reported[run] = epochs or 0  # the epochs of earlier attempts are not news
        self.log(f"{run[0]} (seed {run[1]}): " + ("started" if epochs is None else f"resumed from epoch {epochs}"))

    def poll(self, running: list[Run]) -> None:
        """Say which epochs the started runs of ``running`` finished since the last poll."""
        for run in filter(self.reported.__contains__, running):
            for row in _csv_rows(self.folder_of(run) / "results.csv"):
                epoch = int(float(row["epoch"]))
                if epoch > self.reported.get(run, 0):
                    losses = ", ".join(f"{k.split('/')[-1]} {float(v):.3f}" for k, v in row.items()
                                       if k.startswith("train/") and v)
                    self.log(f"{run[0]} (seed {run[1]}): epoch {epoch}/{self.epochs}, {losses}")
                    self.reported[run] = epoch


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as file:
            return [{k.strip(): v.strip() for k, v in row.items() if k} for row in csv.DictReader(file)
                    if row.get("epoch")]
    except (FileNotFoundError, ValueError):
        return []


def run_in_slots(slots: list[Slot], runs: list[Run], task: Task, progress: Progress,
                 done: Callable[[Run, object | None, str | None], None]) -> None:
    """Train ``runs`` one per slot at a time, each slot a worker process of its own; ``done(run, result, error)``
    after each (error: what it raised, as text)."""
    context = multiprocessing.get_context("spawn")

    def worker(slot: Slot) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=prepare_process,
                                                      initargs=(slot.visible, slot.threads))

    executors = [worker(slot) for slot in slots]
    queue, active = list(runs), {}
    try:
        while queue or active:
            for index, (slot, executor) in enumerate(zip(slots, executors)):
                if queue and index not in {i for i, _ in active.values()}:
                    run = queue.pop(0)
                    progress.started(run)
                    active[executor.submit(task, run, slot.device)] = (index, run)
            finished, _ = concurrent.futures.wait(active, timeout=POLL_SECONDS,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            progress.poll([run for _, run in active.values()])
            for future in finished:
                index, run = active.pop(future)
                error = future.exception()
                if isinstance(error, concurrent.futures.process.BrokenProcessPool):  # the worker died: a new one
                    executors[index] = worker(slots[index])
                done(run, None if error else future.result(), None if error is None else _describe(error))
    finally:
        for executor in executors:
            executor.shutdown(wait=not active, cancel_futures=True)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError('--ray needs Ray: pip install "carafe-ultra[ray]"') from None
    return ray


class RayRequestError(ValueError):
    """What each task would ask for fits no node of the Ray cluster: nothing was submitted."""


@dataclass(frozen=True)
class RayRequest:
    """What each run's Ray task asks for."""

    gpus: int
    cpus: int


def fit_request(nodes: list[tuple[float, float]], gpus: int, cpus: int | None, default_cpus: int) -> RayRequest:
    """The request of each task on a cluster whose nodes have ``nodes`` (CPUs, GPUs) in all: ``gpus`` GPUs and
    ``cpus`` CPUs, or when ``cpus`` is None ``default_cpus`` but no more than the largest node that has the GPUs has.
    Raises :class:`RayRequestError` naming the request and the largest node when no node can run such a task (Ray
    would keep it pending forever)."""
    with_gpus = [cpu for cpu, gpu in nodes if gpu >= gpus and cpu >= 1]
    if cpus is None and with_gpus:
        cpus = max(1, min(default_cpus, int(max(with_gpus))))
    wanted = cpus if cpus is not None else default_cpus
    if not any(cpu >= wanted for cpu in with_gpus):
        cpu, gpu = max(nodes, key=lambda node: (node[1], node[0]), default=(0, 0))
        raise RayRequestError(
            f"--ray: each task would ask for {gpus} GPU(s) and {wanted} CPU(s), but no node of the Ray cluster has "
            f"that much; the largest has {cpu:g} CPU(s) and {gpu:g} GPU(s) ({len(nodes)} node(s)). Ask for less "
            "(--gpus-per-run, --cpus-per-run, --device cpu) or add a node that large")
    return RayRequest(gpus, wanted)


def ray_request(address: str, gpus: int, cpus: int | None, default_cpus: int) -> RayRequest:
    """Connect to the Ray cluster at ``address`` ("local": a Ray instance on this machine, sized to it; "auto": the
    running cluster; or its address) unless Ray is initialised already, and fit each task's request to its nodes
    (:func:`fit_request`)."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address)
    nodes = [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
             for node in ray.nodes() if node.get("Alive")]
    return fit_request(nodes, gpus, cpus, default_cpus)


def run_on_ray(request: RayRequest, runs: list[Run], task: Task, out: Path, progress: Progress,
               done: Callable[[Run, object | None, str | None], None], timeout: float = 600.0,
               retries: int = 3) -> None:
    """Train ``runs`` as Ray tasks of ``request``'s GPUs and CPUs each, on the cluster :func:`ray_request` connected
    to. A task whose worker process or node dies is run again, up to ``retries`` times (Ray's ``max_retries``; a task
    that raises is not: its error is the run's). Tasks that Ray has not started after ``timeout`` seconds during which
    none of the grid's tasks ran (the cluster is busy with other work, or lost the nodes that fit) are cancelled and
    reported as failed. Ctrl-C cancels what is still outstanding."""
    ray = _ray()
    marker = out / "runs" / f".driver-{uuid.uuid4().hex}"  # the tasks check that they see the driver's --out
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(socket.gethostname() + "\n")
    remote = ray.remote(_ray_task).options(num_gpus=request.gpus, num_cpus=request.cpus, max_retries=retries)
    pending, started = {}, {}
    for number, run in enumerate(runs):
        started_path = marker.with_name(f"{marker.name}.{number}.started")  # the task writes it when it starts
        ref = remote.remote(task, run, request.gpus, request.cpus, str(marker), str(started_path))
        pending[ref], started[ref] = run, started_path
    idle_since = time.monotonic()
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref, run in pending.items():
                if started[ref].exists():
                    progress.started(run)
            progress.poll(list(pending.values()))
            for ref in finished:
                run = pending.pop(ref)
                try:
                    done(run, ray.get(ref), None)
                except ray.exceptions.RayError as error:
                    cause = getattr(error, "cause", None)
                    done(run, None, _describe(cause) if isinstance(cause, BaseException) else str(error))
            if finished or any(started[ref].exists() for ref in pending):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > timeout:
                for ref, run in list(pending.items()):
                    ray.cancel(ref, force=True)
                    del pending[ref]
                    done(run, None, f"not started by Ray within {timeout:g} s (asking for {request.gpus} GPU(s) and "
                                    f"{request.cpus} CPU(s); free now: {_free(ray)}); cancelled")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        marker.unlink(missing_ok=True)
        for path in started.values():
            path.unlink(missing_ok=True)


def _free(ray) -> str:
    free = ray.available_resources()
    return f"{free.get('CPU', 0):g} CPU(s), {free.get('GPU', 0):g} GPU(s)"


def _ray_task(task: Task, run: Run, gpus: int, cpus: int, marker: str, started: str):
    """One run on a Ray worker: Ray made its ``gpus`` GPUs the only visible ones; train there. ``started``: a file
    to write first, which tells the driver the task runs."""
    if not Path(marker).is_file():
        out = Path(marker).parents[1]
        raise FileNotFoundError(f"--out {out} is not visible on {socket.gethostname()}: the ablation's --out must be "
                                "on storage that every node sees (the driver and the tasks exchange results there)")
    Path(started).touch()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if gpus else None
    prepare_process(visible, cpus)
    return task(run, ",".join(str(i) for i in range(gpus)) if gpus else "cpu")


"""Timing implementations: several side by side, taking turns within each round so that whatever else the machine
does (drifting load, thermal throttling) hits them alike; and one on a GPU, with CUDA events."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def interleaved_seconds(runs: Mapping[str, Callable[[], object]], repeats: int, warmup: int,
                        synchronize: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Seconds of each call of each run, ``repeats`` rounds after ``warmup`` untimed ones.

    ``synchronize`` (a CUDA device's, for instance) runs before and after each timed call, so asynchronous work
    is counted where it was launched.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(warmup + repeats):
        for name, run in runs.items():
            if synchronize is not None:
                synchronize()
            start = time.perf_counter()
            run()
            if synchronize is not None:
                synchronize()
            if round_ >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def synchronizer(device: torch.device) -> Callable[[], object] | None:
    """The ``synchronize`` argument of :func:`interleaved_seconds` for work on ``device``: CUDA's (its launches
    return before the work is done), or None where calls finish before they return."""
    return functools.partial(torch.cuda.synchronize, device) if device.type == "cuda" else None


def median_ms(run: Callable[[int], object], device: torch.device, repeats: int = 50, warmup: int = 10,
              rotate: int = 1) -> float:
    """Median milliseconds of ``run(i)``, ``i`` cycling through ``rotate`` input sets (so that a cache cannot serve
    them all). On CUDA each call is timed with events on the current stream (the device's own clock, no host gaps
    counted); elsewhere with :func:`interleaved_seconds`."""
    calls = iter(range(warmup + repeats))
    if device.type != "cuda":
        samples = interleaved_seconds({"run": lambda: run(next(calls) % rotate)}, repeats, warmup)
        return 1e3 * statistics.median(samples["run"])
    for i in range(warmup):
        run(i % rotate)
    torch.cuda.synchronize(device)
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(i % rotate)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)

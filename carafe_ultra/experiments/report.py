"""The ablation's report: summary.json, summary.md (the table and a verdict per arm) and summary.png.

Arms are compared with nearest upsampling through seed-paired differences (same seed: same data order and
augmentation), and the verdict comes from a 90% interval of their mean, never from the mean alone. The figures are
the task's (:mod:`.tasks`): box mAP50 and mAP50-95 for detection, and the masks' too for instance segmentation,
whose verdict is on mask mAP50-95; pixel accuracy and mIoU for semantic segmentation (verdict on mIoU); AbsRel (lower
is better) and delta1 for depth (verdict on delta1).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path

from .atomic import replaced_atomically, write_text_atomically
from .tasks import DETECT, TASKS, Task, label

BASELINE = "nearest"
CONFIDENCE = 0.90
SERIES_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")  # one per metric, in the task's order
DELTA_METHOD = (f"{CONFIDENCE:.0%} Student-t interval of the mean of the seed-paired differences "
                "(arm minus nearest with the same seed), n-1 degrees of freedom")


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def student_t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile (in [0.5, 1)) of Student's t distribution with ``dof`` degrees of freedom.

    Its CDF is integrated from the density (Simpson's rule) and inverted by bisection: accurate to about 1e-6,
    which is plenty for an interval of a handful of seeds (and keeps SciPy out of the dependencies).
    """
    if not 0.5 <= probability < 1 or dof < 1:
        raise ValueError(f"need 0.5 <= probability < 1 and dof >= 1, got {probability}, {dof}")
    scale = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def density(t: float) -> float:
        return scale * (1 + t * t / dof) ** (-(dof + 1) / 2)

    def mass_to(x: float, steps: int = 2000) -> float:  # the probability of [0, x]
        h = x / steps
        odd = sum(density((2 * i - 1) * h) for i in range(1, steps // 2 + 1))
        even = sum(density(2 * i * h) for i in range(1, steps // 2))
        return h / 3 * (density(0) + 4 * odd + 2 * even + density(x))

    low, high = 0.0, 1.0
    while 0.5 + mass_to(high) < probability:
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if 0.5 + mass_to(middle) < probability else (low, middle)
    return (low + high) / 2


def by_seed(arm: dict, metric: str) -> dict[int, float]:
    """An arm's ``metric`` per seed, from its summary entry."""
    return dict(zip(arm["seeds"], arm[f"{metric}_runs"]))


def paired_differences(values: dict[int, float], baseline: dict[int, float]) -> list[float]:
    """``values[seed] - baseline[seed]`` for each seed both have, in the order of ``values``."""
    return [values[seed] - baseline[seed] for seed in values if seed in baseline]


def paired_delta(values: dict[int, float], baseline: dict[int, float]) -> dict:
    """Mean and 90% interval of the :func:`paired_differences`.

    ``low`` and ``high`` are None with fewer than two paired seeds (no spread to estimate).
    """
    differences = paired_differences(values, baseline)
    if not differences:
        raise ValueError("no seed in common with the nearest arm: nothing to pair")
    mean, n = statistics.fmean(differences), len(differences)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    half = student_t_quantile(0.5 + CONFIDENCE / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def verdict(delta: dict, lower_is_better: bool = False) -> str:
    """The word for a paired difference: better, worse or not distinguishable at this budget (interval only); with
    ``lower_is_better`` (an error such as AbsRel) a difference below zero is the better one."""
    low, high = delta["low"], delta["high"]
    if low is not None and lower_is_better:  # the interval of the improvement
        low, high = -high, -low
    if low is not None and low > 0:
        return "better"
    if high is not None and high < 0:
        return "worse"
    return "not distinguishable at this budget"


def summarise(results: list, costs: list, task: Task = DETECT) -> list[dict]:
    """One entry per arm, in the order the arms first appear: per-seed values, means and spreads of the task's
    metrics, the arm's cost, and the paired differences against nearest (``delta_vs_nearest``) for every other arm."""
    arms: dict[str, list] = {}
    for result in results:
        arms.setdefault(result.upsampler, []).append(result)
    cost_of = {cost.upsampler: cost for cost in costs}
    summary = []
    for arm, runs in arms.items():
        entry = {"upsampler": arm, "seeds": [r.seed for r in runs]}
        for key, (attribute, _) in task.metrics.items():
            values = [getattr(r, attribute) for r in runs]
            entry[key], entry[f"{key}_std"], entry[f"{key}_runs"] = statistics.fmean(values), _spread(values), values
        entry.update({k: v for k, v in asdict(cost_of[arm]).items() if k != "upsampler"})
        entry["train_seconds"] = statistics.fmean(r.train_seconds for r in runs)
        entry["weights_taken"] = runs[0].weights_taken
        summary.append(entry)
    base = next((a for a in summary if a["upsampler"] == BASELINE), None)
    for entry in summary:
        if base is not None and entry is not base:
            entry["delta_vs_nearest"] = {key: paired_delta(by_seed(entry, key), by_seed(base, key))
                                         for key in task.metrics}
    return summary


def write_summary(settings, data: str, weights: str | None, results: list, costs: list, missing: list[str] = (),
                  latency_device: str | None = None, task: Task = DETECT) -> dict:
    """summary.json, summary.md and summary.png in ``settings.out``; ``data`` and ``weights`` are what the runs
    used (the generated set, the pretrained base), ``missing`` the runs of the grid without a result (failed, or
    not run yet), ``latency_device`` what the latencies were timed on, ``task`` what the figures are."""
    out = Path(settings.out)
    arms = summarise(results, costs, task)
    summary = {"task": task.name, "metrics": list(task.metrics), "verdict_metric": task.verdict_metric,
               "lower_is_better": sorted(task.lower_is_better), "arms": arms, "delta_method": DELTA_METHOD,
               "settings": {**asdict(settings), "data": data, "weights": weights},
               "seeds": list(settings.seeds), "runs": [asdict(r) for r in results], "missing": list(missing),
               "latency_device": latency_device}
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomically(out / "summary.md", markdown_table(summary))
    with replaced_atomically(out / "summary.png") as temporary:
        plot(summary, temporary)
    return summary


def _interval(delta: dict | None) -> str:
    if delta is None:
        return ""
    if delta["low"] is None:
        return f"{delta['mean']:+.3f}"
    return f"{delta['mean']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}]"


def _accuracy(arm: dict, metric: str, spread: bool) -> str:
    """The arm's mean ``metric``, with its standard deviation over seeds where there are several."""
    return f"{arm[metric]:.3f} ± {arm[metric + '_std']:.3f}" if spread else f"{arm[metric]:.3f}"


def _metrics(summary: dict) -> list[str]:
    """The summary's metric keys, in column order (the verdict's last); summaries from before tasks: detection's."""
    return summary.get("metrics") or list(TASKS[summary.get("task", "detect")].metrics)


def markdown_table(summary: dict) -> str:
    arms = summary["arms"]
    metrics = _metrics(summary)
    judged, lower = metrics[-1], set(summary.get("lower_is_better", ()))
    s = summary["settings"]
    seeds = summary["seeds"]
    spread = len(seeds) > 1
    if s.get("pretrain_epochs"):
        start = (f", fine-tuned from a base with nearest upsampling trained {s['pretrain_epochs']} epochs on other "
                 f"generated scenes (`{s['weights']}`)")
    else:
        start = f", starting from `{s['weights']}`" if s.get("weights") else ", from scratch"
    lines = [
        f"# Upsampler ablation: {Path(s['model']).name}",
        "",
        f"Data `{s['data']}`; {s['epochs']} epochs at {s['imgsz']} px, batch {s['batch']}, device {s['device']}"
        f"{start}; seeds {seeds}. Accuracy is the final model's on the validation split, the mean over seeds"
        + (" ± standard deviation" if spread else "") + ".",
        f"Δ is against nearest: the mean of the seed-paired differences and, in brackets, its {CONFIDENCE:.0%} "
        "Student-t interval. Latency: one image, batch 1, float32, model forward only, median"
        + (f", every arm on {summary['latency_device']}." if summary.get("latency_device") else "."),
        "",
        "| upsampler | " + "".join(f"{label(k)} | Δ {label(k)} | " for k in metrics)
        + f"verdict ({label(judged)}) | params | GFLOPs | latency ms |",
        "|---" * (2 * len(metrics) + 5) + "|",
    ]
    for a in arms:
        delta = a.get("delta_vs_nearest")
        lines.append(
            f"| {a['upsampler']} | "
            + "".join(f"{_accuracy(a, k, spread)} | {_interval(delta and delta[k])} | " for k in metrics)
            + f"{verdict(delta[judged], judged in lower) if delta else ''} | {a['params']:,} | "
            f"{a['GFLOPs']:.2f} | {a['latency_ms']:.1f} |"
        )
    if lower:
        lines += ["", f"Lower is better for {', '.join(label(k) for k in metrics if k in lower)}."]
    lines += ["", *_sentences(arms, metrics, lower), ""]
    if summary.get("missing"):
        lines += ["Missing runs (failed or not run yet; a re-run trains only these, resuming where they stopped): "
                  f"{', '.join(summary['missing'])}.", ""]
    return "\n".join(lines)


def _sentences(arms: list[dict], metrics: list[str], lower: set[str] = frozenset()) -> list[str]:
    """One sentence per arm compared with nearest, from the intervals (the verdict's metric first), plus what the
    weights transfer took."""
    if not any("delta_vs_nearest" in a for a in arms):
        return ["No nearest arm, so no comparison."]
    sentences = []
    for a in arms:
        delta = a.get("delta_vs_nearest")
        if delta:
            judged = ", ".join(f"{label(k)} {verdict(delta[k], k in lower)} ({_interval(delta[k])})"
                               for k in reversed(metrics))
            sentences.append(f"- {a['upsampler']} against nearest over {delta[metrics[-1]]['n']} paired seed(s): "
                             f"{judged}.")
    if any(a.get("delta_vs_nearest", {}).get(metrics[-1], {}).get("n") == 1 for a in arms):
        sentences.append("- One seed gives no interval, so nothing can be told apart: use --seeds 0 1 2 or more.")
    for a in arms:
        if a["weights_taken"]:
            taken, total = a["weights_taken"]
            sentences.append(f"- {a['upsampler']} took over {taken}/{total} state entries from the weights; "
                             f"{total - taken} started fresh.")
    return sentences


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    names = [a["upsampler"] for a in arms]
    positions = list(range(len(arms)))
    metrics = _metrics(summary)
    step = 0.3 if len(metrics) <= 2 else 0.18  # the metrics side by side around each arm
    series = [((i - (len(metrics) - 1) / 2) * step, key, SERIES_COLOURS[i]) for i, key in enumerate(metrics)]
    fig, (acc, diff, cost) = plt.subplots(1, 3, figsize=(16, 4.6))

    # Every seed's value, the seeds joined across arms (they are paired), and the mean.
    for offset, key, colour in series:
        for seed in summary["seeds"]:
            points = [(p + offset, by_seed(a, key)[seed]) for p, a in zip(positions, arms) if seed in a["seeds"]]
            acc.plot(*zip(*points), color=colour, alpha=0.35, marker="o", markersize=4, linewidth=1)
        acc.scatter([p + offset for p in positions], [a[key] for a in arms], color=colour, marker="_", s=400,
                    linewidths=3, label=f"{label(key)} (lines: seeds; bar: mean)", zorder=3)
    acc.set_xticks(positions, names)
    acc.set_ylabel("mAP")
    acc.set_title(f"Accuracy, each of {len(summary['seeds'])} seed(s)")
    acc.legend(fontsize=8)

    compared = [a for a in arms if "delta_vs_nearest" in a]
    base = next((b for b in arms if b["upsampler"] == BASELINE), None)
    for p, a in enumerate(compared):
        for offset, key, colour in series:
            delta = a["delta_vs_nearest"][key]
            values = paired_differences(by_seed(a, key), by_seed(base, key))
            diff.scatter([p + offset] * len(values), values, color=colour, s=14, alpha=0.6)
            error = None if delta["low"] is None else [[delta["mean"] - delta["low"]], [delta["high"] - delta["mean"]]]
            diff.errorbar([p + offset], [delta["mean"]], yerr=error, color=colour, marker="D", capsize=5,
                          label=label(key) if p == 0 else None)
    diff.axhline(0, color="grey", linewidth=1)
    diff.set_xlim(-0.5, max(len(compared), 1) - 0.5)
    diff.set_xticks(range(len(compared)), [a["upsampler"] for a in compared])
    diff.set_ylabel("difference to nearest, same seed")
    diff.set_title(f"Paired difference to nearest: seeds and {CONFIDENCE:.0%} interval")
    if compared:
        diff.legend(fontsize=8)

    width = 0.38
    cost.bar([p - width / 2 for p in positions], [a["latency_ms"] for a in arms], width, color="#55a868")
    twin = cost.twinx()
    twin.bar([p + width / 2 for p in positions], [a["GFLOPs"] for a in arms], width, color="#8172b3")
    cost.set_xticks(positions, names)
    cost.set_ylabel("latency, ms (1 image)", color="#55a868")
    twin.set_ylabel("GFLOPs", color="#8172b3")
    cost.set_title("Cost: latency (left bars), GFLOPs (right bars)")
    if max(map(len, names)) > 12:  # arm options make long names
        for axes in (acc, diff, cost):
            axes.tick_params(axis="x", labelrotation=15)
    fig.suptitle(f"Upsampler ablation: {Path(summary['settings']['model']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The ablation's report: summary.json, summary.md (the table, deltas against nearest) and summary.png."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

METRICS = ("mAP50", "mAP50_95")
COSTS = ("params", "GFLOPs", "latency_ms")


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list) -> list[dict]:
    """One entry per arm, in the order the arms first appear: means and spreads over seeds."""
    arms: dict[str, list] = {}
    for result in results:
        arms.setdefault(result.upsampler, []).append(result)
    summary = []
    for arm, runs in arms.items():
        entry = {"upsampler": arm, "seeds": [r.seed for r in runs]}
        for metric in METRICS:
            values = [getattr(r, metric) for r in runs]
            key = "mAP50-95" if metric == "mAP50_95" else metric
            entry[key], entry[f"{key}_std"], entry[f"{key}_runs"] = statistics.fmean(values), _spread(values), values
        for cost in COSTS:
            entry[cost] = statistics.fmean(getattr(r, cost) for r in runs)
        entry["params"] = int(entry["params"])
        entry["train_seconds"] = statistics.fmean(r.train_seconds for r in runs)
        summary.append(entry)
    return summary


def write_summary(settings, data: str, results: list) -> dict:
    out = Path(settings.out)
    arms = summarise(results)
    summary = {"arms": arms, "settings": {**asdict(settings), "data": data}, "seeds": list(settings.seeds),
               "runs": [asdict(r) for r in results]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_table(summary))
    plot(summary, out / "summary.png")
    return summary


def _delta(entry: dict, base: dict | None, key: str) -> str:
    if base is None or entry is base:
        return ""
    return f"{entry[key] - base[key]:+.3f}"


def markdown_table(summary: dict) -> str:
    arms = summary["arms"]
    base = next((a for a in arms if a["upsampler"] == "nearest"), None)
    s = summary["settings"]
    seeds = len(summary["seeds"])
    lines = [
        f"# Upsampler ablation: {Path(s['model']).name}",
        "",
        f"Data `{s['data']}`; {s['epochs']} epochs at {s['imgsz']} px, batch {s['batch']}, device {s['device']}, "
        f"seeds {summary['seeds']}. Values are means over seeds" + (" ± standard deviation." if seeds > 1 else "."),
        "Latency: one image, batch 1, float32, model forward only, median, measured the same way for every arm.",
        "",
        "| upsampler | mAP50 | Δ mAP50 | mAP50-95 | Δ mAP50-95 | params | GFLOPs | latency ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        spread = (lambda k: f" ± {a[k + '_std']:.3f}") if seeds > 1 else (lambda k: "")
        lines.append(
            f"| {a['upsampler']} | {a['mAP50']:.3f}{spread('mAP50')} | {_delta(a, base, 'mAP50')} "
            f"| {a['mAP50-95']:.3f}{spread('mAP50-95')} | {_delta(a, base, 'mAP50-95')} "
            f"| {a['params']:,} | {a['GFLOPs']:.2f} | {a['latency_ms']:.1f} |"
        )
    lines += ["", verdict(arms, base, seeds), ""]
    return "\n".join(lines)


def verdict(arms: list[dict], base: dict | None, seeds: int) -> str:
    """One honest sentence per learned arm: better, worse or within noise against nearest."""
    if base is None:
        return "No nearest arm, so no deltas."
    sentences = []
    for a in arms:
        if a is base:
            continue
        delta = a["mAP50-95"] - base["mAP50-95"]
        noise = max(a["mAP50-95_std"], base["mAP50-95_std"])
        if seeds > 1 and abs(delta) <= noise:
            word = "is within the seed spread of"
        else:
            word = "beats" if delta > 0 else "trails" if delta < 0 else "ties"
        extra = f" ({delta:+.3f} mAP50-95, {a['params'] - base['params']:+,} params, " \
                f"{a['latency_ms'] - base['latency_ms']:+.1f} ms)"
        sentences.append(f"{a['upsampler']} {word} nearest{extra}.")
    if seeds == 1:
        sentences.append("One seed only: differences this small can be noise; use --seeds 0 1 2 to see the spread.")
    return " ".join(sentences)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    names = [a["upsampler"] for a in arms]
    positions = range(len(arms))
    fig, (acc, cost) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for offset, key, colour in ((-width / 2, "mAP50", "#4c72b0"), (width / 2, "mAP50-95", "#dd8452")):
        xs = [p + offset for p in positions]
        acc.bar(xs, [a[key] for a in arms], width, yerr=[a[f"{key}_std"] for a in arms], capsize=4,
                color=colour, label=key)
        for x, a in zip(xs, arms):  # every seed, so the spread is visible
            acc.scatter([x] * len(a[f"{key}_runs"]), a[f"{key}_runs"], color="black", s=10, zorder=3)
    acc.set_xticks(list(positions), names)
    acc.set_ylabel("mAP")
    acc.set_ylim(0, 1.2 * max(a["mAP50"] + a["mAP50_std"] for a in arms) + 1e-3)
    acc.set_title(f"Accuracy, {len(summary['seeds'])} seed(s): mean, std, and each seed")
    acc.legend()
    cost.bar([p - width / 2 for p in positions], [a["latency_ms"] for a in arms], width, color="#55a868",
             label="latency ms (1 image)")
    twin = cost.twinx()
    twin.bar([p + width / 2 for p in positions], [a["GFLOPs"] for a in arms], width, color="#8172b3", label="GFLOPs")
    cost.set_xticks(list(positions), names)
    cost.set_ylabel("latency, ms")
    twin.set_ylabel("GFLOPs")
    cost.set_title("Cost")
    cost.set_ylim(0, 1.35 * max(a["latency_ms"] for a in arms))  # headroom for the legend
    twin.set_ylim(0, 1.35 * max(a["GFLOPs"] for a in arms))
    handles = cost.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    twin.legend(handles, ["latency ms (1 image)", "GFLOPs"], loc="upper left", ncol=2)  # twin is drawn on top
    fig.suptitle(f"Upsampler ablation: {Path(summary['settings']['model']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

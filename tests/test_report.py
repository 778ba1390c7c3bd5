"""The ablation report: seed-paired intervals, verdicts from intervals only, the table and the plot."""

import json
from pathlib import Path

import pytest

from carafe_ultra.experiments.ablation import ArmCost, RunResult, Settings
from carafe_ultra.experiments.report import markdown_table, paired_delta, student_t_quantile, verdict, write_summary


@pytest.mark.parametrize("dof,expected", [(1, 6.313752), (2, 2.919986), (4, 2.131847), (9, 1.833113), (30, 1.697261)])
def test_student_t_quantiles(dof, expected):
    assert student_t_quantile(0.95, dof) == pytest.approx(expected, abs=2e-6)


def test_paired_interval_uses_the_pairing():
    # Seeds move both arms together: unpaired the arms overlap, paired the difference is steady.
    arm, base = {0: 0.40, 1: 0.30, 2: 0.20}, {0: 0.38, 1: 0.29, 2: 0.17}
    delta = paired_delta(arm, base)
    differences = [0.02, 0.01, 0.03]
    half = 2.919986 * 0.01 / 3**0.5  # t(0.95, 2) · sd / √n
    assert delta["n"] == 3 and delta["mean"] == pytest.approx(0.02)
    assert delta["low"] == pytest.approx(0.02 - half, abs=1e-6) and delta["high"] == pytest.approx(0.02 + half, abs=1e-6)
    assert verdict(delta) == "better" and min(differences) > 0
    assert paired_delta({0: 0.3, 5: 0.9}, {0: 0.2, 1: 0.1})["n"] == 1  # only seed 0 is in both


def test_verdict_comes_from_the_interval_not_the_mean():
    noisy = paired_delta({0: 0.50, 1: 0.20, 2: 0.45}, {0: 0.30, 1: 0.30, 2: 0.30})  # mean +0.05, wide
    assert noisy["mean"] > 0 and verdict(noisy) == "not distinguishable at this budget"
    assert verdict(paired_delta({0: 0.2, 1: 0.21, 2: 0.19}, {0: 0.3, 1: 0.3, 2: 0.3})) == "worse"
    single = paired_delta({0: 0.9}, {0: 0.1})
    assert single["low"] is None and verdict(single) == "not distinguishable at this budget"
    with pytest.raises(ValueError, match="no seed in common"):
        paired_delta({1: 0.3}, {0: 0.3})


def run(arm, seed, m50, m):
    return RunResult(upsampler=arm, seed=seed, mAP50=m50, mAP50_95=m, train_seconds=60.0)


def costs(*arms):
    return [ArmCost(upsampler=a, params=100 + i, GFLOPs=1.0 + i, latency_ms=2.0 + i) for i, a in enumerate(arms)]


def test_summary_files(tmp_path):
    settings = Settings(seeds=[0, 1, 2], arms=["nearest", "carafe", "dysample"], out=str(tmp_path))
    results = [run("nearest", 0, 0.50, 0.30), run("carafe", 0, 0.55, 0.33), run("dysample", 0, 0.52, 0.29),
               run("nearest", 1, 0.40, 0.25), run("carafe", 1, 0.46, 0.27), run("dysample", 1, 0.30, 0.20),
               run("nearest", 2, 0.45, 0.28), run("carafe", 2, 0.49, 0.31), run("dysample", 2, 0.47, 0.30)]
    summary = write_summary(settings, "d.yaml", None, results, costs("nearest", "carafe", "dysample"))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["arms"] == json.loads(json.dumps(summary["arms"]))
    assert "Student-t" in saved["delta_method"] and "seed-paired" in saved["delta_method"]
    arms = {a["upsampler"]: a for a in saved["arms"]}
    assert "delta_vs_nearest" not in arms["nearest"]
    carafe = arms["carafe"]["delta_vs_nearest"]
    assert set(carafe) == {"mAP50", "mAP50-95"} and {"mean", "low", "high"} <= set(carafe["mAP50"])
    assert carafe["mAP50-95"]["mean"] == pytest.approx((0.03 + 0.02 + 0.03) / 3)
    assert arms["carafe"]["mAP50-95_runs"] == [0.33, 0.27, 0.31] and arms["carafe"]["params"] == 101
    table = (tmp_path / "summary.md").read_text()
    assert "| carafe | 0.500 ± 0.046 | +0.050 [+0.033, +0.067] | 0.303 ± 0.031 | +0.027 [+0.017, +0.036] | better |" in table
    assert "| dysample |" in table and "| not distinguishable at this budget |" in table
    assert "carafe against nearest over 3 paired seed(s): mAP50-95 better" in table
    assert (tmp_path / "summary.png").stat().st_size > 20_000


def test_one_seed_says_nothing_can_be_told_apart(tmp_path):
    settings = Settings(seeds=[0], out=str(tmp_path))
    summary = write_summary(settings, "d.yaml", None, [run("nearest", 0, 0.5, 0.3), run("carafe", 0, 0.2, 0.1)],
                            costs("nearest", "carafe"))
    table = markdown_table(summary)
    assert "| carafe | 0.200 | -0.300 | 0.100 | -0.200 | not distinguishable at this budget |" in table
    assert "One seed gives no interval" in table


def test_weights_transfer_is_reported(tmp_path):
    settings = Settings(seeds=[0], out=str(tmp_path))
    nearest = RunResult("nearest", 0, 0.5, 0.3, 60.0, weights_taken=[355, 355])
    carafe = RunResult("carafe", 0, 0.5, 0.3, 60.0, weights_taken=[355, 363])
    table = markdown_table(write_summary(settings, "d.yaml", "base.pt", [nearest, carafe], costs("nearest", "carafe")))
    assert "carafe took over 355/363 state entries from the weights; 8 started fresh." in table
    assert ", starting from `base.pt`" in table
    pretrained = Settings(seeds=[0], pretrain_epochs=20, out=str(tmp_path))
    table = markdown_table(write_summary(pretrained, "d.yaml", "base.pt", [nearest, carafe], costs("nearest", "carafe")))
    assert "fine-tuned from a base with nearest upsampling trained 20 epochs on other generated scenes (`base.pt`)" in table
    assert Path(tmp_path / "summary.json").is_file()


def test_a_segmentation_summary_judges_the_masks(tmp_path):
    from carafe_ultra.experiments.tasks import SEGMENT

    settings = Settings(model="yolo11n-seg.yaml", seeds=[0, 1, 2], arms=["nearest", "carafe-head"], out=str(tmp_path))
    boxes, masks = {"nearest": (0.50, 0.30), "carafe-head": (0.50, 0.30)}, {"nearest": 0.20, "carafe-head": 0.23}
    results = [RunResult(arm, seed, *boxes[arm], 60.0, mask_mAP50=masks[arm] + 0.1 + seed / 100,
                         mask_mAP50_95=masks[arm] + seed / 100 + (0.002 if arm == "nearest" and seed == 1 else 0))
               for seed in (0, 1, 2) for arm in ("nearest", "carafe-head")]
    summary = write_summary(settings, "d.yaml", None, results, costs("nearest", "carafe-head"), task=SEGMENT)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["task"] == "segment" and saved["verdict_metric"] == "mask_mAP50-95"
    head = {a["upsampler"]: a for a in saved["arms"]}["carafe-head"]
    assert set(head["delta_vs_nearest"]) == {"mAP50", "mAP50-95", "mask_mAP50", "mask_mAP50-95"}
    assert head["mask_mAP50-95_runs"] == pytest.approx([0.23, 0.24, 0.25])
    table = (tmp_path / "summary.md").read_text()
    assert ("| upsampler | mAP50 | Δ mAP50 | mAP50-95 | Δ mAP50-95 | mask mAP50 | Δ mask mAP50 | mask mAP50-95 "
            "| Δ mask mAP50-95 | verdict (mask mAP50-95) | params | GFLOPs | latency ms |") in table
    assert "| better | 101 |" in table  # on the masks; the boxes are equal
    assert "carafe-head against nearest over 3 paired seed(s): mask mAP50-95 better (+0.029" in table
    assert "mAP50-95 not distinguishable at this budget (+0.000 [+0.000, +0.000])" in table
    assert markdown_table(summary) == table and (tmp_path / "summary.png").stat().st_size > 20_000

"""The few-shot grid's planning, commands and summary statistics, on synthetic run folders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_1samp, wilcoxon

from bundle.commands import merged_config
from bundle.experiments import (
    METHODS,
    GridSettings,
    Run,
    collect,
    paired_test,
    per_seed_table,
    plan_grid,
    recorded_protocol,
    summary_table,
)
from bundle.experiments.grid import run_commands

ALL = list(METHODS)


def test_grid_is_seed_major_and_runs_unseeded_methods_once_per_data_set():
    runs = plan_grid(["jsrt", "kvasir"], [0, 1, 2], ALL)
    unseeded = [r for r in runs if r.seed is None]
    assert {(r.dataset, r.method) for r in unseeded} == {
        (d, m) for d in ("jsrt", "kvasir") for m in ("zero-shot", "no-prompt")
    }
    assert len(unseeded) == 4 and runs[:4] == unseeded
    seeded = runs[4:]
    assert len(seeded) == 3 * (2 + 2) * 4  # seeds x (paper shots per data set) x trained methods
    assert [r.seed for r in seeded] == sorted(r.seed for r in seeded)  # all of seed 0 before seed 1
    assert {r.shots for r in seeded if r.dataset == "jsrt"} == {2, 4}
    assert {r.shots for r in seeded if r.dataset == "kvasir"} == {4, 8}
    assert len({r.folder(Path("/x")) for r in runs}) == len(runs)
    assert plan_grid(["jsrt"], [0], ["blo-sam"], shots={"jsrt": [8]})[0].shots == 8
    with pytest.raises(ValueError, match="unknown method"):
        plan_grid(["jsrt"], [0], ["samed"])


def test_run_commands_are_the_bundle_commands_with_the_method_overlays(tmp_path):
    settings = GridSettings(tmp_path, {"jsrt": "/data/jsrt"}, iterations=50, embedding_cache_dir="/c", max_test_cases=7)
    joint = run_commands(Run("jsrt", 4, 2, "joint"), settings)
    train, evaluate = joint["training"], joint["evaluating"]
    assert [Path(f).name for f in train["files"]] == ["train.json", "jsrt.json"]
    assert train["overrides"]["method"] == "joint"  # the config key that picks the training method
    assert Path(evaluate["files"][-1]).name == "evaluate.json"
    assert {k: train["overrides"][k] for k in ("shots", "seed", "iterations", "dataset_dir", "embedding_cache_dir")} == {
        "shots": 4, "seed": 2, "iterations": 50, "dataset_dir": "/data/jsrt", "embedding_cache_dir": "/c"}  # fmt: skip
    assert train["overrides"]["ckpt_dir"].startswith(str(tmp_path / "jsrt" / "4shot" / "seed2" / "joint"))
    assert evaluate["overrides"]["validate#data"] == "$@split.test[:7]"
    zero = run_commands(Run("jsrt", None, None, "zero-shot"), settings)
    assert "seed" not in zero["training"]["overrides"]
    assert Path(zero["evaluating"]["files"][-1]).name == "box_prompt.json"
    second = run_commands(Run("jsrt", 2, 0, "blo-sam-2nd"), settings)
    assert second["training"]["overrides"]["hypergradient"] == "finite_difference"
    assert second["training"]["overrides"]["method"] == "blo-sam"  # named, whatever train.json's default
    merged = merged_config(**second["training"])
    assert merged["hypergradient"] == "finite_difference" and merged["class_names"] == ["lung"]


def _fake_run(root: Path, run: Run, dice: list[float], hd: list[float]) -> None:
    folder = run.folder(root)
    (folder / "eval").mkdir(parents=True)
    for name, values in (("val_mean_dice", dice), ("val_hd95", hd)):
        with open(folder / "eval" / f"{name}_raw.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "class0", "mean"])
            w.writerows([[f"case{i}.png", v, v] for i, v in enumerate(values)])
    (folder / "done.json").write_text(json.dumps({"training_seconds": 10.0, "evaluating_seconds": 5.0}))


def test_summary_reports_mean_and_std_over_seeds_and_a_test_paired_by_seed(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, size=12)
    runs = plan_grid(["jsrt"], [0, 1, 2], ["blo-sam", "joint", "no-prompt"], shots={"jsrt": [2]})
    for run in runs:
        if run.method == "no-prompt":
            _fake_run(tmp_path, run, [0.0] * 12, [math.nan] * 12)
        else:
            shift = 0.05 * run.seed + (0.0 if run.method == "blo-sam" else -0.04)
            _fake_run(tmp_path, run, list(base + shift + rng.normal(0, 0.01, 12)), [10.0 + run.seed] * 12)
    results = collect(runs + [Run("jsrt", 2, 5, "blo-sam")], tmp_path)  # an unfinished run is left out
    assert len(results) == 7
    table = summary_table(results)
    blo = [r for r in results if r.run.method == "blo-sam"]
    means = [100 * r.mean_dice for r in blo]
    assert (
        f"| jsrt | 2 | blo-sam | 3 | {np.mean(means):.1f} ± {np.std(means, ddof=1):.1f} | 11.0 ± 1.0 | 0/36 | 87.1 / 84.4 |"
        in table
    )
    assert "| jsrt | 2 | no-prompt | - | 0.0 | - | 12/12 |" in table  # one run: no training data

    joint = [r for r in results if r.run.method == "joint"]
    stat = paired_test(blo, joint)  # 3 seeds: a paired t-test over the per-seed mean differences
    per_seed = [b.mean_dice - j.mean_dice
                for b, j in zip(sorted(blo, key=lambda r: r.run.seed), sorted(joint, key=lambda r: r.run.seed),
                                strict=True)]  # fmt: skip
    assert stat.unit == "seeds" and stat.pairs == 3
    assert stat.difference == pytest.approx(np.mean(per_seed)) and stat.p_value == pytest.approx(
        ttest_1samp(per_seed, 0.0).pvalue
    )
    assert stat.difference > 0.03
    assert "(3 seeds, t over seeds)" in table
    # one seed: that seed's cases, Wilcoxon signed-rank
    one = paired_test(blo[:1], joint[:1])
    diffs = [blo[0].dice[c] - joint[0].dice[c] for c in blo[0].dice]
    assert one.unit == "cases" and one.pairs == 12 and one.p_value == pytest.approx(wilcoxon(diffs).pvalue)
    # the unseeded baseline is paired with every seed
    assert paired_test(blo, [r for r in results if r.run.method == "no-prompt"]).pairs == 3


def test_per_seed_table_has_a_row_per_seed_and_marks_the_best_method(tmp_path):
    runs = plan_grid(["jsrt"], [0, 1], ["blo-sam", "joint", "zero-shot"], shots={"jsrt": [2]})
    scores = {(0, "blo-sam"): 0.80, (0, "joint"): 0.90, (1, "blo-sam"): 0.93, (1, "joint"): 0.91}
    for run in runs:
        value = 0.95 if run.seed is None else scores[(run.seed, run.method)]
        _fake_run(tmp_path, run, [value - 0.01, value + 0.01], [5.0, 5.0])
    table = per_seed_table(collect(runs, tmp_path)).splitlines()
    assert table[0] == "| data set | shots | seed | blo-sam | joint |"  # unseeded baselines have no seed row
    assert table[2:] == ["| jsrt | 2 | 0 | 80.0 | **90.0** |", "| jsrt | 2 | 1 | **93.0** | 91.0 |"]
    # an unfinished run shows as "-"
    partial = [r for r in collect(runs, tmp_path) if (r.run.seed, r.run.method) != (1, "joint")]
    assert per_seed_table(partial).splitlines()[-1] == "| jsrt | 2 | 1 | **93.0** | - |"


def test_recorded_protocol_names_labels_input_prompt_augmentation_test_time_flips_margin_and_box_pass(tmp_path):
    jsrt, kvasir = Run("jsrt", 2, 0, "blo-sam"), Run("kvasir", 4, 0, "blo-sam")
    older = Run("kvasir", 8, 0, "blo-sam")  # recorded before the margin existed
    for run, flips, margin, augmentation in (
        (jsrt, [], 0.0, "radiograph"),
        (kvasir, [[1]], 0.1, "endoscopy_zoomlarge"),
        (older, [[1]], None, "endoscopy"),
    ):
        _fake_run(tmp_path, run, [0.9], [10.0])
        config = {"val_size": 0, "upright": True, "prompt": "tokens", "tta_flips": flips, "augmentation": augmentation}
        if margin is not None:
            config["postprocess_confidence_margin"] = margin
            config["refine_boxes"] = "pretrained" if run is kvasir else False
        (run.folder(tmp_path) / "config.json").write_text(json.dumps(config))
    sentence = recorded_protocol(collect([jsrt, kvasir, older], tmp_path), tmp_path)
    assert "exactly k labelled images (final weights); encoder input upright; prompt `tokens`" in sentence
    assert "kvasir: flip test-time augmentation `tta_flips` [[1]]" in sentence and "jsrt:" not in sentence
    assert "kvasir: confidence margin `postprocess_confidence_margin` 0 / 0.1" in sentence
    assert "kvasir: box pass `refine_boxes` false / pretrained" in sentence and "jsrt: box" not in sentence
    # listed only where a data set's runs differ in it
    assert (
        "kvasir: training augmentation `endoscopy` / `endoscopy_zoomlarge`" in sentence and "radiograph" not in sentence
    )


def test_the_grid_knows_the_bundles_default_method():
    """The report shows the default method's cases: the grid's name for it is train.json's."""
    from bundle.commands import merged_config
    from bundle.experiments import DEFAULT_METHOD, METHODS

    assert merged_config([Path(__file__).resolve().parents[2] / "configs" / "train.json"])["method"] == DEFAULT_METHOD
    assert METHODS[DEFAULT_METHOD].overrides["method"] == DEFAULT_METHOD


@pytest.mark.parametrize("validated", [False, True])
def test_training_curves_show_a_validation_panel_only_for_runs_that_validated(tmp_path, validated):
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    from bundle.experiments.figures import training_curves
    from bundle.experiments.grid import Run

    run = Run("jsrt", 2, 0, "joint")
    writer = SummaryWriter(str(run.folder(tmp_path) / "train"))
    for step in range(1, 6):
        writer.add_scalar("loss", 1.0 / step, step)
        if validated:
            writer.add_scalar("val_mean_dice", 0.5 + 0.05 * step, step)
    writer.close()
    png = training_curves([run], tmp_path, tmp_path / "curves.png")
    width, height = Image.open(png).size
    # two panels (loss, validation Dice) at 11 x 4 in, one (loss) at 6 x 4 in; 120 dpi
    assert (width, height) == ((1320, 480) if validated else (720, 480))

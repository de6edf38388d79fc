"""Aggregate a few-shot grid: Dice and HD95 per run, mean ± std over seeds, paired tests.

The statistics follow the paper's protocol: a run's score is its mean over the test cases
(measured at each image's original resolution); a grid cell reports the mean ± standard deviation
of the run scores over the seeded samplings. Two methods are compared per seed (:func:`paired_test`): a
paired t-test over the per-seed mean differences, or, with one seed, a Wilcoxon signed-rank test over
that seed's test cases.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ttest_1samp, wilcoxon

from bundle.experiments.grid import DATASETS, METHODS, Run


@dataclass
class RunResult:
    """Per-case metrics of one finished run, keyed by image file."""

    run: Run
    dice: dict[str, float]
    hd95: dict[str, float]  # nan where the prediction (or ground truth) is empty
    seconds: dict[str, float]

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.dice.values())))


def per_case(path: Path) -> dict[str, float]:
    """Per-case values of a metric's ``<metric>_raw.csv`` (MONAI's ``MetricsSaver``), by file name."""
    with open(path) as f:
        return {row["filename"]: float(row["mean"]) for row in csv.DictReader(f)}


def load_result(run: Run, root: Path) -> RunResult | None:
    """The metrics of ``run`` if it has finished (``done.json``), else ``None``."""
    folder = run.folder(root)
    if not (folder / "done.json").exists():
        return None
    timings = json.loads((folder / "done.json").read_text())
    seconds = {k.removesuffix("_seconds"): v for k, v in timings.items() if k.endswith("_seconds")}
    return RunResult(run, per_case(folder / "eval" / "val_mean_dice_raw.csv"),
                     per_case(folder / "eval" / "val_hd95_raw.csv"), seconds)  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, 0 for a single value) of per-run scores."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _mean_std(values: list[float], digits: int = 1, scale: float = 1.0) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class PairedTest:
    """``a`` - ``b`` in Dice: the mean difference, its two-sided p-value, and what was paired."""

    difference: float
    p_value: float
    pairs: int
    unit: str  # "seeds": per-seed means, paired t-test; "cases": one seed's cases, Wilcoxon signed-rank


def paired_test(a: list[RunResult], b: list[RunResult]) -> PairedTest | None:
    """Dice(a) - Dice(b), paired by seed: a seed is one sampling of the k labelled images, so the cases of
    one seed are not independent replicates of the comparison, and pooling (seed, case) pairs would
    overstate the evidence.

    - Two or more shared seeds: the per-seed mean differences (each over that seed's shared test cases),
      a paired t-test over seeds.
    - One shared seed: the per-case differences of that seed, a Wilcoxon signed-rank test; it speaks for
      that one sampling of labelled images only.

    Unseeded results (one run, e.g. ``zero-shot``) pair with every seed of the other side. Returns
    ``None`` without pairs.
    """

    def by_seed(results: list[RunResult]) -> dict:
        return {r.run.seed: r.dice for r in results}

    ta, tb = by_seed(a), by_seed(b)
    if all(r.run.seed is None for r in b) and tb:
        tb = {seed: tb[None] for seed in ta}
    elif all(r.run.seed is None for r in a) and ta:
        ta = {seed: ta[None] for seed in tb}
    seeds = sorted(set(ta) & set(tb), key=str)
    per_seed = []
    for seed in seeds:
        cases = sorted(set(ta[seed]) & set(tb[seed]))
        if cases:
            per_seed.append(np.array([ta[seed][c] - tb[seed][c] for c in cases]))
    if not per_seed:
        return None
    if len(per_seed) == 1:
        diff = per_seed[0]
        p = 1.0 if np.allclose(diff, 0) else float(wilcoxon(diff).pvalue)
        return PairedTest(float(np.mean(diff)), p, len(diff), "cases")
    means = np.array([d.mean() for d in per_seed])
    p = 1.0 if np.allclose(means, means[0]) and np.isclose(means[0], 0) else float(ttest_1samp(means, 0.0).pvalue)
    return PairedTest(float(means.mean()), 1.0 if math.isnan(p) else p, len(means), "seeds")


def recorded_protocol(results: list[RunResult], root: Path) -> str:
    """One sentence on how the finished runs were made, read from their recorded ``config.json``:
    the labelled images each used (k, or k + validation images), what the encoder was shown, the training
    augmentation where a data set's runs differ in it, the test-time flips, the confidence margin of the clean-up
    and the box pass."""
    settings, augmentations, flips, margins, refines = set(), {}, {}, {}, {}
    for result in results:
        path = result.run.folder(root) / "config.json"
        if result.run.seed is None or not path.is_file():
            continue
        config = json.loads(path.read_text())
        upright = config.get("upright")  # absent before the bundle showed the encoder upright images
        settings.add((int(config.get("val_size") or 0), upright is not False and upright is not None,
                      str(config.get("prompt", "dense"))))  # fmt: skip
        augmentations.setdefault(result.run.dataset, set()).add(str(config.get("augmentation", "flips")))
        if config.get("tta_flips"):
            flips.setdefault(result.run.dataset, set()).add(json.dumps(config["tta_flips"]))
        # absent before bundle 0.6.3: no margin
        margins.setdefault(result.run.dataset, set()).add(float(config.get("postprocess_confidence_margin") or 0))
        # absent before bundle 0.9.1: no box pass
        refines.setdefault(result.run.dataset, set()).add(str(config.get("refine_boxes") or "false"))
    parts = []
    for val, upright, prompt in sorted(settings):
        labels = (
            f"k + {val} labelled images (the {val} validation images pick the best iteration)"
            if val
            else ("exactly k labelled images (final weights)")
        )
        view = "upright" if upright else "transposed (the bundle before version 0.2)"
        parts.append(f"{labels}; encoder input {view}; prompt `{prompt}`")
    for dataset, values in sorted(augmentations.items()):
        if len(values) > 1:  # a preset changed between runs: each run's config.json says which it had
            parts.append(f"{dataset}: training augmentation {' / '.join(f'`{v}`' for v in sorted(values))}")
    for dataset, values in sorted(flips.items()):
        parts.append(f"{dataset}: flip test-time augmentation `tta_flips` {' / '.join(sorted(values))}")
    for dataset, values in sorted(margins.items()):
        if any(values):  # runs of one data set may differ: each run's config.json says which it had
            listed = " / ".join(f"{v:g}" for v in sorted(values))
            parts.append(f"{dataset}: confidence margin `postprocess_confidence_margin` {listed}")
    for dataset, values in sorted(refines.items()):
        if values != {"false"}:  # runs of one data set may differ: each run's config.json says which it had
            parts.append(f"{dataset}: box pass `refine_boxes` {' / '.join(sorted(values))}")
    return "Runs used: " + " | ".join(parts) + "." if parts else ""


def collect(runs: list[Run], root: Path) -> list[RunResult]:
    """Results of the finished runs among ``runs``."""
    return [r for r in (load_result(run, root) for run in runs) if r is not None]


def _cell(results: list[RunResult], dataset: str, shots: int | None, method: str) -> list[RunResult]:
    seeded = METHODS[method].seeded
    return [r for r in results if r.run.dataset == dataset and r.run.method == method
            and (not seeded or r.run.shots == shots)]  # fmt: skip


def summary_table(results: list[RunResult], reference: str = "blo-sam") -> str:
    """Markdown: one row per data set, shots and method, with the paper's numbers and a paired test
    of ``reference`` against each other method."""
    lines = [
        "| data set | shots | method | seeds | Dice % (mean ± std over seeds) | HD95 px | empty predictions "
        f"| paper BLO-SAM / SAMed | {reference} − method: mean Δ Dice, p (paired by seed; one seed: by case) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, data in DATASETS.items():
        shots_seen = sorted({r.run.shots for r in results if r.run.dataset == name and r.run.shots})
        for k in shots_seen:
            for method in METHODS:
                cell = _cell(results, name, k, method)
                if not cell:
                    continue
                dice = [r.mean_dice for r in cell]
                hd = [_nanmean(list(r.hd95.values())) for r in cell]
                empty = sum(math.isnan(v) for r in cell for v in r.hd95.values())
                cases = sum(len(r.hd95) for r in cell)
                paper = (
                    f"{data.paper_blo_sam.get(k, '-')} / {data.paper_samed.get(k, '-')}" if method == reference else ""
                )
                test = ""
                if method != reference:
                    ref = _cell(results, name, k, reference)
                    stat = paired_test(ref, cell) if ref else None
                    if stat:
                        how = "t over seeds" if stat.unit == "seeds" else "Wilcoxon over cases"
                        test = f"{stat.difference * 100:+.1f}, p = {stat.p_value:.2g} ({stat.pairs} {stat.unit}, {how})"
                seeds = "-" if not METHODS[method].seeded else str(len(cell))
                lines.append(f"| {name} | {k} | {method} | {seeds} | {_mean_std(dice, scale=100)} | "
                             f"{_mean_std(hd)} | {empty}/{cases} | {paper} | {test} |")  # fmt: skip
    return "\n".join(lines)


def per_seed_table(results: list[RunResult]) -> str:
    """Markdown: each seeded run's mean Dice, one row per data set, shots and seed, one column per
    trained method; the best of a row in bold (ties all bold), ``-`` where a run has not finished."""
    methods = [m for m in METHODS if METHODS[m].seeded and any(r.run.method == m for r in results)]
    lines = ["| data set | shots | seed | " + " | ".join(methods) + " |"]
    lines.append("|---|---|---|" + "---|" * len(methods))
    keys = sorted({(r.run.dataset, r.run.shots, r.run.seed) for r in results if r.run.seed is not None},
                  key=lambda k: (list(DATASETS).index(k[0]), k[1], k[2]))  # fmt: skip
    for name, k, seed in keys:
        scores = {r.run.method: round(100 * r.mean_dice, 1) for r in results
                  if (r.run.dataset, r.run.shots, r.run.seed) == (name, k, seed)}  # fmt: skip
        best = max(scores.values())
        cells = [
            "-" if m not in scores else f"**{scores[m]:.1f}**" if scores[m] == best else f"{scores[m]:.1f}"
            for m in methods
        ]
        lines.append(f"| {name} | {k} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compute_time(results: list[RunResult]) -> float:
    """Total seconds spent training and evaluating the finished runs."""
    return sum(sum(r.seconds.values()) for r in results)


def write_markdown_report(lines: list[str], report: Path) -> str:
    """Join ``lines``, append the hand-written reading beside the report (``<stem>_notes.md``, kept
    across rewrites) and write the report; returns its text."""
    notes = report.with_name(f"{report.stem}_notes.md")
    if notes.is_file():
        lines = [*lines, notes.read_text()]
    text = "\n".join(lines)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    return text

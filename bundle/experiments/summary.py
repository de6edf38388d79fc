"""Aggregate a few-shot grid: Dice and HD95 per run, mean ± std over seeds, paired tests.

The statistics follow the paper's protocol: a run's score is its mean over the test cases
(measured at each image's original resolution); a grid cell reports the mean ± standard deviation
of the run scores over the seeded samplings. Two methods are compared with a Wilcoxon signed-rank
test over the same (seed, test case) pairs.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

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


def paired_test(a: list[RunResult], b: list[RunResult]) -> tuple[float, float, int] | None:
    """Wilcoxon signed-rank test of Dice(a) - Dice(b) over shared (seed, case) pairs.

    Unseeded results (one run) pair with every seed of the other side. Returns the median
    difference, the two-sided p-value and the number of pairs, or ``None`` without pairs.
    """

    def table(results: list[RunResult]) -> dict:
        return {(r.run.seed, case): d for r in results for case, d in r.dice.items()}

    def spread(unseeded: list[RunResult], seeded: dict) -> dict:
        by_case = {case: d for r in unseeded for case, d in r.dice.items()}
        return {(seed, case): by_case[case] for seed, case in seeded if case in by_case}

    ta, tb = table(a), table(b)
    if all(r.run.seed is None for r in b):
        tb = spread(b, ta)
    elif all(r.run.seed is None for r in a):
        ta = spread(a, tb)
    keys = sorted(set(ta) & set(tb))
    if not keys:
        return None
    diff = np.array([ta[k] - tb[k] for k in keys])
    if np.allclose(diff, 0):
        return 0.0, 1.0, len(keys)
    return float(np.median(diff)), float(wilcoxon(diff).pvalue), len(keys)


def recorded_protocol(results: list[RunResult], root: Path) -> str:
    """One sentence on how the finished runs were made, read from their recorded ``config.json``:
    the labelled images each used (k, or k + validation images) and what the encoder was shown."""
    settings = set()
    for result in results:
        path = result.run.folder(root) / "config.json"
        if result.run.seed is None or not path.is_file():
            continue
        config = json.loads(path.read_text())
        upright = config.get("upright")  # absent before the bundle showed the encoder upright images
        settings.add((int(config.get("val_size") or 0), upright is not False and upright is not None,
                      str(config.get("prompt", "dense"))))  # fmt: skip
    parts = []
    for val, upright, prompt in sorted(settings):
        labels = (
            f"k + {val} labelled images (the {val} validation images pick the best iteration)"
            if val
            else ("exactly k labelled images (final weights)")
        )
        view = "upright" if upright else "transposed (the bundle before version 0.2)"
        parts.append(f"{labels}; encoder input {view}; prompt `{prompt}`")
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
        f"| paper BLO-SAM / SAMed | {reference} − method: median Δ Dice, Wilcoxon p (pairs) |",
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
                        test = f"{stat[0] * 100:+.1f}, p = {stat[1]:.2g} ({stat[2]})"
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

"""The accuracy ablation: each change of the k-shot work switched on alone, from the previous default.

``before`` reproduces the bundle before these changes (encoder shown transposed images, both flips drawn
afresh, the paper's dense prompt vector, output upscaling trained at the base lr, raw masks, no flip
test-time augmentation, 10 extra labelled images to pick the best iteration). Every other variant
changes exactly one thing from ``before``; ``all`` is the data set's preset as shipped (all changes on);
``bank-<n>`` is the preset with a bank of n augmented views per image instead of its own (Dice against
bank size). A variant is a set of command-line overrides given to both the training and the evaluation
command of a grid run, so its runs are ordinary grid runs in their own folder (``<out>/<variant>/...``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.experiments.grid import CONFIGS, GridSettings, Run, execute
from bundle.experiments.summary import RunResult, load_result, mean_std, per_case

BANK_SIZES = (1, 2, 4, 16)  # with each preset's own 8 (variant ``all``): the Dice against bank size
RAW_MASKS = {"postprocess_fill_holes": False, "postprocess_components": 0, "postprocess_min_size": 0.0,
             "postprocess_min_relative_size": 0.0, "postprocess_confidence_margin": 0.0}  # fmt: skip
PRESET = "preset"  # a variant's value meaning "the preset's own setting" for keys ``before`` overrides


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: overrides on top of ``before`` (or the preset, for ``all``)."""

    name: str
    description: str
    overrides: dict = field(default_factory=dict)
    from_preset: bool = False  # True: the preset as shipped, plus ``overrides``


def before_overrides() -> dict:
    """The previous default, on top of the current presets."""
    return {"upright": False, "prompt": "dense", "augmentation": "flips", "augmentation_bank": 0,
            "train_upscaling": True, "val_size": 10, "tta_flips": [], **RAW_MASKS}  # fmt: skip


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("before", "previous default (transposed input, k + 10 labels)"),
        Variant("upright", "+ upright input", {"upright": True}),
        Variant("tokens", "+ prompt: 2 tokens from a whole-image box", {"prompt": "tokens"}),
        Variant("map", "+ prompt: dense map", {"prompt": "map"}),
        Variant(
            "augment", "+ anatomy-aware augmentation, bank of 8", {"augmentation": "preset", "augmentation_bank": 8}
        ),
        Variant("frozen-upscaling", "+ output upscaling frozen", {"train_upscaling": False}),
        Variant("clean-masks", "+ preset mask clean-up", {"postprocess": PRESET}),
        # only where the preset has test-time flips (Kvasir-SEG); elsewhere it is ``before`` again
        Variant("tta", "+ preset's flip test-time augmentation", {"tta_flips": PRESET}),
        Variant("k-only", "+ exactly k labels (final weights)", {"val_size": 0}),
        Variant("all", "preset as shipped (all changes)", from_preset=True),
        *(
            Variant(f"bank-{n}", f"preset, bank of {n} view{'s' if n > 1 else ''} per image", {"augmentation_bank": n},
                    from_preset=True)  # fmt: skip
            for n in BANK_SIZES
        ),
    )
}


def preset_value(dataset: str, key: str) -> Any:
    """The value of config ``key`` in a data set's preset (``configs/datasets/<dataset>.json`` over ``train.json``)."""
    from bundle.commands import merged_config

    return merged_config([CONFIGS / "train.json", CONFIGS / "datasets" / f"{dataset}.json"])[key]


def preset_bank_size(dataset: str) -> int:
    """The augmentation bank size a data set's preset ships (the ``all`` variant's)."""
    return int(preset_value(dataset, "augmentation_bank"))


def bank_size(variant: str, dataset: str) -> int | None:
    """The bank size of a preset variant (``all`` or ``bank-<n>``); ``None`` for the single changes."""
    if variant == "all":
        return preset_bank_size(dataset)
    return VARIANTS[variant].overrides["augmentation_bank"] if variant.startswith("bank-") else None


def variant_overrides(variant: Variant, dataset: str) -> dict:
    """The overrides of ``variant`` for a data set's preset."""
    if variant.from_preset:
        return dict(variant.overrides)
    out = before_overrides()
    for key, value in variant.overrides.items():
        if key == "postprocess":  # back to the preset's own clean-up
            for raw in RAW_MASKS:
                out.pop(raw)
        elif key == "augmentation" and value == PRESET:
            out[key] = preset_value(dataset, "augmentation")
        elif value == PRESET:  # back to the preset's own value
            out.pop(key)
        else:
            out[key] = value
    return out


def run_variant(variant: Variant, runs: list[Run], base: GridSettings) -> list[tuple[Run, str]]:
    """Execute ``runs`` with ``variant``'s overrides in ``base.root / variant.name``; returns failures."""
    failures = []
    for run in runs:
        settings = GridSettings(
            base.root / variant.name,
            base.dataset_dirs,
            base.iterations,
            base.embedding_cache_dir,
            base.max_test_cases,
            {**base.extra_overrides, **variant_overrides(variant, run.dataset)},
        )
        try:
            execute(run, settings)
        except RuntimeError as err:
            failures.append((run, str(err)))
    return failures


def _metric(run: Run, root: Path, name: str) -> float:
    """A run's mean of a per-case metric from its evaluation (nan if absent or all nan)."""
    path = run.folder(root) / "eval" / f"{name}_raw.csv"
    if not path.is_file():
        return float("nan")
    values = [v for v in per_case(path).values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _finished(root: Path, dataset: str, shots: int, seeds: list[int]) -> list[tuple[Run, RunResult]]:
    """The finished ``blo-sam`` runs of one setting below ``root`` (a variant's folder), with their metrics."""
    found = [(r, load_result(r, root)) for r in (Run(dataset, shots, s, "blo-sam") for s in seeds)]
    return [(r, res) for r, res in found if res is not None]


def _cells(found: list[tuple[Run, RunResult]], root: Path, metrics: tuple[str, ...]) -> list[str]:
    """Mean ± std over runs of each metric: ``dice`` (%), ``hd95`` (px), ``edges`` (token-border share, %),
    ``holes`` (per case), ``train`` (training wall time, s)."""
    columns = {
        "dice": lambda r, res: 100.0 * res.mean_dice,
        "hd95": lambda r, res: float(np.nanmean(list(res.hd95.values()))),
        "edges": lambda r, res: 100.0 * _metric(r, root, "val_token_edges"),
        "holes": lambda r, res: _metric(r, root, "val_holes"),
        "train": lambda r, res: res.seconds.get("training", float("nan")),
    }
    cells = []
    for name in metrics:
        values = [v for v in (columns[name](r, res) for r, res in found) if not math.isnan(v)]
        if not values:
            cells.append("-")
            continue
        mean, std = mean_std(values)
        cells.append(f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}")
    return cells


def ablation_table(root: Path, settings: list[tuple[str, int]], seeds: list[int], variants: list[str]) -> str:
    """Markdown: per setting and single-change variant (and ``all``), Dice, HD95, token-border edge share
    and holes (mean ± std over seeds of the per-run means), the labelled images used, and the training
    wall time. The bank-size variants have their own table (:func:`bank_size_table`)."""
    lines = [
        "| setting | variant | labels | seeds | Dice % | HD95 px | token-border edges % | holes / case | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, shots in settings:
        for name in (v for v in variants if not v.startswith("bank-")):
            variant = VARIANTS[name]
            found = _finished(root / name, dataset, shots, seeds)
            if not found:
                continue
            val = variant_overrides(variant, dataset).get("val_size", 0)
            cells = _cells(found, root / name, ("dice", "hd95", "edges", "holes", "train"))
            labels = f"{shots} + {val} val" if val else f"{shots}"
            lines.append(f"| {dataset} {shots}-shot | {name}: {variant.description} | {labels} | {len(found)} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def _bank_rows(root: Path, dataset: str, shots: int, seeds: list[int]) -> list[tuple[int, str, list]]:
    """(bank size, variant, finished runs) of one setting's preset variants, by bank size, on the seeds
    that every size present has finished (so that sizes are compared on the same support images)."""
    rows = []
    for name in ["all", *(f"bank-{n}" for n in BANK_SIZES)]:
        found = _finished(root / name, dataset, shots, seeds)
        if found:
            rows.append((bank_size(name, dataset), name, found))
    common = set.intersection(*({r.seed for r, _ in found} for _, _, found in rows)) if rows else set()
    rows = [(size, name, [(r, res) for r, res in found if r.seed in common]) for size, name, found in rows]
    return sorted((row for row in rows if row[2]), key=lambda row: row[0])


def bank_size_table(root: Path, settings: list[tuple[str, int]], seeds: list[int]) -> str:
    """Markdown: the preset with banks of 1 to 16 augmented views per image (``all`` is the preset's own):
    Dice, HD95, training time, and the encoder passes the bank costs (k x bank size, each view once),
    on the seeds every size has run."""
    lines = [
        "| setting | bank size (views per image) | training encoder passes | seeds | Dice % | HD95 px | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, shots in settings:
        for size, name, found in _bank_rows(root, dataset, shots, seeds):
            cells = _cells(found, root / name, ("dice", "hd95", "train"))
            preset = " (preset)" if name == "all" else ""
            lines.append(f"| {dataset} {shots}-shot | {size}{preset} | {shots * size} | {len(found)} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def bank_size_figure(root: Path, settings: list[tuple[str, int]], seeds: list[int], path: Path) -> Path | None:
    """Dice (mean ± std over seeds) against bank size, one line per setting; ``None`` if nothing has run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    drawn = False
    for dataset, shots in settings:
        rows = _bank_rows(root, dataset, shots, seeds)
        if len(rows) < 2:
            continue
        stats = [mean_std([100.0 * res.mean_dice for _, res in found]) for _, _, found in rows]
        ax.errorbar([size for size, _, _ in rows], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=3, label=f"{dataset} {shots}-shot")  # fmt: skip
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    ax.set_xlabel("augmented views per labelled image (bank size)")
    ax.set_ylabel("Dice % (test, original resolution)")
    ax.set_title("Dice against augmentation bank size (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""The accuracy ablation: each change of the k-shot work switched on alone, from the previous default.

``before`` reproduces the bundle before these changes (encoder shown transposed images, both flips
drawn afresh, the paper's dense prompt vector, output upscaling trained at the base lr, raw masks,
10 extra labelled images to pick the best iteration). Every other variant changes exactly one thing
from ``before``; ``all`` is the data set's preset as shipped (all changes on). A variant is a set of
command-line overrides given to both the training and the evaluation command of a grid run, so its
runs are ordinary grid runs in their own folder (``<out>/<variant>/...``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bundle.experiments.grid import GridSettings, Run, execute
from bundle.experiments.summary import load_result, mean_std, per_case

PRESET_AUGMENTATION = {"jsrt": "radiograph", "kvasir": "endoscopy", "dental": "radiograph"}
RAW_MASKS = {"postprocess_fill_holes": False, "postprocess_components": 0, "postprocess_min_size": 0.0}


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
            "train_upscaling": True, "val_size": 10, **RAW_MASKS}  # fmt: skip


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
        Variant("clean-masks", "+ preset mask clean-up", {"postprocess": "preset"}),
        Variant("k-only", "+ exactly k labels (final weights)", {"val_size": 0}),
        Variant("all", "preset as shipped (all changes)", from_preset=True),
    )
}


def variant_overrides(variant: Variant, dataset: str) -> dict:
    """The overrides of ``variant`` for a data set's preset."""
    if variant.from_preset:
        return dict(variant.overrides)
    out = before_overrides()
    for key, value in variant.overrides.items():
        if key == "postprocess":  # back to the preset's own clean-up
            for raw in RAW_MASKS:
                out.pop(raw)
        elif key == "augmentation" and value == "preset":
            out[key] = PRESET_AUGMENTATION[dataset]
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


def ablation_table(root: Path, settings: list[tuple[str, int]], seeds: list[int], variants: list[str]) -> str:
    """Markdown: per setting and variant, Dice, HD95, token-border edge share and holes (mean ± std
    over seeds of the per-run means), the labelled images used, and the training wall time."""
    lines = [
        "| setting | variant | labels | seeds | Dice % | HD95 px | token-border edges % | holes / case | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, shots in settings:
        for name in variants:
            variant = VARIANTS[name]
            vroot = root / name
            found = [(r, load_result(r, vroot)) for r in (Run(dataset, shots, s, "blo-sam") for s in seeds)]
            found = [(r, res) for r, res in found if res is not None]
            if not found:
                continue
            val = variant_overrides(variant, dataset).get("val_size", 0)
            cells = []
            for values, scale in (
                ([res.mean_dice for _, res in found], 100.0),
                ([float(np.nanmean(list(res.hd95.values()))) for _, res in found], 1.0),
                ([_metric(r, vroot, "val_token_edges") for r, _ in found], 100.0),
                ([_metric(r, vroot, "val_holes") for r, _ in found], 1.0),
                ([res.seconds.get("training", float("nan")) for _, res in found], 1.0),
            ):
                values = [v * scale for v in values if not math.isnan(v)]
                if not values:
                    cells.append("-")
                    continue
                mean, std = mean_std(values)
                cells.append(f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}")
            labels = f"{shots} + {val} val" if val else f"{shots}"
            lines.append(f"| {dataset} {shots}-shot | {name}: {variant.description} | {labels} | {len(found)} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)

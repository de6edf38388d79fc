"""The accuracy ablation's variants, tables and bank-size figure, on synthetic run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bundle.commands import merged_config
from bundle.experiments.ablation import (
    BANK_SIZES,
    RAW_MASKS,
    VARIANTS,
    ablation_table,
    bank_size,
    bank_size_figure,
    bank_size_table,
    before_overrides,
    preset_bank_size,
    variant_overrides,
)
from bundle.experiments.grid import CONFIGS, Run


def _fake_run(root: Path, dataset: str, shots: int, seed: int, dice: float, hd: float, train_s: float) -> None:
    folder = Run(dataset, shots, seed, "blo-sam").folder(root)
    (folder / "eval").mkdir(parents=True)
    for name, value in (("val_mean_dice", dice), ("val_hd95", hd), ("val_token_edges", 0.1), ("val_holes", 2.0)):
        with open(folder / "eval" / f"{name}_raw.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "class0", "mean"])
            w.writerows([[f"case{i}.png", value, value] for i in range(3)])
    (folder / "done.json").write_text(json.dumps({"training_seconds": train_s, "evaluating_seconds": 5.0}))


def test_each_single_change_differs_from_before_in_exactly_its_own_keys():
    before = before_overrides()
    for name, variant in VARIANTS.items():
        if variant.from_preset or name == "before":
            continue
        changed = {k for k in set(before) | set(variant_overrides(variant, "jsrt")) if
                   before.get(k, "unset") != variant_overrides(variant, "jsrt").get(k, "unset")}  # fmt: skip
        expected = set(RAW_MASKS) if name == "clean-masks" else set(variant.overrides)
        assert changed == expected, name
    assert variant_overrides(VARIANTS["augment"], "kvasir")["augmentation"] == "endoscopy_zoomlarge"
    assert variant_overrides(VARIANTS["all"], "jsrt") == {}
    assert before["tta_flips"] == [] and "tta_flips" not in variant_overrides(VARIANTS["tta"], "kvasir")


def test_raw_masks_switch_off_every_clean_up_key_of_the_bundle():
    config = merged_config([CONFIGS / "train.json"])
    assert {k for k in config if k.startswith("postprocess_")} == set(RAW_MASKS)


def test_bank_variants_are_the_preset_with_another_bank_size():
    assert preset_bank_size("jsrt") == 8 and bank_size("all", "jsrt") == 8
    for n in BANK_SIZES:
        assert variant_overrides(VARIANTS[f"bank-{n}"], "kvasir") == {"augmentation_bank": n}
        assert bank_size(f"bank-{n}", "kvasir") == n
    assert bank_size("upright", "jsrt") is None


def test_tables_keep_single_changes_and_bank_sizes_apart(tmp_path):
    for seed, (dice, hd) in enumerate([(0.90, 20.0), (0.94, 10.0)]):
        _fake_run(tmp_path / "before", "jsrt", 2, seed, dice, hd, 100.0)
        _fake_run(tmp_path / "all", "jsrt", 2, seed, dice + 0.04, hd / 2, 200.0)
    _fake_run(tmp_path / "bank-2", "jsrt", 2, 0, 0.91, 12.0, 150.0)
    table = ablation_table(tmp_path, [("jsrt", 2)], [0, 1, 2], ["before", "all", "bank-2"])
    rows = table.splitlines()[2:]
    assert len(rows) == 2  # bank-2 has its own table
    assert rows[0].startswith("| jsrt 2-shot | before: ") and "| 2 + 10 val | 2 | 92.0 ± 2.8 | 15.0 ± 7.1 |" in rows[0]
    assert "| 2 | 2 | 96.0 ± 2.8 | 7.5 ± 3.5 | 10.0 ± 0.0 | 2.0 ± 0.0 | 200.0 ± 0.0 |" in rows[1]
    bank = bank_size_table(tmp_path, [("jsrt", 2)], [0, 1, 2]).splitlines()[2:]
    assert bank == [
        "| jsrt 2-shot | 2 | 4 | 1 | 91.0 | 12.0 | 150.0 |",
        "| jsrt 2-shot | 8 (preset) | 16 | 1 | 94.0 | 10.0 | 200.0 |",  # seed 0 only: the seeds all sizes ran
    ]


def test_bank_size_figure_needs_two_sizes(tmp_path):
    path = tmp_path / "fig" / "bank_size.png"
    _fake_run(tmp_path / "all", "jsrt", 2, 0, 0.95, 8.0, 200.0)
    assert bank_size_figure(tmp_path, [("jsrt", 2)], [0], path) is None and not path.exists()
    _fake_run(tmp_path / "bank-1", "jsrt", 2, 0, 0.90, 12.0, 100.0)
    assert bank_size_figure(tmp_path, [("jsrt", 2)], [0], path) == path and path.stat().st_size > 0


@pytest.mark.parametrize("name", ["bank-1", "bank-16"])
def test_bank_variant_descriptions_name_their_size(name):
    assert name.split("-")[1] in VARIANTS[name].description

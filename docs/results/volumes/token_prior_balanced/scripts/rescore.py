"""Rescore one BTCV test run's token pass at the adopted --token_prior_balance (bundle 0.8): rebuild the run's
token bank in format 3 from the training's own config and overrides (the development check's rebuild_bank, which
also compares it with the bank training wrote; a bank given as the third argument is copied instead, unchecked
here: the development check that rebuilt it made that comparison), then rerun the run's token pass (its
command.json entry, the same overrides) on all of its test volumes with that bank and the given gamma, and score
it. For runs with one model for all structures (not blo-sam-per-organ).

    PYTHONPATH=. python rescore.py <run folder> <gamma> [<existing format-3 bank of this run>]

Writes into the run folder: bank_v3/token_bank.pt, pred_tokens_g<gamma>/ (the masks), pred_tokens_g<gamma>.log,
.usage and _scores.json.
"""

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from bundle.commands import bundle_args, run_bundle
from bundle.experiments.volumes import VOLUME_DATASETS, score_folder

PROJECT = Path(__file__).resolve().parents[5]
DEV = PROJECT / "docs/results/volumes/dev/btcv_4shot_seed0_bank_balance/scripts/dev.py"


def main() -> None:
    run, gamma = Path(sys.argv[1]), float(sys.argv[2])
    spec = importlib.util.spec_from_file_location("dev", DEV)
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    bank = run / "bank_v3" / "token_bank.pt"
    if len(sys.argv) > 3 and not bank.is_file():
        bank.parent.mkdir(exist_ok=True)
        shutil.copy2(sys.argv[3], bank)  # rebuilt by the development check from this run's own training config
        print(f"bank copied from {sys.argv[3]}")
    dev.rebuild_bank(run, bank)
    tokens = json.loads((run / "command.json").read_text())["pred_tokens"]
    images = Path(tokens["overrides"]["input_dir"])
    ids = sorted(p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz"))
    stage = f"pred_tokens_g{gamma:g}"
    overrides = {**tokens["overrides"], "output_dir": str(run / stage)}
    overrides.update(token_prior_file=str(bank), token_prior_balance=gamma)
    start = time.time()
    with open(run / f"{stage}.log", "a") as log:
        run_bundle(bundle_args("run", dev.here(tokens["files"]), overrides), str(PROJECT), log=log,
                   usage=run / f"{stage}.usage")  # fmt: skip
    items = [{"id": i, "label": str(images.parent / "labels" / f"{i}.nii.gz")} for i in ids]
    data = VOLUME_DATASETS["btcv"]
    scores = score_folder(run / stage, items, data.structures, run / f"{stage}_scores.json")
    dice = {name: round(100 * value, 1) for name, value in scores["mean_dice"].items()}
    print(f"{run} gamma {gamma:g}: {dice}, mean {100 * scores['mean_dice_all']:.1f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()

"""The bank-balance development check (../rules.md) for one run: rebuild the run's token bank with the current
code (bundle 0.8 stores each token's stratum and the stratum counts) from the training's own config and
overrides, check it holds the tokens the run's training wrote, then run the run's token pass (its command.json
entry, the same overrides) on its development volumes at each gamma (--token_prior_balance) and score it.

    python dev.py <run folder> <work folder> <gamma> [<gamma> ...]

The development volumes are the pool volumes outside the run's support (rules.md), cut along z as the runner
cuts the test volumes.
"""

import json
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from bundle.commands import bundle_args, run_bundle
from bundle.data.volumes import decathlon_datalist
from bundle.experiments.volumes import VOLUME_DATASETS, VolumeRun, score_folder, support_ids, test_items

PROJECT = Path(__file__).resolve().parents[6]


def here(files: list[str]) -> list[str]:
    """The run's config files (absolute paths of the checkout that ran it) in this checkout."""
    return [str(PROJECT.joinpath(*Path(f).parts[Path(f).parts.index("configs") :])) for f in files]


def rebuild_bank(run: Path, out: Path) -> None:
    """The run's bank rebuilt with the current code, compared with the bank its training wrote."""
    if out.is_file():
        return
    command = json.loads((run / "command.json").read_text())["training"]
    parser = ConfigParser()
    parser.read_config(here(command["files"]))
    parser.update(command["overrides"])
    slicing = parser.get_parsed_content("volume_slicing")
    volumes = parser.get_parsed_content("train#dataset#data")
    network = parser.get_parsed_content("network")
    start = time.time()
    slicing.write_token_bank(volumes, network, out)
    print(f"bank of {[Path(v['image']).name for v in volumes]} rebuilt in {time.time() - start:.0f} s")
    new, old = torch.load(out, weights_only=True), torch.load(run / "models" / "token_bank.pt", weights_only=True)
    for key in old:
        same = torch.equal(old[key], new[key]) if isinstance(old[key], torch.Tensor) else old[key] == new[key]
        print(f"  {key}: {'identical' if same else 'DIFFERENT'} to the bank training wrote")
    print(f"  stratum counts {new['stratum_counts'].tolist()}, kept {torch.bincount(new['strata'].long()).tolist()}")


def main() -> None:
    run, work, gammas = Path(sys.argv[1]), Path(sys.argv[2]), [float(g) for g in sys.argv[3:]]
    command = json.loads((run / "command.json").read_text())
    training = command["training"]["overrides"]
    data = VOLUME_DATASETS["btcv"]
    support = sorted(
        support_ids(VolumeRun("btcv", int(training["shots"]), int(training["seed"])), training["dataset_dir"])
    )
    pool = [str(item["id"]) for item in decathlon_datalist(training["dataset_dir"])[: -data.test_size]]
    dev_ids = [i for i in pool if i not in support]  # the pool: what the test split leaves (btcv_sabs_00..09)
    print(f"{run}: support {support}, development volumes {dev_ids}")
    items = test_items(data, training["dataset_dir"], work, dev_ids)
    inputs = Path(items[0]["image"]).parent
    bank = work / "bank" / "token_bank.pt"
    rebuild_bank(run, bank)
    tokens = command["pred_tokens"]
    for gamma in gammas:
        out = work / f"gamma_{gamma:g}"
        overrides = {**tokens["overrides"], "input_dir": str(inputs), "output_dir": str(out)}
        overrides.update(token_prior_file=str(bank), token_prior_balance=gamma)
        start = time.time()
        with open(work / f"gamma_{gamma:g}.log", "a") as log:
            run_bundle(bundle_args("run", here(tokens["files"]), overrides), str(PROJECT), log=log,
                       usage=work / f"gamma_{gamma:g}.usage")  # fmt: skip
        scores = score_folder(out, items, data.structures, work / f"gamma_{gamma:g}_scores.json")
        dice = {name: round(100 * value, 1) for name, value in scores["mean_dice"].items()}
        print(f"gamma {gamma:g}: {dice}, mean {100 * scores['mean_dice_all']:.1f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()

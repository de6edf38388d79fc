"""Lay out the z-gate check's inputs (rules.md, addendum) for zgate.py: for each token-prior balance, a folder
``<work>/gamma_<g>/`` holding ``pred/`` (the plain pass of the run's model on the development volumes, run once
here with the run's own command.json entry) and ``pred_tokens/`` (the bank-balance check's token-pass output of
that model on the same volumes, linked), each with its scores.

    PYTHONPATH=. python zgate_inputs.py <run folder> <bank-balance work folder> <work folder> <gamma> [<gamma> ...]
"""

import json
import shutil
import sys
from pathlib import Path

from bundle.commands import bundle_args, run_bundle
from bundle.experiments.volumes import VOLUME_DATASETS, score_folder

PROJECT = Path(__file__).resolve().parents[5]


def main() -> None:
    run, balance_work, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    gammas = [float(g) for g in sys.argv[4:]]
    (volumes,) = (balance_work / "btcv").glob("dev-*")  # the cut development volumes the token passes scored
    ids = sorted(p.name[: -len(".nii.gz")] for p in (volumes / "images").glob("*.nii.gz"))
    items = [{"id": i, "label": str(volumes / "labels" / f"{i}.nii.gz")} for i in ids]
    structures = VOLUME_DATASETS["btcv"].structures
    plain = work / "pred"
    if not (work / "pred_scores.json").is_file():
        command = json.loads((run / "command.json").read_text())["pred"]
        files = [str(PROJECT / "configs" / Path(f).name) for f in command["files"]]
        overrides = {**command["overrides"], "input_dir": str(volumes / "images"), "output_dir": str(plain)}
        work.mkdir(parents=True, exist_ok=True)
        with open(work / "pred.log", "a") as log:
            run_bundle(bundle_args("run", files, overrides), str(PROJECT), log=log, usage=work / "pred.usage")
        score_folder(plain, items, structures, work / "pred_scores.json")
    for gamma in gammas:
        out = work / f"gamma_{gamma:g}"
        out.mkdir(exist_ok=True)
        for name, source in (("pred", plain), ("pred_tokens", balance_work / f"gamma_{gamma:g}")):
            if not (out / name).is_symlink():
                (out / name).symlink_to(source.resolve())
        shutil.copy2(work / "pred_scores.json", out / "pred_scores.json")
        shutil.copy2(balance_work / f"gamma_{gamma:g}_scores.json", out / "pred_tokens_scores.json")
        print(out, "ready for zgate.py with", volumes)


if __name__ == "__main__":
    main()

"""Gate the token prior's output along z by the plain pass of the same model, offline, and score each gate.

Usage: python zgate.py <run folder> <cut volume folder>, the runner's ``<out>/btcv/1shot/seed0/blo-sam`` (with its
``pred`` and ``pred_tokens`` outputs) and the folder holding the scored volumes' ``labels/``. For each class c the
plain prediction holds, voxels of c in the token-prior prediction on slices (axis 2, foot to head) more than
``margin`` mm beyond the plain prediction's z-extent of c become background; each class then keeps its largest
connected component again (MONAI's KeepLargestConnectedComponent, as the bundle's post-processing). A class the
plain pass does not predict is not gated. Gated outputs go to ``<run>/pred_tokens_zgate_<classes>_<margin>mm/``,
scores to ``<run>/pred_tokens_zgate_<classes>_<margin>mm_scores.json``; a table of all variants is printed.

This approximates, on the post-processed label maps, a gate built into the inference (where a gated class's logit
would be floored and the next class could win); it is for choosing whether to build it (rules.md).
"""

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent

sys.path.insert(0, str(Path(__file__).resolve().parents[5]))  # the project root, for bundle.*
from bundle.experiments.volumes import VOLUME_DATASETS, load_score, score_folder  # noqa: E402

MARGINS_MM = (0, 10, 20)
GATED = {"all": (1, 2, 3, 4), "liver": (1,)}  # class values: liver 1, spleen 2, left kidney 3, right kidney 4


def gate(plain: np.ndarray, voted: np.ndarray, classes: tuple[int, ...], margin_slices: int) -> np.ndarray:
    """``voted`` with each class in ``classes`` cut to the plain prediction's z-extent of it, +- ``margin_slices``."""
    out = voted.copy()
    for c in classes:
        z = np.nonzero((plain == c).any(axis=(0, 1)))[0]
        if len(z) == 0:
            continue
        outside = np.ones(plain.shape[2], bool)
        outside[max(z.min() - margin_slices, 0) : z.max() + margin_slices + 1] = False
        out[:, :, outside] = np.where(out[:, :, outside] == c, 0, out[:, :, outside])
    largest = KeepLargestConnectedComponent(applied_labels=list(classes), is_onehot=False)
    return np.asarray(largest(torch.from_numpy(out[None].astype(np.int64)))[0]).astype(voted.dtype)


def main(run: Path, volumes: Path) -> None:
    structures = VOLUME_DATASETS["btcv"].structures
    ids = sorted(p.name[: -len(".nii.gz")] for p in (run / "pred_tokens").glob("*.nii.gz"))
    items = [{"id": i, "label": str(volumes / "labels" / f"{i}.nii.gz")} for i in ids]
    rows = {name: load_score(run / f"{name}_scores.json") for name in ("pred", "pred_tokens")}  # the runner's
    for classes, values in GATED.items():
        for margin in MARGINS_MM:
            variant = f"pred_tokens_zgate_{classes}_{margin}mm"
            out = run / variant
            out.mkdir(exist_ok=True)
            for i in ids:
                plain_img = nib.load(run / "pred" / f"{i}.nii.gz")
                voted_img = nib.load(run / "pred_tokens" / f"{i}.nii.gz")
                slices = math.ceil(margin / float(voted_img.header.get_zooms()[2]))
                gated = gate(np.asarray(plain_img.dataobj), np.asarray(voted_img.dataobj), values, slices)
                nib.save(nib.Nifti1Image(gated, voted_img.affine, voted_img.header), out / f"{i}.nii.gz")
            rows[variant] = score_folder(out, items, structures, run / f"{variant}_scores.json")
    print("| variant | " + " | ".join(f"{s} Dice (HD95 mm)" for s in structures) + " | mean |")
    print("|---" * (len(structures) + 2) + "|")
    for name, scores in rows.items():
        cells = [f"{100 * scores['mean_dice'][s]:.1f} ({scores['mean_hd95_mm'][s]:.1f})" for s in structures]
        print(f"| {name} | " + " | ".join(cells) + f" | {100 * scores['mean_dice_all']:.1f} |")
    summary = {k: {"mean_dice": v["mean_dice"], "mean_hd95_mm": v["mean_hd95_mm"]} for k, v in rows.items()}
    (run / "zgate_summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Where the token prior's liver false positives lie, per test volume, against the plain pass of the same model.

Usage: python liver_fp.py <run folder> <cut test folder> (the runner's <out>/btcv/1shot/seed<s>/blo-sam and
<out>/btcv/test). Per volume and pass: false-positive liver (mL), the share of it more than 10 and 30 mm from
the true liver, the part on slices above (cranial to) the liver's top slice and below its bottom slice, and
the labelled structures it covers (stomach, IVC, ...; "bg" is unlabelled tissue); the totals over volumes last.
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

NAMES = {0: "bg", 1: "spleen", 2: "RK", 3: "LK", 4: "gallbladder", 5: "oesophagus", 7: "stomach", 8: "aorta",
         9: "IVC", 10: "veins", 11: "pancreas", 12: "RAG", 13: "LAG"}  # fmt: skip
LIVER = 6

run, test = Path(sys.argv[1]), Path(sys.argv[2])
totals: dict[str, dict[str, float]] = {}
for path in sorted((run / "pred_tokens").glob("*.nii.gz")):
    case = path.name[: -len(".nii.gz")]
    image = nib.load(test / "labels" / path.name)
    label = np.asarray(image.dataobj).astype(int)
    spacing = image.header.get_zooms()[:3]
    ml = float(np.prod(spacing)) / 1000
    true = label == LIVER
    distance = ndimage.distance_transform_edt(~true, sampling=spacing)
    z = np.nonzero(true.any(axis=(0, 1)))[0]  # axis 2 runs foot to head (LPS after the runner's cut)
    line = [case]
    for name in ("pred", "pred_tokens"):
        fp = (np.asarray(nib.load(run / name / path.name).dataobj) == 1) & ~true
        zs = np.nonzero(fp)[2]
        row = {"fp": fp.sum() * ml, ">10mm": fp[distance > 10].sum() * ml, ">30mm": fp[distance > 30].sum() * ml,
               "above": (zs > z.max()).sum() * ml, "below": (zs < z.min()).sum() * ml}  # fmt: skip
        row.update({NAMES[k]: c * ml for k, c in enumerate(np.bincount(label[fp], minlength=14)) if k != LIVER})
        for key, value in row.items():
            totals.setdefault(name, {}).setdefault(key, 0.0)
            totals[name][key] += value
        line.append(f"{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items() if v >= 5))
    print(" | ".join(line), flush=True)
for name, row in totals.items():
    print(f"total {name} (mL over {len(list((run / 'pred_tokens').glob('*.nii.gz')))} volumes): "
          + ", ".join(f"{k} {v:.0f}" for k, v in row.items() if v >= 5))  # fmt: skip

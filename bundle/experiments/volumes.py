"""The volumetric few-shot experiment: test volumes, scoring in 3D at each volume's spacing, size priors.

A run trains with the bundle's own volume command (``configs/train.json`` + ``configs/datasets/decathlon.json``)
and segments the test volumes with its own volume inference (``configs/inference.json`` +
``configs/volumes.json``); this module prepares the test folder and scores the written NIfTI files
against the label maps: 3D Dice and HD95 (mm) per structure, with MONAI's metrics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from bundle.atomic import atomic_path, write_json_atomically


def crop_to_structures(
    items: Sequence[dict], out_dir: str | os.PathLike, values: Sequence[int], margin: int = 5
) -> list[dict]:
    """Copies of the test volumes (and labels) cut along the slice axis (the last) to the slices holding
    any of ``values``, plus ``margin`` slices on each side; affines follow the cut (nibabel's slicer).

    The few-shot CT protocols score only the slices around the organs; cutting the volumes before
    inference does the same with the bundle's own command and keeps the encoder's work bounded.
    Written once (kept when present).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    cropped = []
    for item in items:
        name = str(item["id"])
        image_path, label_path = out / "images" / f"{name}.nii.gz", out / "labels" / f"{name}.nii.gz"
        record = out / f"{name}.json"
        if not record.is_file():
            label = nib.load(item["label"])
            data = np.asarray(label.dataobj)
            slices = np.where(np.isin(np.rint(data), list(values)).any(axis=(0, 1)))[0]
            z0 = max(int(slices.min()) - margin, 0)
            z1 = min(int(slices.max()) + margin + 1, data.shape[2])
            for src, dst in ((item["image"], image_path), (item["label"], label_path)):
                with atomic_path(dst, suffix=".nii.gz") as tmp:
                    nib.save(nib.load(src).slicer[:, :, z0:z1], tmp)
            write_json_atomically({"id": name, "slices": [z0, z1], "depth": int(data.shape[2])}, record)
        cropped.append({"image": str(image_path), "label": str(label_path), "id": name})
    return cropped


def score_volume(
    pred_path: str | os.PathLike, label_path: str | os.PathLike, structures: Mapping[str, int]
) -> dict[str, dict[str, float]]:
    """3D Dice and HD95 (mm, at the label's spacing) of each structure; the prediction holds classes
    1..C in the order of ``structures``, the label map the structures' own values."""
    pred_img, label_img = nib.load(pred_path), nib.load(label_path)
    if pred_img.shape != label_img.shape or not np.allclose(pred_img.affine, label_img.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: not on the grid of {label_path} ({pred_img.shape} vs {label_img.shape})")
    pred = np.rint(np.asarray(pred_img.dataobj)).astype(np.int64)
    label = np.rint(np.asarray(label_img.dataobj)).astype(np.int64)
    spacing = [float(s) for s in label_img.header.get_zooms()[:3]]
    scores = {}
    for cls, (name, value) in enumerate(structures.items(), start=1):
        p = torch.from_numpy(pred == cls)[None, None].float()
        g = torch.from_numpy(label == int(value))[None, None].float()
        dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
        hd95 = float("nan")
        if p.any() and g.any():
            hd95 = float(
                compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)[0, 0]
            )
        scores[name] = {
            "dice": dice,
            "hd95_mm": hd95,
            "pred_ml": float(p.sum()) * float(np.prod(spacing)) / 1000,
            "true_ml": float(g.sum()) * float(np.prod(spacing)) / 1000,
        }
    return scores


def score_folder(
    pred_dir: str | os.PathLike, items: Sequence[dict], structures: Mapping[str, int], out_file: str | os.PathLike
) -> dict:
    """Score every test volume's prediction ``pred_dir/<id>.nii.gz``; write and return the per-case table."""
    cases = {str(i["id"]): score_volume(Path(pred_dir) / f"{i['id']}.nii.gz", i["label"], structures) for i in items}
    names = list(structures)
    mean = {n: float(np.mean([c[n]["dice"] for c in cases.values()])) for n in names}
    result = {
        "structures": dict(structures),
        "cases": cases,
        "mean_dice": mean,
        "mean_dice_all": float(np.mean(list(mean.values()))),
        "mean_hd95_mm": {n: float(np.nanmean([c[n]["hd95_mm"] for c in cases.values()])) for n in names},
    }
    write_json_atomically(result, out_file)
    return result


def load_score(path: str | os.PathLike) -> dict:
    """A scored run (``score_folder``'s file)."""
    return json.loads(Path(path).read_text())

"""Segment a folder of volumes (NIfTI files, DICOM series folders) with the bundle's volume command and
show, for each input, the geometry read back from what was written next to the input's own.

    python scripts/volume_roundtrip.py --input_dir IN --output_dir OUT --ckpt models/model.pt --modality ct \\
        [--set ct_window=[75,400] class_names=['liver','spleen']]

Input geometry is read independently of the bundle's reader: SimpleITK's for DICOM series and NIfTI (its
LPS world turned into RAS), compared with the written NIfTI's (nibabel): shape, spacing, the voxel-to-world
affine, and the labels present; for a DICOM series, the DICOM-SEG's segments are read back with highdicom
and compared with the NIfTI's labels on every source slice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.commands import bundle_args, exit_on_sigterm, run_bundle  # noqa: E402
from bundle.data.volumes import volume_datalist  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]


def itk_geometry(path: str) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Shape, spacing and the RAS voxel-to-world affine of a volume as SimpleITK reads it."""
    if Path(path).is_dir():
        image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path))
    else:
        image = sitk.ReadImage(path)
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction @ np.diag(spacing)
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(image.GetOrigin())
    return tuple(image.GetSize()), spacing, affine


def corner_points(shape: tuple[int, ...], affine: np.ndarray) -> set[tuple[float, ...]]:
    """World coordinates (mm, rounded) of a grid's eight corner voxel centres."""
    corners = [
        np.array([i, j, k, 1.0]) for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)
    ]
    return {tuple(np.round(affine @ c, 3)[:3]) for c in corners}


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether two grids cover the same voxel centres (up to the order of the slices along each axis)."""
    return sorted(shape_a) == sorted(shape_b) and corner_points(shape_a, affine_a) == corner_points(shape_b, affine_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--modality", default="ct", choices=["ct", "mr"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides (value as JSON)")
    args = parser.parse_args()
    exit_on_sigterm()  # a stopped runner stops its bundle command too
    overrides = {
        "input_dir": args.input_dir,
        "output_dir": args.output_dir,
        "ckpt": args.ckpt,
        "modality": args.modality,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    files = [str(PROJECT / "configs" / "inference.json"), str(PROJECT / "configs" / "volumes.json")]
    run_bundle(bundle_args("run", files, overrides), PROJECT)
    rows = []
    for item in volume_datalist(args.input_dir):
        shape, spacing, affine = itk_geometry(item["image"])
        written = nib.load(Path(args.output_dir) / f"{item['id']}.nii.gz")
        labels = np.asarray(written.dataobj)
        row = {
            "input": Path(item["image"]).name + ("/ (DICOM series)" if Path(item["image"]).is_dir() else ""),
            "input shape (SimpleITK)": shape,
            "input spacing": [round(float(s), 4) for s in spacing],
            "output shape": written.shape,
            "output spacing": [round(float(s), 4) for s in written.header.get_zooms()[:3]],
            "same voxel centres": same_grid(shape, affine, written.shape, written.affine),
            "output affine": np.round(written.affine, 3).tolist(),
            "labels (voxels)": {int(v): int((labels == v).sum()) for v in np.unique(labels)},
        }
        seg_path = Path(args.output_dir) / f"{item['id']}_seg.dcm"
        if seg_path.is_file():
            import highdicom as hd

            from bundle.dicom_seg import labels_on_series, read_series

            seg = hd.seg.segread(str(seg_path))
            datasets = read_series(item["image"])
            frames = labels_on_series(labels, written.affine, datasets)
            agree = []
            for d in seg.SegmentSequence:
                stored = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=[x.SOPInstanceUID for x in datasets],
                    segment_numbers=[d.SegmentNumber],
                    assert_missing_frames_are_empty=True,
                )[..., 0]
                agree.append(
                    f"{d.SegmentLabel}: {int(stored.sum())} px, equal {bool(np.array_equal(stored > 0, frames == d.SegmentNumber))}"
                )
            row["DICOM-SEG"] = f"{seg_path.name}, {len(datasets)} source slices; " + "; ".join(agree)
        rows.append(row)
    for row in rows:
        print("\n".join(f"{k}: {v}" for k, v in row.items()), end="\n\n")


if __name__ == "__main__":
    main()

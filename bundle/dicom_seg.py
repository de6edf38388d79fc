"""DICOM-SEG output for a DICOM series input, written with highdicom and verified by reading it back.

A label volume on the grid MONAI read the series onto (its affine in RAS world coordinates) is mapped
onto each source slice through world coordinates: every pixel of every DICOM slice is located in the
patient (Image Position / Orientation, Pixel Spacing, in LPS) and looked up in the label volume. This
holds whatever order or orientation the reader gave the array. highdicom (maintained, offline) builds
the Segmentation instance: one segment per class, referencing the source images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from bundle.atomic import atomic_path
from bundle.errors import BundleInputError

logger = logging.getLogger(__name__)
DICOM_SEG_SUFFIX = "_seg.dcm"


def read_series(folder: str | os.PathLike) -> list[pydicom.Dataset]:
    """The DICOM images of a series folder, sorted along their normal (first slice first)."""
    datasets = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            try:
                datasets.append(pydicom.dcmread(path))
            except pydicom.errors.InvalidDicomError:
                continue
    if not datasets:
        raise BundleInputError(f"{folder}: no DICOM files")
    complete_identifiers(datasets, folder)
    normal = np.cross(*np.asarray(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(datasets, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))


def complete_identifiers(datasets: Sequence[pydicom.Dataset], folder: str | os.PathLike) -> None:
    """Fill empty SOP Class / Instance UIDs from each file's meta header (the standard makes them equal),
    and empty Study / Series Instance UIDs with UIDs derived from the folder (logged): an anonymiser that
    blanked them leaves a series a DICOM-SEG could not reference. Only the copies in memory change."""
    from pydicom.uid import generate_uid

    made = []
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        for key in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(key):
                setattr(ds, key, generate_uid(entropy_srcs=[str(Path(folder).resolve()), key]))
                made.append(key)
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if not ds.get(k)]
        if missing:
            raise BundleInputError(f"{ds.filename}: no {' or '.join(missing)}; a DICOM-SEG cannot reference it")
    if made:
        logger.warning(
            f"{folder}: empty {', '.join(sorted(set(made)))} (an anonymised series?); the DICOM-SEG references "
            "UIDs derived from the folder instead"
        )


def _pixel_indices(ds: pydicom.Dataset, affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voxel indices (i, j, k) of the label volume at every pixel (row, column) of one DICOM slice."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
    d_row, d_col = (float(v) for v in ds.PixelSpacing)  # spacing between rows, between columns
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = (
        np.asarray(ds.ImagePositionPatient, dtype=float)
        + c[..., None] * d_col * row_dir
        + r[..., None] * d_row * col_dir
    )
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = (np.linalg.inv(affine) @ np.concatenate([ras, np.ones((*ras.shape[:2], 1))], axis=-1)[..., None])[..., :3, 0]
    return tuple(np.rint(ijk[..., a]).astype(int) for a in range(3))


def labels_on_series(labels: np.ndarray, affine: np.ndarray, datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The label volume (X x Y x Z, on ``affine``) as frames of the source slices: slices x rows x columns."""
    frames = []
    for ds in datasets:
        i, j, k = _pixel_indices(ds, affine)
        inside = (i >= 0) & (j >= 0) & (k >= 0) & (i < labels.shape[0]) & (j < labels.shape[1]) & (k < labels.shape[2])
        if not inside.all():
            raise BundleInputError(f"{ds.filename}: the slice lies outside the segmented volume's grid")
        frames.append(labels[i, j, k])
    return np.stack(frames).astype(np.uint8)


def write_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    series: str | os.PathLike,
    path: str | os.PathLike,
    class_names: Sequence[str],
    version: str = "",
) -> Path:
    """Write the classes 1..C of ``labels`` as a DICOM-SEG of the series in ``series`` (atomically), read it
    back and check that every segment covers the same pixels of the same source slices."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = read_series(series)
    frames = labels_on_series(labels, affine, datasets)
    count = max(int(labels.max()), len(class_names))
    names = [str(n) for n in class_names] + [f"class {c}" for c in range(len(class_names) + 1, count + 1)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="BLO-SAM", version=version or "unknown", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=c,
            segment_label=names[c - 1],
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for c in range(1, count + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="blo-sam-bundle",
        manufacturer_model_name="BLO-SAM",
        software_versions=version or "unknown",
        device_serial_number="0",
        omit_empty_frames=False,
    )
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
        check_dicom_seg(tmp, datasets, frames, count)
    return path


def check_dicom_seg(
    path: str | os.PathLike, datasets: Sequence[pydicom.Dataset], frames: np.ndarray, count: int
) -> None:
    """Read a written DICOM-SEG back: each segment's pixels on each source slice must be ``frames == c``."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [ds.SOPInstanceUID for ds in datasets]
    for c in range(1, count + 1):
        stored = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[c], assert_missing_frames_are_empty=True
        )[..., 0]
        if not np.array_equal(stored.astype(bool), frames == c):
            raise RuntimeError(f"{path}: segment {c} read back differs from the prediction; the file is not kept")


class SaveDicomSegd(MapTransform):
    """For a DICOM series input, also write ``<output_dir>/<series folder>_seg.dcm`` (DICOM-SEG).

    Runs after the prediction is back on the input's grid (``Invertd``); other inputs pass untouched.

    Args:
        keys: the class-index prediction (1 x X x Y x Z MetaTensor).
        output_dir: the output folder.
        class_names: segment labels (classes without a name are ``class <c>``).
        enabled: write it at all (``dicom_seg`` in ``configs/volumes.json``).
        version: the bundle version recorded as the algorithm's.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        class_names: Sequence[str] = (),
        enabled: bool = True,
        version: str = "",
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.class_names, self.enabled, self.version = output_dir, list(class_names), enabled, version

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            source = str(pred.meta.get("filename_or_obj", "")) if isinstance(pred, MetaTensor) else ""
            if not source or not os.path.isdir(source):
                continue
            labels = np.asarray(pred.detach().cpu())[0].astype(np.uint8)
            target = Path(self.output_dir) / f"{Path(source).name}{DICOM_SEG_SUFFIX}"
            write_dicom_seg(
                labels, np.asarray(pred.affine, dtype=float), source, target, self.class_names, self.version
            )
        return d

"""Build a data list from an image folder and one mask folder per structure, matched by file stem."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from bundle.errors import BundleInputError, MissingInputError

logger = logging.getLogger(__name__)

# Compound suffixes first so "case1.nii.gz" loses ".nii.gz", not only ".gz".
IMAGE_SUFFIXES = (
    ".nii.gz", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
    ".img", ".nii", ".dcm", ".mha", ".nrrd",
)  # fmt: skip
_MAX_LISTED = 5


def image_stem(name: str) -> str | None:
    """File name without its image suffix (case-insensitive), or None if it is not an image file.

    Args:
        name: a file name such as ``case1.nii.gz`` or ``a.PNG``.

    Returns:
        The stem (``case1``, ``a``), or None for other suffixes.
    """
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(sorted(ids)[:_MAX_LISTED])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > _MAX_LISTED else "")


def _scan(folder: Path, pattern: str, strip: str = "") -> dict[str, str]:
    """Map stem -> path for the image files in ``folder`` matching ``pattern``."""
    if not folder.is_dir():
        raise MissingInputError(f"folder not found: {folder} (check the data set path and folder names)")
    found: dict[str, list[str]] = {}
    for path in folder.glob(pattern):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = image_stem(path.name)
        if stem is None:
            continue
        if strip and stem.endswith(strip) and len(stem) > len(strip):
            stem = stem[: -len(strip)]
        found.setdefault(stem, []).append(str(path))
    duplicates = {s: p for s, p in found.items() if len(p) > 1}
    if duplicates:
        example = next(iter(sorted(duplicates)))
        raise BundleInputError(
            f"{folder}: {len(duplicates)} file stem(s) occur more than once, e.g. {example}: "
            f"{sorted(duplicates[example])}; keep one file per case or narrow the glob {pattern!r}"
        )
    return {s: p[0] for s, p in found.items()}


def read_split_ids(split_file: str | os.PathLike, split: str | None = None) -> list[str]:
    """Read case ids from a split file.

    Args:
        split_file: JSON ``{"train": [ids], "test": [ids]}`` or a text file with one id per line
            (blank lines and lines starting with ``#`` are ignored).
        split: the JSON key to use; ignored for a text file.

    Returns:
        The ids, with any image suffix removed (``a.png`` -> ``a``).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a JSON file without ``split`` or without that key.
    """
    path = Path(split_file)
    if not path.is_file():
        raise MissingInputError(f"split file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        table = json.loads(text)
        if not isinstance(table, dict):
            raise BundleInputError(f"{path}: expected a JSON object of split name -> list of ids")
        if split is None or split not in table:
            raise BundleInputError(f"{path}: choose a split with split=..., one of {sorted(table)} (got {split!r})")
        ids = [str(i) for i in table[split]]
    else:
        ids = [line.strip() for line in text.splitlines()]
        ids = [i for i in ids if i and not i.startswith("#")]
    return [image_stem(i) or i for i in ids]


def folder_datalist(
    image_dir: str | os.PathLike,
    mask_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    image_glob: str = "*",
    mask_glob: str = "*",
    split_file: str | os.PathLike | None = None,
    split: str | None = None,
    mask_suffix: str = "",
) -> list[dict]:
    """List ``{"image", "label", "id"}`` items by matching images and masks on their file stem.

    Hidden files and files without an image suffix (png jpg jpeg bmp gif tif tiff img nii nii.gz dcm mha
    nrrd, any case) are ignored; globs are not recursive and, as on the file system, case-sensitive.

    Args:
        image_dir: folder of images.
        mask_dirs: one folder of masks, or a list of folders (one per structure; the label is then a list).
        image_glob: glob for images inside ``image_dir``.
        mask_glob: glob for masks inside each mask folder (e.g. ``*_mask.png``).
        split_file: optional JSON or text split file (see ``read_split_ids``) to keep only some ids.
        split: the split name in a JSON split file.
        mask_suffix: removed from mask stems before matching (``a_mask.png`` -> ``a`` with ``"_mask"``).

    Returns:
        Items sorted by id; ``label`` is a str for one mask folder, a list of str for several.

    Raises:
        FileNotFoundError: a folder or the split file is missing.
        ValueError: no image matched, an image lacks a mask, duplicate stems, or unknown split ids.
    """
    image_dir = Path(image_dir)
    several = not isinstance(mask_dirs, (str, os.PathLike))
    mask_folders = [Path(m) for m in mask_dirs] if several else [Path(mask_dirs)]  # type: ignore[union-attr]
    if not mask_folders:
        raise BundleInputError("folder_datalist: give at least one mask folder")
    images = _scan(image_dir, image_glob)
    if not images:
        raise BundleInputError(
            f"no images matched {image_glob!r} in {image_dir}; check the folder and the glob "
            f"(image suffixes: {' '.join(IMAGE_SUFFIXES)})"
        )
    masks = [_scan(folder, mask_glob, mask_suffix) for folder in mask_folders]
    for folder, found in zip(mask_folders, masks, strict=True):
        missing = sorted(set(images) - set(found))
        if missing:
            raise BundleInputError(
                f"{len(missing)} image(s) in {image_dir} have no mask matching {mask_glob!r} in {folder}: "
                f"{_listed(missing)}; masks are matched by file stem"
                + (f" after removing {mask_suffix!r}" if mask_suffix else " (set mask_suffix if they carry one)")
            )
        extra = sorted(set(found) - set(images))
        if extra:
            logger.warning("%d mask(s) in %s have no image in %s: %s", len(extra), folder, image_dir, _listed(extra))
    ids = sorted(images)
    if split_file is not None:
        wanted = read_split_ids(split_file, split)
        unknown = sorted(set(wanted) - set(images))
        if unknown:
            raise BundleInputError(
                f"{split_file}: {len(unknown)} id(s) of split {split!r} have no image in {image_dir}: "
                f"{_listed(unknown)}"
            )
        ids = sorted(set(wanted))
    items = []
    for case in ids:
        labels = [found[case] for found in masks]
        items.append({"image": images[case], "label": labels if several else labels[0], "id": case})
    return items


def studies_datalist(studies_dir: str | os.PathLike, label_tag: str = "final") -> list[dict]:
    """The labelled images of a MONAI Label studies folder: ``{"image", "label", "id"}`` items.

    MONAI Label keeps the images in ``studies_dir`` and the labels saved from 3D Slicer in
    ``studies_dir/labels/<label_tag>/`` under the image's file stem; images without a label are
    skipped (most of a studies folder is unlabelled). Labels are read as label maps when their values
    lie in 0..C (MONAI Label saves 0/1), else binarised at ``mask_threshold``.

    Args:
        studies_dir: the studies folder given to ``monailabel start_server --studies``.
        label_tag: the label folder (``final``: the submitted labels).

    Returns:
        Items sorted by id (empty when nothing is labelled yet).

    Raises:
        MissingInputError: ``studies_dir`` does not exist.
    """
    studies = Path(studies_dir)
    images = _scan(studies, "*")
    label_dir = studies / "labels" / label_tag
    labels = _scan(label_dir, "*") if label_dir.is_dir() else {}
    return [{"image": images[i], "label": labels[i], "id": i} for i in sorted(set(images) & set(labels))]

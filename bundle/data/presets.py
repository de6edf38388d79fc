"""Presets of ``folder_datalist`` for the public data sets used by BLO-SAM."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bundle.data.folder import folder_datalist
from bundle.errors import BundleInputError, MissingInputError


def _dataset_dir(dataset_dir: str | os.PathLike, name: str) -> Path:
    """Check that the data set folder exists and holds something."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise MissingInputError(f"--dataset_dir {root}: {name} data set folder not found")
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise BundleInputError(f"--dataset_dir {root}: empty data set, no files; download the {name} release into it")
    return root


def _one_of(parent: Path, names: Sequence[str], what: str) -> Path:
    """The single existing folder among alternative spellings."""
    found = [parent / n for n in names if (parent / n).is_dir()]
    if len(found) != 1:
        state = "none" if not found else "several"
        spellings = " or ".join(repr(n) for n in names)
        raise MissingInputError(f"{parent}: expected one {what} mask folder named {spellings}, found {state}")
    return found[0]


def kvasir_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """Kvasir-SEG (Jha et al., MMM 2020): ``images/<id>.jpg`` and ``masks/<id>.jpg``.

    The masks are JPEG: binarise them with ``LoadMaskd(threshold=127)``, never ``> 0``.

    Args:
        dataset_dir: the unpacked ``Kvasir-SEG`` folder.

    Returns:
        Items ``{"image", "label", "id"}`` sorted by id.
    """
    root = _dataset_dir(dataset_dir, "Kvasir-SEG")
    return folder_datalist(root / "images", root / "masks", image_glob="*.jpg", mask_glob="*.jpg")


def jsrt_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """JSRT chest radiographs with SCR lung masks: label = [left lung, right lung].

    Layout: ``images/<case>.png`` (any size) or the released ``images/<case>.IMG`` (2048 x 2048 raw),
    and ``masks/left_lung/<case>.gif`` + ``masks/right_lung/<case>.gif`` (the SCR release spells the
    folders ``left lung``/``right lung``; both spellings are accepted, masks may use any image suffix).
    SCR masks are 1024 x 1024: load them with ``LoadMaskd(resample=True, threshold=127)``. "Left" is
    the patient's left, on the right side of the image.

    Args:
        dataset_dir: folder holding ``images/`` and ``masks/``.

    Returns:
        Items sorted by case id, each label a list [left, right].
    """
    root = _dataset_dir(dataset_dir, "JSRT")
    masks = root / "masks"
    left = _one_of(masks, ("left_lung", "left lung"), "left lung")
    right = _one_of(masks, ("right_lung", "right lung"), "right lung")
    return folder_datalist(root / "images", [left, right])


def dental_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    image_dir: str = "images",
    mask_dir: str = "masks",
    image_glob: str = "*",
    mask_glob: str = "*",
    mask_suffix: str = "",
    split_file: str | os.PathLike | None = None,
) -> list[dict]:
    """Children's dental panoramic radiographs (Zhang et al., Scientific Data 2023), teeth masks.

    Two layouts are supported, since the release may be reorganised after download:

    - split folders (default): ``<dataset_dir>/<split>/<image_dir>`` and ``<dataset_dir>/<split>/<mask_dir>``;
    - one folder plus a split file: ``<dataset_dir>/<image_dir>`` and ``<dataset_dir>/<mask_dir>`` with
      ``split_file`` (JSON ``{"train": [...], "test": [...]}`` or one id per line) selecting ``split``.

    To use the downloaded release, point ``dataset_dir`` at its teeth-segmentation folder and set
    ``image_dir``/``mask_dir`` to its folder names; if mask files carry a suffix (``0001_mask.png``) set
    ``mask_glob="*_mask.png"`` and ``mask_suffix="_mask"``. Mask values are mapped to classes later by
    ``LoadMaskd`` (``threshold`` for 0/255 masks, ``value_map`` for label maps).

    Args:
        dataset_dir: the data set folder.
        split: split folder name, or the key in ``split_file``.
        image_dir: image folder name.
        mask_dir: mask folder name.
        image_glob: image glob.
        mask_glob: mask glob.
        mask_suffix: suffix removed from mask stems before matching.
        split_file: optional split file; then the folders sit directly under ``dataset_dir``.

    Returns:
        Items sorted by id.
    """
    root = _dataset_dir(dataset_dir, "dental panoramic")
    base = root if split_file is not None else root / split
    return folder_datalist(
        base / image_dir,
        base / mask_dir,
        image_glob=image_glob,
        mask_glob=mask_glob,
        split_file=split_file,
        split=split if split_file is not None else None,
        mask_suffix=mask_suffix,
    )

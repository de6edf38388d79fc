"""The inputs of an inference run: every image file of a folder, sorted by name, and their output names.

A mask is named after its input's stem (``case.jpg`` -> ``case.png``). Two inputs of one folder that
share a stem (``case.jpg``, ``case.png``) would write the same mask, the second silently replacing
the first; :func:`output_stem` gives each of them its suffix as well (``case_jpg``, ``case_png``), and
:func:`image_datalist` says so. :func:`check_outputs` refuses a run whose masks would overwrite an input.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bundle.data.folder import image_stem
from bundle.errors import BundleInputError, MissingInputError

logger = logging.getLogger(__name__)


def _stem_counts(folder: Path) -> Counter:
    """How many image files of ``folder`` have each stem."""
    try:
        return _stem_counts_at(str(folder), folder.stat().st_mtime_ns)
    except OSError:  # an unlistable folder: no collision can be told, keep plain stems
        return Counter()


@functools.lru_cache(maxsize=16)
def _stem_counts_at(folder: str, mtime_ns: int) -> Counter:
    # Cached per folder version (its mtime): the writer asks once per output file.
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
    return Counter(s for s in map(image_stem, names) if s is not None)


def output_stem(path: str | os.PathLike) -> str:
    """The name (without extension) of the output written for input ``path``.

    The input's stem, or, when another image file of its folder has the same stem, the stem and the
    suffix (``case.jpg`` -> ``case_jpg``; ``case.nii.gz`` -> ``case_nii_gz``).
    """
    path = Path(path)
    stem = image_stem(path.name)
    if stem is None:
        return path.name.split(".")[0]
    if _stem_counts(path.parent)[stem] < 2:
        return stem
    suffix = path.name[len(stem) :].lstrip(".").lower().replace(".", "_")
    return f"{stem}_{suffix}"


def image_datalist(input_dir: str | os.PathLike, pattern: str = "*") -> list[dict]:
    """``[{"image": path, "id": output name}, ...]`` for the image files in ``input_dir`` matching ``pattern``.

    Raises:
        MissingInputError: ``input_dir`` is not a folder.
        BundleInputError: no image file matches.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise MissingInputError(f"--input_dir {folder}: folder not found; give the folder of images to segment")
    paths = [
        p
        for p in sorted(folder.glob(pattern))
        if p.is_file() and not p.name.startswith(".") and image_stem(p.name) is not None
    ]
    if not paths:
        raise BundleInputError(
            f"--input_dir {folder}: no image files matching {pattern!r}; nothing to segment "
            "(image suffixes: png jpg jpeg bmp gif tif tiff img nii nii.gz dcm mha nrrd)"
        )
    items = [{"image": str(p), "id": output_stem(p)} for p in paths]
    renamed = [f"{Path(i['image']).name} -> {i['id']}" for i in items if i["id"] != image_stem(Path(i["image"]).name)]
    if renamed:
        logger.warning(
            "%d input(s) share a file stem with another input; their outputs are named by stem and suffix: %s",
            len(renamed),
            ", ".join(renamed),
        )
    return items


def check_outputs(
    inputs: Sequence[dict], input_dir: str | os.PathLike, output_dir: str | os.PathLike, output_ext: str
) -> None:
    """Refuse an inference run whose outputs would overwrite an input, before anything is written.

    Args:
        inputs: the items of :func:`image_datalist`.
        input_dir: the ``--input_dir`` folder.
        output_dir: the ``--output_dir`` folder.
        output_ext: the outputs' extension (``.png``, ``.nii.gz``).

    Raises:
        BundleInputError: ``output_dir`` is ``input_dir``, or an output path is an input file.
    """
    out = Path(output_dir).resolve()
    if out == Path(input_dir).resolve():
        raise BundleInputError(
            f"--output_dir {output_dir} is the input folder (--input_dir): the masks would overwrite or mix with "
            "the images; choose another --output_dir"
        )
    sources = {Path(i["image"]).resolve(): i["image"] for i in inputs}
    ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
    for item in inputs:
        target = out / f"{item['id']}{ext}"
        if target in sources:
            raise BundleInputError(
                f"--output_dir {output_dir}: the mask of {item['image']} would overwrite the input "
                f"{sources[target]}; choose another --output_dir"
            )

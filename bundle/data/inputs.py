"""The inputs of an inference run: every image file of a folder, sorted by name, and their output names.

A mask is named after its input's stem (``case.jpg`` -> ``case.png``). Two inputs of one folder that
share a stem (``case.jpg``, ``case.png``) would write the same mask, the second silently replacing
the first; :func:`output_stem` gives each of them its suffix as well (``case_jpg``, ``case_png``), and
:func:`image_datalist` says so. :func:`check_outputs` refuses a run whose masks would overwrite an input.

One unreadable input (a zero-byte or corrupt file) does not stop the others: :class:`SkipUnreadableDataset`
hands it to the evaluator as a marker, :func:`skip_unreadable` warns and skips it, and
:func:`report_inference` ends the run with status 1 and one line naming every skipped file.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import Dataset

from bundle.data.folder import image_stem
from bundle.errors import BundleInputError, MissingInputError, find_input_error

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


SKIPPED, REASON = "skipped_input", "skipped_reason"


class SkipUnreadableDataset(Dataset):
    """MONAI's ``Dataset`` that turns an input failing with bad input (:class:`BundleInputError`: an
    unreadable, empty or corrupt file) into a marker item ``{SKIPPED: file, REASON: message}``.

    A failing item cannot just be left out: the evaluator's epoch length is fixed by the data loader's
    length, and Ignite restarts an iterator that ends early. The marker travels to the evaluator,
    whose ``iteration_update`` (:func:`skip_unreadable`) skips it. Other errors (bugs) still raise.
    With ``batch_size`` 1 (as in ``configs/inference.json``) a marker never shares a batch with an image.
    """

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as err:  # MONAI wraps the reader's error in RuntimeErrors: look down the chain
            found = find_input_error(err)
            if found is None:
                raise
            item = self.data[index]
            source = item.get("image", item) if isinstance(item, Mapping) else item
            return {SKIPPED: str(source), REASON: " ".join(str(found).split())}


def skip_unreadable(engine: Any, batch: Any) -> Any:
    """A ``SupervisedEvaluator`` ``iteration_update``: warn about and skip the markers of
    :class:`SkipUnreadableDataset`, run the evaluator's own iteration on everything else.

    The skipped files are collected in ``engine.state.skipped_inputs`` for :func:`report_inference`.
    """
    if isinstance(batch, Mapping) and SKIPPED in batch:
        skipped = engine.state.__dict__.setdefault("skipped_inputs", [])
        for source, reason in zip(batch[SKIPPED], batch[REASON], strict=True):
            logger.warning("skipped %s: %s", source, reason)
            skipped.append(source)
        return {}  # no model output: MODEL_COMPLETED is not fired, so nothing is post-processed or written
    return engine._iteration(engine, batch)


def report_inference(evaluator: Any, inputs: Sequence[dict], output_dir: str | os.PathLike) -> None:
    """Print how many masks were written; end with status 1 and one line if inputs were skipped.

    Raises:
        BundleInputError: some inputs could not be read (their masks are missing; the others were written).
    """
    skipped = list(getattr(evaluator.state, "skipped_inputs", []))
    print(f"wrote {len(inputs) - len(skipped)} masks to {output_dir}")
    if skipped:
        raise BundleInputError(
            f"skipped {len(skipped)} of {len(inputs)} inputs that could not be read: {', '.join(skipped)}; "
            f"the masks of the others are in {output_dir}. Replace or remove those files and run again"
        )

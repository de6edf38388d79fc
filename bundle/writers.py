"""MONAI's output writers, made atomic: a prediction or metrics file is never left half written.

``SaveImaged`` and ``MetricsSaver`` write straight to their target file, so a run stopped while
writing (a killed job, a full disk) leaves a truncated mask or CSV where a complete one may have
been before. These subclasses keep MONAI's behaviour and options and only redirect the write:
into a hidden temporary file beside the target, renamed over it once complete (see
:mod:`bundle.atomic`). Subclassing, not re-implementing, keeps every MONAI writer (PIL, ITK,
nibabel) and every ``MetricsSaver`` report available.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageWriter
from monai.handlers import MetricsSaver
from monai.transforms import MapTransform, SaveImaged
from monai.utils import ImageMetaKey

from bundle.atomic import atomic_path
from bundle.data.inputs import output_stem
from bundle.errors import BundleInputError


def atomic_writer(writer_cls: type[ImageWriter], ext: str) -> type[ImageWriter]:
    """A subclass of ``writer_cls`` whose ``write`` goes through a temporary file ending in ``ext``.

    The temporary file keeps the extension because the writers choose the format from it
    (``.png`` for PIL, ``.nii.gz`` compression for nibabel and ITK).
    """

    class AtomicWriter(writer_cls):  # type: ignore[valid-type, misc]
        def set_metadata(self, meta_dict: Any = None, *args: Any, **kwargs: Any) -> Any:
            self.source = (meta_dict or {}).get(ImageMetaKey.FILENAME_OR_OBJ)
            return super().set_metadata(meta_dict, *args, **kwargs)

        def write(self, filename: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
            source = getattr(self, "source", None)
            if source and os.path.exists(filename) and os.path.samefile(str(source), filename):
                # the last guard behind check_outputs: an input is never replaced by its own mask
                raise BundleInputError(f"{filename}: refusing to overwrite the input image with its mask")
            with atomic_path(filename, suffix=ext) as tmp:
                return super().write(str(tmp), *args, **kwargs)

    AtomicWriter.__name__ = AtomicWriter.__qualname__ = f"Atomic{writer_cls.__name__}"
    return AtomicWriter


def distinct_name_formatter(metadict: dict, saver: Any) -> dict:
    """MONAI's default output name, except that inputs sharing a stem keep distinct names.

    ``case.jpg`` and ``case.png`` in one folder would both be saved as ``case.png``; they become
    ``case_jpg.png`` and ``case_png.png`` (see :func:`bundle.data.inputs.output_stem`).
    """
    source = (metadict or {}).get(ImageMetaKey.FILENAME_OR_OBJ)
    idx = (metadict or {}).get(ImageMetaKey.PATCH_INDEX)
    if not source or not os.path.isfile(str(source)):
        return {"subject": f"{source if source else getattr(saver, '_data_index', 0)}", "idx": idx}
    # FolderLayout drops the subject's last extension: give it one to drop.
    return {"subject": f"{output_stem(source)}.out", "idx": idx}


class AtomicSaveImaged(SaveImaged):
    """``SaveImaged`` whose files appear complete or not at all; same arguments as MONAI's.

    Inputs of one folder that share a stem get distinct output names (:func:`distinct_name_formatter`)
    unless ``output_name_formatter`` is given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("output_name_formatter", distinct_name_formatter)
        super().__init__(*args, **kwargs)
        ext = self.saver.output_ext
        self.saver.writers = tuple(atomic_writer(w, ext) for w in self.saver.writers)


class AtomicMetricsSaver(MetricsSaver):
    """``MetricsSaver`` that writes its reports into a temporary folder, then renames each file in.

    Every CSV is replaced whole; a failure while writing leaves the previous reports untouched.
    """

    def __call__(self, engine: Any) -> None:
        target = Path(self.save_dir)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target, prefix=".metrics.") as tmp:
            self.save_dir = tmp
            try:
                super().__call__(engine)
            finally:
                self.save_dir = str(target)
            for report in sorted(Path(tmp).iterdir()):
                os.replace(report, target / report.name)


class CheckWrittenVolumed(MapTransform):
    """Read a written NIfTI mask back and check it against what was meant to be written, or fail naming it.

    Checked: the shape and affine are the input's (its ``spatial_shape`` and ``original_affine``, as
    read), so the spacing is too, and every voxel holds the prediction's class. Runs right after
    :class:`AtomicSaveImaged` with the same ``output_dir`` / ``output_ext``.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, output_ext: str = ".nii.gz") -> None:
        super().__init__(keys)
        self.output_dir, self.output_ext = output_dir, output_ext

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import nibabel as nib

        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            source = str(pred.meta.get(ImageMetaKey.FILENAME_OR_OBJ, ""))
            stem = output_stem(source) if os.path.isfile(source) else Path(source).name
            path = Path(self.output_dir) / f"{stem}{self.output_ext}"
            written = nib.load(path)
            shape = tuple(int(s) for s in np.asarray(pred.meta.get("spatial_shape", pred.shape[1:])).reshape(-1))
            affine = np.asarray(pred.meta.get("original_affine", pred.affine), dtype=float)
            values = np.asarray(written.dataobj)
            problems = []
            if written.shape != shape:
                problems.append(f"shape {written.shape}, the input's {shape}")
            if not np.allclose(written.affine, affine, atol=1e-4):
                problems.append(f"affine {written.affine.round(4).tolist()}, the input's {affine.round(4).tolist()}")
            elif not np.array_equal(values, np.asarray(pred.detach().cpu())[0].astype(values.dtype)):
                problems.append("labels that differ from the prediction")
            if problems:
                raise RuntimeError(f"{path}: read back with {'; '.join(problems)}")
        return d

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
from pathlib import Path
from typing import Any

from monai.data import ImageWriter
from monai.handlers import MetricsSaver
from monai.transforms import SaveImaged

from bundle.atomic import atomic_path


def atomic_writer(writer_cls: type[ImageWriter], ext: str) -> type[ImageWriter]:
    """A subclass of ``writer_cls`` whose ``write`` goes through a temporary file ending in ``ext``.

    The temporary file keeps the extension because the writers choose the format from it
    (``.png`` for PIL, ``.nii.gz`` compression for nibabel and ITK).
    """

    class AtomicWriter(writer_cls):  # type: ignore[valid-type, misc]
        def write(self, filename: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
            with atomic_path(filename, suffix=ext) as tmp:
                return super().write(str(tmp), *args, **kwargs)

    AtomicWriter.__name__ = AtomicWriter.__qualname__ = f"Atomic{writer_cls.__name__}"
    return AtomicWriter


class AtomicSaveImaged(SaveImaged):
    """``SaveImaged`` whose files appear complete or not at all; same arguments as MONAI's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
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

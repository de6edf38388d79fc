"""Checkpoint saving that never loses the previous model: write the new file, then rename it over the old.

MONAI's ``CheckpointSaver`` saves through Ignite's ``Checkpoint`` with a ``DiskSaver`` (``atomic=False``).
When a better model arrives, ``Checkpoint`` first *removes* the old ``model.pt`` and then writes the new
one in place: a run killed in between leaves no best model, or half of one. :class:`AtomicDiskSaver`
keeps Ignite's and MONAI's bookkeeping (file names, ``n_saved``, the resume state) and changes only the
file operations: each checkpoint is written to a temporary file and renamed over its target
(:mod:`bundle.atomic`), and removals are deferred until the new file is complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from bundle.atomic import save_atomically

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` whose writes are atomic and whose removals wait for the next complete write.

    As Ignite's, it writes and removes only on rank ``save_on_rank`` (0): under ``torchrun`` every rank
    holds the same weights, and several ranks renaming over one file would race.

    Args:
        dirname: the checkpoint folder.
        filename: a fixed file name for every save (as MONAI's ``final_filename``/``key_metric_filename``);
            ``None`` keeps Ignite's names.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), require_empty=False, atomic=True)
        self.filename = filename
        self.pending: list[Path] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:  # Ignite's rank check, which this override replaces
            return
        target = self.dirname / (self.filename or filename)
        save_atomically(checkpoint, target)
        # only now that the new file is whole may the files it supersedes go
        for old in self.pending:
            if old != target:
                old.unlink(missing_ok=True)
        self.pending.clear()

    def remove(self, filename: str) -> None:
        """Remember ``filename`` for removal after the next successful save (never before it)."""
        if idist.get_rank() != self.save_on_rank:
            return
        self.pending.append(self.dirname / (self.filename or filename))


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) writing through :class:`AtomicDiskSaver`.

    A best model named in a restored saver state (``load_state_dict``, as on resume) that is no longer on
    disk is reported and forgotten, so the next validation writes a new one instead of failing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:  # keep MONAI's fixed file name, if any
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, fixed)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the best-model bookkeeping, dropping entries whose file is missing."""
        super().load_state_dict(state_dict)
        checkpoint = self._key_metric_checkpoint
        if checkpoint is None:
            return
        fixed = checkpoint.save_handler.filename
        kept = []
        for item in checkpoint._saved:
            path = Path(self.save_dir) / (fixed or item.filename)
            if path.is_file():
                kept.append(item)
            else:
                logger.warning(
                    f"best checkpoint {path} (score {item.priority}) is missing; "
                    "the next validation writes a new one"
                )
        checkpoint._saved[:] = kept

"""Atomic file writes: a file is either its old version or its complete new one, never half written.

Every file the bundle writes that a later run reads back (checkpoints, resume state, cached
embeddings, run records, overlays, the export zip, predicted masks and metric reports, see
:mod:`bundle.writers`) goes through :func:`atomic_path`: the content is written to a temporary file
in the same folder (same file system, so the rename is atomic) and renamed over the target only
once it is complete; on any error the temporary file is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds.

    The temporary name is hidden (it starts with a dot) and ends with ``suffix``; pass the file's
    extension when the writer chooses the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomically(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json_atomically(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))

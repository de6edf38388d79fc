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
    extension when the writer chooses the format from it. The file gets the permissions a plain
    ``open(path, "w")`` gives (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere the only way is to set it and set it back (briefly process-wide).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_atomically(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json_atomically(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))

"""The inputs of an inference run: every image file of a folder, sorted by name."""

from __future__ import annotations

import os
from pathlib import Path

from bundle.data.folder import image_stem


def image_datalist(input_dir: str | os.PathLike, pattern: str = "*") -> list[dict]:
    """``[{"image": path, "id": stem}, ...]`` for the image files in ``input_dir`` matching ``pattern``."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Input folder {folder} does not exist (set --input_dir).")
    items = [
        {"image": str(p), "id": image_stem(p.name)}
        for p in sorted(folder.glob(pattern))
        if p.is_file() and not p.name.startswith(".") and image_stem(p.name) is not None
    ]
    if not items:
        raise ValueError(f"No image files matching {pattern!r} in {folder}: nothing to segment.")
    return items

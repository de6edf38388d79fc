"""Create the small sample shipped in ``bundle/sample_data/`` from the real Kvasir-SEG and JSRT/SCR data.

Deterministic: the cases are evenly spaced over the sorted ids, and resizing/encoding have no randomness.

    python scripts/make_sample_data.py --source ../shared/data --out bundle/sample_data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
N_CASES = 16
KVASIR_LONG_SIDE = 320
JSRT_IMAGE_SIZE = 256
JSRT_MASK_SIZE = 512  # masks stay at 2x the image size, as in the release (1024 vs 2048/512)


def evenly_spaced(ids: list[str], n: int) -> list[str]:
    """``n`` ids spread evenly over the sorted list, first and last included."""
    ids = sorted(ids)
    if len(ids) < n:
        raise ValueError(f"need {n} cases, found {len(ids)}")
    picks = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in picks]


def make_kvasir(source: Path, out: Path) -> list[str]:
    """Downsize 16 Kvasir-SEG cases to a longest side of 320 px; masks stay JPEG like the release."""
    ids = evenly_spaced([p.stem for p in (source / "images").glob("*.jpg")], N_CASES)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for case in ids:
        image = Image.open(source / "images" / f"{case}.jpg").convert("RGB")
        scale = KVASIR_LONG_SIDE / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, Image.Resampling.LANCZOS).save(out / "images" / f"{case}.jpg", quality=90)
        mask = Image.open(source / "masks" / f"{case}.jpg").convert("RGB")
        # Nearest keeps the mask binary before the JPEG step re-adds the compression noise of the release.
        mask.resize(size, Image.Resampling.NEAREST).save(out / "masks" / f"{case}.jpg", quality=95)
    return ids


def make_jsrt(source: Path, out: Path) -> list[str]:
    """Downsize 16 JSRT cases to 256 px images and 512 px 0/255 GIF lung masks."""
    ids = evenly_spaced([p.stem for p in (source / "images").glob("*.png")], N_CASES)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for case in ids:
        image = Image.open(source / "images" / f"{case}.png").convert("L")
        size = (JSRT_IMAGE_SIZE, JSRT_IMAGE_SIZE)
        image.resize(size, Image.Resampling.LANCZOS).save(out / "images" / f"{case}.png", optimize=True)
        for side in ("left_lung", "right_lung"):
            (out / "masks" / side).mkdir(parents=True, exist_ok=True)
            mask = Image.open(source / "masks" / side / f"{case}.gif").convert("L")
            mask = mask.resize((JSRT_MASK_SIZE, JSRT_MASK_SIZE), Image.Resampling.NEAREST)
            binary = Image.fromarray(np.where(np.asarray(mask) > 127, 255, 0).astype(np.uint8))
            # A full grey palette (no optimisation) reads back as mode "L" 0/255, like the release masks.
            binary.save(out / "masks" / side / f"{case}.gif", optimize=False)
    return ids


def main() -> None:
    """Parse arguments and write both sample subsets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / ".." / "shared" / "data", help="real data root")
    parser.add_argument("--out", type=Path, default=ROOT / "bundle" / "sample_data", help="output folder")
    args = parser.parse_args()
    kvasir = make_kvasir(args.source / "kvasir-seg", args.out / "kvasir")
    jsrt = make_jsrt(args.source / "jsrt", args.out / "jsrt")
    print("Kvasir-SEG ids:", " ".join(kvasir))
    print("JSRT ids:", " ".join(jsrt))


if __name__ == "__main__":
    main()

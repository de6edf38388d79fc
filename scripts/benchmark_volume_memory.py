"""Benchmark: peak memory of volume inference (``configs/volumes.json``) against the volume's size.

Each size runs the bundle's own command (``python -m monai.bundle run`` with ``inference.json`` and
``volumes.json``) in a fresh process on one synthetic int16 NIfTI volume; its peak resident memory
is read from the kernel (``RUSAGE_CHILDREN``). The fitted bytes per voxel give the size limit the
docs state; the backbone only adds a constant (its weights and one batch of slices). The synthetic
checkpoint has no token bank beside it, so the default ``--token_prior auto`` runs the plain pass here;
the token prior's own peak is in the volume runs' records (``docs/results/volumes_notes.md``).

    python scripts/benchmark_volume_memory.py --sizes 256x256x50 512x512x100 512x512x200 \
        --out docs/results/benchmark_volume_memory.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """A smooth int16 volume (a bright ellipsoid on a gradient), written as NIfTI."""
    import nibabel as nib
    import numpy as np

    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    radius = sum(((g - s / 2) / (s / 3)) ** 2 for g, s in zip(grids, shape, strict=True))
    data = np.where(radius < 1, 800, -200) + (grids[0] * 0.5).astype(np.int16)
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.eye(4)), path)


def run_size(shape: tuple[int, int, int], backbone: str, ckpt: Path, work: Path) -> dict:
    """Run volume inference on one volume of ``shape`` in a child process; its peak RSS and wall time."""
    inputs, outputs = work / "in", work / "out"
    inputs.mkdir(parents=True, exist_ok=True)
    for old in inputs.iterdir():
        old.unlink()
    make_volume(inputs / "volume.nii.gz", shape)
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", "['configs/inference.json','configs/volumes.json']",
           "--input_dir", str(inputs), "--output_dir", str(outputs / "x".join(map(str, shape))),
           "--ckpt", str(ckpt), "--backbone", backbone, "--prompt", "dense"]  # fmt: skip
    # a fresh interpreter per size: RUSAGE_CHILDREN's maximum is over children that have ended, so
    # each measurement is taken in a wrapper process that runs exactly one child
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, cwd=%r, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)" % str(ROOT)
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    voxels = shape[0] * shape[1] * shape[2]
    return {"shape": shape, "voxels": voxels, "peak_mib": int(out.stdout.split()[-1]) / 1024, "seconds": seconds}


def fit(rows: list[dict]) -> tuple[float, float]:
    """Least-squares line peak MiB = a + b * voxels; returns (a MiB, b bytes per voxel)."""
    n = len(rows)
    xs, ys = [r["voxels"] for r in rows], [r["peak_mib"] for r in rows]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(sum((x - mx) ** 2 for x in xs), 1)
    return my - slope * mx, slope * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x256x50", "512x512x100", "512x512x200"])
    parser.add_argument("--backbone", default="sam_tiny", help="the memory per voxel does not depend on it")
    parser.add_argument("--out", default="docs/results/benchmark_volume_memory.md")
    args = parser.parse_args()

    import torch

    from bundle.networks import BLOSAM

    shapes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        torch.save(BLOSAM(args.backbone, prompt="dense").state_dict(), work / "model.pt")
        for shape in shapes:
            rows.append(run_size(shape, args.backbone, work / "model.pt", work))
            print(rows[-1], flush=True)
    base_mib, per_voxel = fit(rows) if len(rows) > 1 else (0.0, float("nan"))
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    lines = ["# Volume inference: peak memory against volume size", "",
             f"`python scripts/benchmark_volume_memory.py --sizes {' '.join(args.sizes)} --backbone {args.backbone}` "
             f"(one int16 NIfTI volume per run, 1 class, CPU, OMP_NUM_THREADS={threads}). Peak RSS of the whole "
             "`python -m monai.bundle run` process.", "",
             "| volume (H x W x D) | voxels (M) | peak RSS (MiB) | wall s |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        shape = " x ".join(map(str, r["shape"]))
        lines.append(f"| {shape} | {r['voxels'] / 1e6:.1f} | {r['peak_mib']:.0f} | {r['seconds']:.0f} |")
    lines += ["", f"Fitted: peak ≈ {base_mib:.0f} MiB + {per_voxel:.1f} bytes per voxel."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

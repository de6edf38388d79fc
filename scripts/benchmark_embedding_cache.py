"""Benchmark: a BLO-SAM training step with the embedding cache against one that runs the encoder.

Each variant runs in its own subprocess (so its peak memory is its own) on the same machine in
one invocation; the table gives the time per step, the speed-up ratio and the peak memory.
Absolute times are only meaningful on a GPU; on a shared CPU compare the ratio.

    python scripts/benchmark_embedding_cache.py --steps 10 --out docs/results/benchmark_embedding_cache.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def run_variant(variant: str, backbone: str, steps: int, batch: int, device: str) -> dict:
    """Time ``steps`` lower+upper training steps; returns seconds per step and peak memory."""
    import torch
    from monai.losses import DiceCELoss

    from bundle.networks import BLOSAM, EmbeddingCache

    torch.manual_seed(0)
    cache = EmbeddingCache() if variant == "cached" else None
    net = BLOSAM(backbone, embedding_cache=cache).to(device)
    size = net.input_size
    images = torch.rand(batch, 3, size, size, device=device)
    labels = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    lower = torch.optim.AdamW(net.lower_parameters(), lr=5e-3)
    upper = torch.optim.AdamW(net.upper_parameters(), lr=5e-3)
    net.train()

    def step() -> None:
        for opt in (lower, upper):  # the two levels, as the bi-level trainer runs them
            opt.zero_grad(set_to_none=True)
            loss_fn(net(images), labels).backward()
            opt.step()

    step()  # warm-up: fills the cache in the cached variant
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "variant": variant,
        "seconds_per_step": seconds,
        "peak_rss_mib": peak_rss,
        "peak_gpu_mib": peak_gpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--out", default="docs/results/benchmark_embedding_cache.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.backbone, args.steps, args.batch, args.device)))
        return

    rows = []
    for variant in ("uncached", "cached"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--backbone",
            args.backbone,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1])
    base = rows[0]["seconds_per_step"]
    device = _device_name(args.device)
    lines = [
        "# Embedding cache benchmark",
        "",
        f"Backbone `{args.backbone}`, batch {args.batch}, {args.steps} timed steps (one lower + one upper "
        f"update each), device: {device}. Measured by `scripts/benchmark_embedding_cache.py`.",
        "",
        "| variant | s / step | speed-up | peak RSS (MiB) | peak GPU (MiB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        lines.append(
            f"| {r['variant']} | {r['seconds_per_step']:.3f} | {base / r['seconds_per_step']:.1f}x | "
            f"{r['peak_rss_mib']:.0f} | {gpu} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()

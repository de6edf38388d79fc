"""Benchmark: a BLO-SAM training step with the embedding cache against one that runs the encoder.

Absolute times are only meaningful on a GPU; on a shared CPU compare the ratio.

    python scripts/benchmark_embedding_cache.py --steps 10 --out docs/results/benchmark_embedding_cache.md
"""

from __future__ import annotations

import argparse
import json

from benchmark_common import clock, device_name, peak_memory_mib, run_variants, write_table


def run_variant(variant: str, backbone: str, steps: int, batch: int, device: str) -> dict:
    """Seconds per lower+upper step and peak memory, encoder cached or not."""
    import torch
    from monai.losses import DiceCELoss

    from bundle.networks import BLOSAM, EmbeddingCache

    torch.manual_seed(0)
    net = BLOSAM(backbone, embedding_cache=EmbeddingCache() if variant == "cached" else None).to(device)
    size = net.input_size
    images = torch.rand(batch, 3, size, size, device=device)
    labels = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    optimizers = [torch.optim.AdamW(p, lr=5e-3) for p in (net.lower_parameters(), net.upper_parameters())]
    net.train()

    def step() -> None:
        for opt in optimizers:  # the two levels, as the bi-level trainer runs them
            opt.zero_grad(set_to_none=True)
            loss_fn(net(images), labels).backward()
            opt.step()

    step()  # warm-up: fills the cache in the cached variant
    start = clock(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    seconds = (clock(device) - start) / steps
    rss, gpu = peak_memory_mib(device)
    return {"variant": variant, "seconds_per_step": seconds, "peak_rss_mib": rss, "peak_gpu_mib": gpu}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="docs/results/benchmark_embedding_cache.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.backbone, args.steps, args.batch, args.device)))
        return
    common = ["--backbone", args.backbone, "--steps", str(args.steps), "--batch", str(args.batch),
              "--device", args.device]  # fmt: skip
    rows = run_variants(__file__, ["uncached", "cached"], common)
    intro = (
        f"Backbone `{args.backbone}`, batch {args.batch}, {args.steps} timed steps (one lower and "
        f"one upper update each), {device_name(args.device)}. Script: `benchmark_embedding_cache.py`."
    )
    print(write_table(args.out, "Embedding cache", intro, rows, baseline="uncached"))


if __name__ == "__main__":
    main()

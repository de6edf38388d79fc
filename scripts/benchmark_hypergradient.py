"""Benchmark: the cost of each hypergradient variant per bi-level iteration, against first order.

Runs the real trainer (``BiLevelTrainer``) with the chosen backbone on cached embeddings of random
images, one process per variant, and writes time per iteration, its ratio to ``first`` and the
peak memory. On a shared CPU compare the ratios; absolute times only on a GPU.

    python scripts/benchmark_hypergradient.py --iterations 10 --out docs/results/benchmark_hypergradient.md
"""

from __future__ import annotations

import argparse
import json

from benchmark_common import clock, device_name, peak_memory_mib, run_variants, write_table

VARIANTS = ["first", "finite_difference", "exact"]


def run_variant(variant: str, backbone: str, iterations: int, batch: int, device: str) -> dict:
    """Seconds per trainer iteration (after a warm-up iteration that fills the cache) and peak memory."""
    import torch
    from ignite.engine import Events
    from monai.data import DataLoader
    from monai.losses import DiceCELoss

    from bundle.data import CyclicShuffleSampler
    from bundle.engines import BiLevelTrainer, build_hypergradient
    from bundle.networks import BLOSAM, EmbeddingCache

    torch.manual_seed(0)
    net = BLOSAM(backbone, embedding_cache=EmbeddingCache()).to(device)
    size = net.input_size

    def loader(seed: int) -> DataLoader:
        items = [{"image": torch.rand(3, size, size), "label": (torch.rand(1, size, size) > 0.5).float()}
                 for _ in range(batch)]  # fmt: skip
        return DataLoader(items, batch_size=batch, sampler=CyclicShuffleSampler(batch, seed), num_workers=0)

    trainer = BiLevelTrainer(
        device=device, max_epochs=iterations + 1, epoch_length=1, lower_data_loader=loader(0),
        upper_data_loader=loader(1), network=net,
        lower_optimizer=torch.optim.AdamW(net.lower_parameters(), lr=5e-3),
        upper_optimizer=torch.optim.AdamW(net.upper_parameters(), lr=5e-3),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2),
        hypergradient=build_hypergradient(variant),
    )  # fmt: skip
    marks: list[float] = []
    norms: list[float] = []

    def mark(engine) -> None:
        marks.append(clock(device))
        norms.append(engine.state.output["hypergrad_norm"])
        if engine.state.iteration == 1 and device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, mark)
    trainer.run()
    rss, gpu = peak_memory_mib(device)
    seconds = (marks[-1] - marks[0]) / iterations  # iteration 1 (encoder warm-up) excluded
    return {"variant": variant, "seconds_per_step": seconds, "peak_rss_mib": rss, "peak_gpu_mib": gpu,
            "mean_hypergrad_norm": sum(norms[1:]) / iterations}  # fmt: skip


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="docs/results/benchmark_hypergradient.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.backbone, args.iterations, args.batch, args.device)))
        return
    common = ["--backbone", args.backbone, "--iterations", str(args.iterations), "--batch", str(args.batch),
              "--device", args.device]  # fmt: skip
    rows = run_variants(__file__, VARIANTS, common)
    intro = (f"Backbone `{args.backbone}`, batch {args.batch} per level, {args.iterations} timed iterations "
             f"(one lower and one upper step each), {device_name(args.device)}. "
             "`scripts/benchmark_hypergradient.py`. Mean hypergradient norms: "
             + ", ".join(f"{r['variant']} {r['mean_hypergrad_norm']:.3g}" for r in rows) + ".")  # fmt: skip
    print(write_table(args.out, "Hypergradient variants", intro, rows, baseline="first"))


if __name__ == "__main__":
    main()

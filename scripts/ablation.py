"""The accuracy ablation: each change switched on alone from the previous default, plus the preset.

Runs are ordinary few-shot grid runs (``blo-sam``), one folder per variant, setting and seed, so a
rerun skips finished runs and resumes interrupted ones; the table is rewritten from whatever has
finished. See ``bundle/experiments/ablation.py`` for the variants.

    python scripts/ablation.py --data_root ../shared/data --settings jsrt:2 kvasir:4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.commands import exit_on_sigterm  # noqa: E402
from bundle.experiments import GridSettings, write_markdown_report  # noqa: E402
from bundle.experiments.ablation import (  # noqa: E402
    VARIANTS,
    ablation_table,
    bank_size_figure,
    bank_size_table,
    run_variant,
)
from bundle.experiments.grid import Run  # noqa: E402

FOLDERS = {"jsrt": "jsrt", "kvasir": "kvasir-seg", "dental": "dental"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--settings", nargs="+", default=["jsrt:2", "kvasir:4"], help="dataset:shots")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--max_test_cases", type=int, help="evaluate on the first n test cases only")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--cache_dir", help="embedding cache shared by all runs (default: <out>/embeddings)")
    parser.add_argument("--report", default="docs/results/ablation.md")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()  # a stopped runner stops its bundle command too

    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings]
    root = Path(args.out).resolve()
    dirs = {d: str((Path(args.data_root) / FOLDERS[d]).resolve()) for d, _ in settings}
    base = GridSettings(root, dirs, args.iterations, args.cache_dir or str(root / "embeddings"), args.max_test_cases)
    failures = []
    if not args.report_only:
        for seed in args.seeds:  # seed by seed, so a partial ablation already covers every row
            for name in args.variants:
                runs = [Run(d, k, seed, "blo-sam") for d, k in settings]
                failures += run_variant(VARIANTS[name], runs, base)
                write_markdown_report(_report_lines(root, settings, args), Path(args.report))
    print(write_markdown_report(_report_lines(root, settings, args), Path(args.report)))
    for run, err in failures:
        print(f"FAILED {run.label}: {err.splitlines()[0]}")
    sys.exit(1 if failures else 0)


def _report_lines(root: Path, settings: list[tuple[str, int]], args: argparse.Namespace) -> list[str]:
    """The report's lines: the single-change table, Dice against bank size (table and figure); the
    hand-written notes are appended by ``write_markdown_report``."""
    cases = f"the first {args.max_test_cases} test cases" if args.max_test_cases else "the full test split"
    lines = [
        "# Accuracy ablation (k-shot)",
        "",
        "Backbone LiteMedSAM; BLO-SAM first order; "
        f"{args.iterations} iterations; Dice and HD95 at original resolution on {cases}; "
        "each cell the mean ± std over seeds of the per-run means. 'labels' is the number of labelled "
        "images a run used (k, plus the validation images of the variants that pick the best iteration).",
        "",
        ablation_table(root, settings, args.seeds, args.variants),
        "",
    ]
    if any(v.startswith("bank-") for v in args.variants):
        figure = Path(args.report).with_suffix("") / "bank_size.png"
        lines += ["## Dice against augmentation bank size", "",
                  "The preset as shipped with banks of other sizes: each labelled image gets that many views "
                  "(view 0 the image itself), each encoded once in the first pass and then cached. Only the seeds "
                  "that every bank size has run are counted, so the sizes share their support images.", "",
                  bank_size_table(root, settings, args.seeds), ""]  # fmt: skip
        if bank_size_figure(root, settings, args.seeds, figure):
            lines += [f"![Dice against bank size]({figure.parent.name}/{figure.name})", ""]
    return lines


if __name__ == "__main__":
    main()

"""The BLO-SAM paper's few-shot protocol on your data: data set x shots x seeds x methods.

Each run is the bundle's own training and evaluation command, in its own folder under ``--out``
(config, logs, checkpoint, per-case Dice and HD95 at original resolution). Finished runs are
skipped and interrupted ones resume, so the same command continues a grid. The report (table
with the paper's numbers, tests paired by seed, figures) is rewritten from whatever has finished.

    python scripts/fewshot_experiment.py --data_root ../shared/data            # the full grid
    python scripts/fewshot_experiment.py --data_root ../shared/data --datasets jsrt --shots 2 \\
        --seeds 0 --methods blo-sam no-prompt --iterations 60 --max_test_cases 20 \\
        --set augmentation_bank=2                                                     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.commands import exit_on_sigterm  # noqa: E402
from bundle.experiments import figures  # noqa: E402
from bundle.experiments import (  # noqa: E402
    DATASETS,
    DEFAULT_METHOD,
    METHODS,
    GridSettings,
    collect,
    compute_time,
    per_seed_table,
    plan_grid,
    recorded_protocol,
    run_grid,
    summary_table,
    write_markdown_report,
)
from bundle.experiments.volumes import (  # noqa: E402
    VARIANTS,
    VOLUME_DATASETS,
    VolumeRun,
    VolumeSettings,
    execute_volume_run,
    volume_report,
)

FOLDERS = {"jsrt": "jsrt", "kvasir": "kvasir-seg", "dental": "dental", "btcv": "btcv", "hippocampus": "hippocampus"}
PROJECT = Path(__file__).resolve().parents[1]


def volume_dir(data_root: str, name: str) -> str:
    """A volume data set's Decathlon folder: ``<data_root>/<name>``, or, where that holds no images (BTCV
    is only described there), the copy built into the project's ``.data/<name>``."""
    for folder in (Path(data_root) / FOLDERS[name], PROJECT / ".data" / name):
        if (folder / "imagesTr").is_dir():
            return str(folder.resolve())
    raise SystemExit(
        f"{name}: no imagesTr/ in {Path(data_root) / FOLDERS[name]} or {PROJECT / '.data' / name}; "
        f"build it as {Path(data_root) / FOLDERS[name] / 'README.md'} says"
    )


def run_volumes(args: argparse.Namespace, overrides: dict) -> None:
    """The volumetric experiment: train on k support volumes, segment the test volumes, score in 3D."""
    root = Path(args.out).resolve()
    names = [d for d in args.datasets if d in VOLUME_DATASETS]
    settings = VolumeSettings(
        root,
        {name: volume_dir(args.data_root, name) for name in names},
        args.iterations,
        args.cache_dir or str(root / "embeddings"),
        str(root / "slices"),
        overrides,
        tuple(args.eval_ids),
    )
    runs = [
        VolumeRun(name, k, seed, variant)
        for seed in args.seeds
        for name in names
        for k in (args.shots or VOLUME_DATASETS[name].shots)
        for variant in args.variants
    ]
    failures = []
    if not args.report_only:
        from tqdm import tqdm

        for run in tqdm(runs, desc="volume runs", unit="run"):
            try:
                execute_volume_run(run, settings)
            except RuntimeError as err:
                if not args.keep_going:
                    raise
                failures.append(run)
                tqdm.write(str(err))
    if args.eval_ids:  # development scores use extra labels: printed, never the report
        for run in runs:
            done = run.folder(root) / "done.json"
            if done.is_file():
                record = json.loads(done.read_text())
                plain, sized = (100 * record[key]["mean_dice"] for key in ("pred", "pred_size"))
                voted = (
                    f", token prior {100 * record['pred_tokens']['mean_dice']:.1f}" if "pred_tokens" in record else ""
                )
                print(
                    f"{run.label} on {' '.join(args.eval_ids)}: mean Dice {plain:.1f} (size constraint {sized:.1f}{voted})"
                )
    elif not args.no_report:
        print(volume_report(runs, settings, Path(args.report or "docs/results/volumes.md")))
    for run in failures:
        print(f"FAILED {run.label}")
    sys.exit(1 if failures else 0)


def write_report(runs, settings: GridSettings, report: Path, iterations: int) -> str:
    """The markdown report and its figures (next to it, in ``<report stem>/``)."""
    results = collect(runs, settings.root)
    fig_dir = report.parent / report.stem
    lines = [
        "# Few-shot results",
        "",
        "Backbone: **LiteMedSAM** (MedSAM-Lite's TinyViT encoder + SAM decoder, the bundle's offline "
        "default), not the paper's ViT-B SAM. "
        f"{iterations} iterations per trained run, batch 2 per level, AdamW lr 0.005 with polynomial decay. "
        f"{recorded_protocol(results, settings.root)} "
        "Test: the paper's splits (last 147 JSRT ids, last 500 Kvasir-SEG ids, the dental set's official test "
        "ids); Dice and HD95 at "
        "each image's original resolution. A cell is the mean ± std over seeds of the per-run mean Dice. "
        "HD95 (pixels) is averaged over cases with a non-empty prediction; "
        "'empty predictions' counts the others. "
        "The paired test compares BLO-SAM (first order) with each method by seed: a paired t-test over the "
        "per-seed mean Dice (a Wilcoxon signed-rank test over the test cases when only one seed ran).",
        "",
        "Methods: " + "; ".join(f"`{m.name}`: {m.description}" for m in METHODS.values()) + ".",
        "",
        summary_table(results),
        "",
        "Per seed (Dice %, a run's mean over the test cases; the best method of each row in bold):",
        "",
        per_seed_table(results),
        "",
        f"Finished runs: {len(results)} of {len(runs)} planned; compute {compute_time(results) / 3600:.2f} h "
        "(training + evaluation, sum over runs).",
        "",
    ]
    made = []
    for name in DATASETS:
        made.append(figures.dice_vs_shots(results, name, fig_dir / f"dice_vs_shots_{name}.png"))
        mine = [r for r in results if r.run.dataset == name and r.run.seed is not None]
        if not mine:
            continue
        seed = min(r.run.seed for r in mine)
        for k in sorted({r.run.shots for r in mine}):  # curves and cases of the first seed, per shots
            trained = [r for r in mine if r.run.shots == k and r.run.seed == seed]
            if not trained:
                continue
            curves_png = fig_dir / f"training_{name}_{k}shot.png"
            made.append(figures.training_curves([r.run for r in trained], settings.root, curves_png))
            # the cases of the bundle's default method where it ran, else of blo-sam
            shown = [r for m in (DEFAULT_METHOD, "blo-sam") for r in trained if r.run.method == m][:1]
            cases_png = fig_dir / f"cases_{name}_{k}shot.png"
            if shown and (shown[0].run.folder(settings.root) / "models" / "model.pt").is_file():
                made.append(figures.overlay_grid(shown[0], settings.root, cases_png))
            elif cases_png.is_file():  # a record without checkpoints (as committed) keeps its figure
                made.append(cases_png)
    lines += ["Figures:", ""] + [f"- `{p.relative_to(report.parent)}`" for p in made if p is not None] + [""]
    return write_markdown_report(lines, report)


def _overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``KEY=VALUE`` items as config overrides, each value parsed as JSON (a bare word stays a string)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. augmentation_bank=2")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/data", help="folder with jsrt/ and kvasir-seg/")
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        choices=list(DATASETS) + list(VOLUME_DATASETS),
        help="image data sets, or volume data sets (btcv, hippocampus: the volumetric experiment)",
    )
    parser.add_argument("--variants", nargs="+", default=["blo-sam"], choices=list(VARIANTS),
                        help="volume runs: how they differ from plain slice-wise BLO-SAM (the report lists each)")  # fmt: skip
    parser.add_argument("--eval_ids", nargs="+", default=[], metavar="ID",
                        help="volume runs: score on these support-pool volumes instead of the test split, to choose "
                        "settings without the test volumes (extra labels: printed, never written to the report)")  # fmt: skip
    parser.add_argument("--shots", nargs="+", type=int, help="shots for every data set (default: the paper's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--max_test_cases", type=int, help="evaluate on the first n test cases only")
    parser.add_argument("--out", default="runs/fewshot", help="one folder per run below this")
    parser.add_argument("--cache_dir", help="embedding cache shared by all runs (default: <out>/embeddings)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, the value as JSON (e.g. augmentation_bank=2 for a "
                        "smoke run); recorded in each run's config.json")  # fmt: skip
    parser.add_argument("--report", help="default: docs/results/fewshot.md (images), docs/results/volumes.md (volumes)")
    parser.add_argument("--no_report", action="store_true", help="run the grid only; leave the report as it is")
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from finished runs")
    parser.add_argument("--keep_going", action="store_true", help="go on after a failed run")
    args = parser.parse_args()
    exit_on_sigterm()  # a stopped runner stops its bundle command too
    if any(d in VOLUME_DATASETS for d in args.datasets):
        if not all(d in VOLUME_DATASETS for d in args.datasets):
            parser.error("run image and volume data sets separately (their reports differ)")
        run_volumes(args, _overrides(parser, args.set))
    args.report = args.report or "docs/results/fewshot.md"

    root = Path(args.out).resolve()
    dirs = {name: str((Path(args.data_root) / FOLDERS[name]).resolve()) for name in args.datasets}
    missing = [d for d in dirs.values() if not Path(d).is_dir()]
    if missing and not args.report_only:
        parser.error(f"data set folder(s) not found: {missing} (set --data_root)")
    settings = GridSettings(root, dirs, args.iterations, args.cache_dir or str(root / "embeddings"),
                            args.max_test_cases, _overrides(parser, args.set))  # fmt: skip
    shots = {name: args.shots for name in args.datasets} if args.shots else None
    runs = plan_grid(args.datasets, args.seeds, args.methods, shots)
    failures = [] if args.report_only else run_grid(runs, settings, keep_going=args.keep_going)
    if not args.no_report:
        print(write_report(runs, settings, Path(args.report), args.iterations))
    for run, err in failures:
        print(f"FAILED {run.label}: {err.splitlines()[0]}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""Figures of a few-shot grid: Dice against shots, training curves, best/median/worst overlays."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bundle.commands import bundle_args, run_bundle  # noqa: E402
from bundle.experiments.grid import CONFIGS, DATASETS, METHODS, PROJECT, Run  # noqa: E402
from bundle.experiments.summary import RunResult, mean_std  # noqa: E402


def dice_vs_shots(results: list[RunResult], dataset: str, path: Path) -> Path | None:
    """Mean ± std (over seeds, as in the table) Dice against shots per method, with the paper's points.

    Unseeded baselines are horizontal lines. The y-axis spans the trained methods, the paper and the
    upper bound; a baseline far below (the no-prompt floor at 0) is named with its value instead of
    squashing the differences between methods into a few pixels.
    """
    mine = [r for r in results if r.run.dataset == dataset]
    if not mine:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    shots = sorted({r.run.shots for r in mine if r.run.shots})
    seeded = [m for m, spec in METHODS.items() if spec.seeded and any(r.run.method == m for r in mine)]
    width = 0.04 * (max(shots) - min(shots) or 1)  # side-by-side error bars at the same shots
    shown: list[float] = []
    for method, spec in METHODS.items():
        cell = [r for r in mine if r.run.method == method]
        if not cell or spec.seeded:
            continue
        value = 100 * cell[0].mean_dice
        ax.axhline(value, linestyle="--", linewidth=1, color="grey" if method == "no-prompt" else "black",
                   label=f"{method} ({value:.1f})")  # fmt: skip
        if value > 50:
            shown.append(value)
    for i, method in enumerate(seeded):
        cell = [r for r in mine if r.run.method == method]
        ks = [k for k in shots if any(r.run.shots == k for r in cell)]
        stats = [mean_std([100 * r.mean_dice for r in cell if r.run.shots == k]) for k in ks]
        xs = [k + (i - (len(seeded) - 1) / 2) * width for k in ks]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=method)
        shown += [m + sign * s for m, s in stats for sign in (-1, 1)]
    for paper, marker, name in ((DATASETS[dataset].paper_blo_sam, "x", "BLO-SAM"),
                                (DATASETS[dataset].paper_samed, "+", "SAMed")):  # fmt: skip
        ax.scatter(list(paper), list(paper.values()), marker=marker, s=50, color="red" if name == "BLO-SAM"
                   else "darkred", label=f"paper {name} (ViT-B)", zorder=3)  # fmt: skip
        shown += list(paper.values())
    ax.set_ylim(max(0.0, min(shown) - 3), min(100.0, max(shown) + 3))
    ax.set_xticks(sorted(set(shots) | set(DATASETS[dataset].paper_blo_sam)))
    ax.set_xlabel("labelled images (shots)")
    ax.set_ylabel("Dice % (test, original resolution)")
    ax.set_title(f"{dataset}: Dice against shots (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: (np.array([e.step for e in acc.Scalars(tag)]), np.array([e.value for e in acc.Scalars(tag)]))
            for tag in acc.Tags()["scalars"]}  # fmt: skip


def training_curves(runs: list[Run], root: Path, path: Path) -> Path | None:
    """Both levels' losses (or the single loss) and validation Dice against iteration, one colour per run."""
    curves = [(run, _scalars(run.folder(root) / "train")) for run in runs if (run.folder(root) / "train").exists()]
    curves = [(run, c) for run, c in curves if c]
    if not curves:
        return None
    validated = any("val_mean_dice" in c for _, c in curves)  # k-only runs have no validation images
    fig, axes = plt.subplots(1, 2 if validated else 1, figsize=(11 if validated else 6, 4), squeeze=False)
    ax_loss = axes[0, 0]
    for i, (run, c) in enumerate(curves):
        color = f"C{i}"
        for tag, style in (("lower_loss", "-"), ("upper_loss", ":"), ("loss", "-")):
            if tag in c:
                steps, values = c[tag]
                ax_loss.plot(steps, values, style, color=color, linewidth=0.8, label=f"{run.method} {tag}")
        if "val_mean_dice" in c:
            axes[0, 1].plot(*c["val_mean_dice"], "-o", color=color, markersize=2, label=run.method)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("Dice-CE loss")
    ax_loss.legend(fontsize=7)
    if validated:
        axes[0, 1].set_xlabel("iteration")
        axes[0, 1].set_ylabel("validation Dice")
        axes[0, 1].legend(fontsize=7)
    else:
        ax_loss.set_title("no validation images (k labels only): the final weights are kept", fontsize=8)
    first = curves[0][0]
    fig.suptitle(f"{first.dataset} {first.shots}-shot, seed {first.seed}: training curves")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _gray(path: str | Path, size: tuple[int, int] | None = None, mask: bool = False) -> np.ndarray:
    """A file as a 2D array in display orientation (rows = y), resized (nearest for masks) if asked."""
    image = Image.open(path)
    image = image.convert("L") if mask or image.mode not in ("RGB", "RGBA") else image.convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.NEAREST if mask else Image.BILINEAR)
    return np.asarray(image)


def predict_cases(result: RunResult, root: Path, cases: list[str], out_dir: Path) -> dict[str, Path]:
    """Run the bundle's inference command with ``result``'s model on ``cases``; returns masks by case."""
    import json
    import os

    folder = result.run.folder(root)
    command = json.loads((folder / "command.json").read_text())["training"]
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            os.symlink(Path(case).resolve(), Path(tmp) / Path(case).name)
        # the run's data set preset on top of inference.json (methods only change training)
        files = [CONFIGS / "inference.json", CONFIGS / DATASETS[result.run.dataset].config]
        overrides = {
            "input_dir": tmp,
            "output_dir": str(out_dir),
            "ckpt": str(folder / "models" / "model.pt"),
            "backbone": str(command["overrides"].get("backbone", "litemedsam")),
        }
        run_bundle(bundle_args("run", files, overrides), PROJECT)
    from bundle.data.folder import image_stem

    return {case: out_dir / f"{image_stem(Path(case).name)}.png" for case in cases}


def case_labels(result: RunResult, root: Path) -> dict[str, str | list[str]]:
    """Image file -> ground-truth mask file(s) (JSRT: one per lung), from the run's own data list."""
    import json

    from monai.bundle import ConfigParser

    command = json.loads((result.run.folder(root) / "command.json").read_text())["training"]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / DATASETS[result.run.dataset].config)])
    parser["dataset_dir"] = command["overrides"]["dataset_dir"]
    items = list(parser.get_parsed_content("datalist"))
    if "test_datalist" in parser:  # a data set with its own test split (dental)
        items += list(parser.get_parsed_content("test_datalist") or [])
    return {str(item["image"]): item["label"] for item in items}


def overlay_grid(result: RunResult, root: Path, path: Path, threshold: int = 127) -> Path:
    """Best, median and worst test cases of ``result``: image, ground truth, prediction (with Dice)."""
    ranked = sorted(result.dice.items(), key=lambda kv: kv[1])
    picks = {"best": ranked[-1], "median": ranked[len(ranked) // 2], "worst": ranked[0]}
    labels = case_labels(result, root)
    with tempfile.TemporaryDirectory() as tmp:
        masks = predict_cases(result, root, [case for case, _ in picks.values()], Path(tmp))
        fig, axes = plt.subplots(3, 3, figsize=(9, 9))
        for row, (name, (case, dice)) in enumerate(picks.items()):
            image = _gray(case)
            size = (image.shape[1], image.shape[0])
            files = labels[case] if isinstance(labels[case], list | tuple) else [labels[case]]
            truth = np.any([_gray(f, size, mask=True) > threshold for f in files], axis=0)
            if not masks[case].is_file():
                raise FileNotFoundError(f"the inference command wrote no mask {masks[case]} for {case}")
            pred = _gray(masks[case], size, mask=True) > 0
            for col, (title, layer) in enumerate((("image", None), ("ground truth", truth), ("prediction", pred))):
                ax = axes[row, col]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
                if layer is not None:
                    ax.imshow(np.ma.masked_where(~layer, layer), cmap="autumn" if col == 2 else "winter",
                              alpha=0.45, interpolation="nearest")  # fmt: skip
                ax.set_title(f"{name}: {title}" + (f" (Dice {dice:.3f})" if col == 2 else ""), fontsize=8)
                ax.axis("off")
    run = result.run
    fig.suptitle(f"{run.dataset} {run.shots}-shot seed {run.seed}, {run.method}: best / median / worst test case")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

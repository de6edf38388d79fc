"""The volumetric few-shot experiment: test volumes, scoring in 3D at each volume's spacing, size priors.

A run trains with the bundle's own volume command (``configs/train.json`` + ``configs/datasets/decathlon.json``)
and segments the test volumes with its own volume inference (``configs/inference.json`` +
``configs/volumes.json``); this module prepares the test folder and scores the written NIfTI files
against the label maps: 3D Dice and HD95 (mm) per structure, with MONAI's metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from bundle.atomic import atomic_path, write_json_atomically
from bundle.experiments.summary import write_markdown_report

PROJECT = Path(__file__).resolve().parents[2]


def crop_to_structures(
    items: Sequence[dict], out_dir: str | os.PathLike, values: Sequence[int], margin: int = 5
) -> list[dict]:
    """Copies of the test volumes (and labels) cut along the slice axis (the last) to the slices holding
    any of ``values``, plus ``margin`` slices on each side; affines follow the cut (nibabel's slicer).

    The few-shot CT protocols score only the slices around the organs; cutting the volumes before
    inference does the same with the bundle's own command and keeps the encoder's work bounded.
    Written once (kept when present).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    cropped = []
    for item in items:
        name = str(item["id"])
        image_path, label_path = out / "images" / f"{name}.nii.gz", out / "labels" / f"{name}.nii.gz"
        record = out / f"{name}.json"
        if not record.is_file():
            label = nib.load(item["label"])
            data = np.asarray(label.dataobj)
            slices = np.where(np.isin(np.rint(data), list(values)).any(axis=(0, 1)))[0]
            z0 = max(int(slices.min()) - margin, 0)
            z1 = min(int(slices.max()) + margin + 1, data.shape[2])
            for src, dst in ((item["image"], image_path), (item["label"], label_path)):
                with atomic_path(dst, suffix=".nii.gz") as tmp:
                    nib.save(nib.load(src).slicer[:, :, z0:z1], tmp)
            write_json_atomically({"id": name, "slices": [z0, z1], "depth": int(data.shape[2])}, record)
        cropped.append({"image": str(image_path), "label": str(label_path), "id": name})
    return cropped


def score_volume(
    pred_path: str | os.PathLike, label_path: str | os.PathLike, structures: Mapping[str, int]
) -> dict[str, dict[str, float]]:
    """3D Dice and HD95 (mm, at the label's spacing) of each structure; the prediction holds classes
    1..C in the order of ``structures``, the label map the structures' own values."""
    pred_img, label_img = nib.load(pred_path), nib.load(label_path)
    if pred_img.shape != label_img.shape or not np.allclose(pred_img.affine, label_img.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: not on the grid of {label_path} ({pred_img.shape} vs {label_img.shape})")
    pred = np.rint(np.asarray(pred_img.dataobj)).astype(np.int64)
    label = np.rint(np.asarray(label_img.dataobj)).astype(np.int64)
    spacing = [float(s) for s in label_img.header.get_zooms()[:3]]
    scores = {}
    for cls, (name, value) in enumerate(structures.items(), start=1):
        p = torch.from_numpy(pred == cls)[None, None].float()
        g = torch.from_numpy(label == int(value))[None, None].float()
        dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
        hd95 = float("nan")
        if p.any() and g.any():
            hd95 = float(
                compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)[0, 0]
            )
        scores[name] = {
            "dice": dice,
            "hd95_mm": hd95,
            "pred_ml": float(p.sum()) * float(np.prod(spacing)) / 1000,
            "true_ml": float(g.sum()) * float(np.prod(spacing)) / 1000,
        }
    return scores


def score_folder(
    pred_dir: str | os.PathLike, items: Sequence[dict], structures: Mapping[str, int], out_file: str | os.PathLike
) -> dict:
    """Score every test volume's prediction ``pred_dir/<id>.nii.gz``; write and return the per-case table."""
    cases = {str(i["id"]): score_volume(Path(pred_dir) / f"{i['id']}.nii.gz", i["label"], structures) for i in items}
    result = summarise_cases(cases, structures)
    write_json_atomically(result, out_file)
    return result


def summarise_cases(cases: Mapping[str, Mapping[str, dict]], structures: Mapping[str, int]) -> dict:
    """``score_folder``'s table from per-case scores: the mean Dice (and HD95) of each structure over the
    cases, and the mean over structures."""
    names = list(structures)
    mean = {n: float(np.mean([c[n]["dice"] for c in cases.values()])) for n in names}
    return {
        "structures": dict(structures),
        "cases": {case: dict(c) for case, c in cases.items()},
        "mean_dice": mean,
        "mean_dice_all": float(np.mean(list(mean.values()))),
        "mean_hd95_mm": {n: float(np.nanmean([c[n]["hd95_mm"] for c in cases.values()])) for n in names},
    }


def load_score(path: str | os.PathLike) -> dict:
    """A scored run (``score_folder``'s file)."""
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class VolumeDataSet:
    """A volumetric few-shot benchmark: its structures, intensities, shots and published anchors."""

    name: str
    structures: dict[str, int]
    modality: str
    shots: tuple[int, ...]
    test_size: int = 20
    ct_window: tuple[float, float] | None = None  # (centre, width) in HU
    crop_margin: int | None = None  # test volumes cut to the structures' slices +- this; None: whole volumes
    anchors: dict[str, list[float]] = field(default_factory=dict)  # method -> Dice % per structure (+ mean)


VOLUME_DATASETS: dict[str, VolumeDataSet] = {
    "btcv": VolumeDataSet(
        "btcv",
        {"liver": 6, "spleen": 1, "left_kidney": 3, "right_kidney": 2},
        "ct",
        (1, 2, 4),
        ct_window=(75.0, 400.0),  # the SABS volumes hold HU clipped to [-125, 275]: this window is that range
        crop_margin=5,
        anchors={
            "SSL-ALPNet": [78.3, 71.0, 72.4, 71.8, 73.4],
            "GMRD": [79.6, 78.3, 81.7, 74.5, 78.5],
            "FoB+SAM": [86.5, 84.5, 87.3, 86.5, 86.2],
            "AM-SAM": [87.3, 87.1, 84.4, 86.0, 86.2],
        },
    ),
    "hippocampus": VolumeDataSet("hippocampus", {"anterior": 1, "posterior": 2}, "mr", (1, 4)),
}


@dataclass(frozen=True)
class VolumeVariant:
    """How a volume run differs from plain slice-wise BLO-SAM: config overrides, and what the report says."""

    name: str
    description: str
    overrides: dict = field(default_factory=dict)
    per_structure: bool = False  # True: one binary model per structure, each scored on its own structure


VARIANTS: dict[str, VolumeVariant] = {
    v.name: v
    for v in (
        VolumeVariant("blo-sam", "the default (a class's Dice term counted on the slices holding it)"),
        VolumeVariant("blo-sam-2.5d", "neighbouring slices as the encoder's channels", {"slice_context": 1}),
        # SABS BTCV's header points the anterior-posterior axis the wrong way: flipped, its slices are the right
        # way up
        VolumeVariant("blo-sam-flipped", "every slice upside down (`--slice_flip_vertical`)",
                      {"slice_flip_vertical": True}),  # fmt: skip
        VolumeVariant("blo-sam-dicece", "MONAI's DiceCELoss (every class scored on every slice)",
                      {"dice_present_only": False}),  # fmt: skip
        VolumeVariant("blo-sam-balanced", "the slices of rarer structures repeated so each is drawn about equally "
                      "often (`--slice_class_balance`)", {"slice_class_balance": True}),  # fmt: skip
        VolumeVariant("joint", "one level: decoder and prompt trained together on every support slice "
                      "(`--method joint`, the images' default)", {"method": "joint"}),  # fmt: skip
        VolumeVariant("joint-augmented", "`joint` with a bank of 4 seeded views per support slice (small affine "
                      "and contrast changes, no flips: the kidneys are lateral; `--augmentation radiograph_lateral "
                      "--augmentation_bank 4`)",
                      {"method": "joint", "augmentation": "radiograph_lateral", "augmentation_bank": 4}),  # fmt: skip
        VolumeVariant("blo-sam-per-organ", "one binary model per structure, each scored on its own structure, as "
                      "the few-shot CT papers' episodes are", per_structure=True),  # fmt: skip
    )
}
# variant settings the inference configs do not have
TRAINING_ONLY = {"dice_present_only", "slice_class_balance", "method", "augmentation", "augmentation_bank"}


@dataclass(frozen=True)
class VolumeRun:
    """One cell: data set x k support volumes x seed x variant."""

    dataset: str
    shots: int
    seed: int
    variant: str = "blo-sam"

    def folder(self, root: Path) -> Path:
        return root / self.dataset / f"{self.shots}shot" / f"seed{self.seed}" / self.variant

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.shots}-shot seed {self.seed} {self.variant}"


@dataclass
class VolumeSettings:
    """What every volume run shares."""

    root: Path
    dataset_dirs: dict[str, str]
    iterations: int = 300
    embedding_cache_dir: str | None = None
    slice_dir: str | None = None
    extra_overrides: dict = field(default_factory=dict)
    eval_ids: tuple[str, ...] = ()  # development: score on these pool volumes instead of the test split


def test_items(data: VolumeDataSet, dataset_dir: str, root: Path, eval_ids: Sequence[str] = ()) -> list[dict]:
    """The test volumes (the last ``test_size`` sorted ids), cut as the protocol says (``crop_margin``).

    ``eval_ids``: development volumes from the support pool instead (choosing settings without looking at
    the test split; their labels are extra labels, so such scores are never a k-shot result).
    """
    from bundle.data.volumes import decathlon_datalist

    items = decathlon_datalist(dataset_dir)
    pool, test = items[: -data.test_size], items[-data.test_size :]
    folder = "test"
    if eval_ids:
        chosen = [item for item in pool if str(item["id"]) in set(eval_ids)]
        unknown = sorted(set(eval_ids) - {str(item["id"]) for item in chosen})
        if unknown:
            raise ValueError(f"{data.name}: development volumes must come from the support pool; not there: {unknown}")
        test, folder = chosen, "dev-" + hashlib.sha1(" ".join(sorted(eval_ids)).encode()).hexdigest()[:8]
    if data.crop_margin is None:
        return link_volumes(test, root / data.name / folder)
    return crop_to_structures(test, root / data.name / folder, list(data.structures.values()), data.crop_margin)


def support_ids(run: VolumeRun, dataset_dir: str) -> set[str]:
    """The ids of the support volumes the training command draws for ``run`` (the same split call)."""
    from bundle.data import few_shot_split
    from bundle.data.volumes import decathlon_datalist

    split = few_shot_split(decathlon_datalist(dataset_dir), VOLUME_DATASETS[run.dataset].test_size, run.shots,
                           run.seed, min_shots=1)  # fmt: skip
    return {str(item["id"]) for item in split.lower + split.upper}


def link_volumes(items: Sequence[dict], out_dir: str | os.PathLike) -> list[dict]:
    """The volumes (and labels) as links in ``out_dir/images`` and ``out_dir/labels``: a folder holding
    exactly these volumes, which the volume command segments (not the data set's whole image folder)."""
    out = Path(out_dir)
    linked = []
    for item in items:
        paths = {}
        for key, sub in (("image", "images"), ("label", "labels")):
            source = Path(item[key]).resolve()
            target = out / sub / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_symlink() or target.resolve() != source:
                target.unlink(missing_ok=True)
                target.symlink_to(source)
            paths[key] = str(target)
        linked.append({**item, **paths})
    return linked


def _intensity(data: VolumeDataSet) -> dict:
    return {"modality": data.modality, **({"ct_window": list(data.ct_window)} if data.ct_window else {})}


# the segmenting passes of every run, scored on the same test volumes with the same model
PASSES: dict[str, dict[str, bool]] = {
    "pred": {"size_constraint": False, "token_prior": False},
    "pred_size": {"size_constraint": True, "token_prior": False},
    "pred_tokens": {"size_constraint": False, "token_prior": True},
}


def volume_commands(run: VolumeRun, settings: VolumeSettings, input_dir: str) -> dict[str, dict]:
    """Training (``train.json`` + ``datasets/decathlon.json``) and inference (``inference.json`` +
    ``volumes.json``: plain, with the size constraint, with the token prior) of ``run``: config files and
    overrides.

    Keys ``training`` and the :data:`PASSES`; a per-structure variant has one model per structure, keyed
    ``training/<name>``, ``pred/<name>``, ..., each in its own sub-folder ``<name>/``.
    """
    data = VOLUME_DATASETS[run.dataset]
    folder = run.folder(settings.root)
    variant = VARIANTS[run.variant]
    # what the model was built with (the prompt kind, the slicing, the intensities) goes to the segmenting
    # commands as well: the variant's overrides and the runner's --set items, less the training-only ones
    shared = {**variant.overrides, **settings.extra_overrides}
    common = {**_intensity(data), **{k: v for k, v in shared.items() if k not in TRAINING_ONLY}}
    if variant.per_structure:
        parts = {name: ({name: value}, folder / name) for name, value in data.structures.items()}
    else:
        parts = {"": (dict(data.structures), folder)}
    cache = (
        f"$bundle.networks.EmbeddingCache({settings.embedding_cache_dir!r})" if settings.embedding_cache_dir else None
    )
    configs = PROJECT / "configs"
    commands = {}
    for part, (structures, out) in parts.items():
        suffix = f"/{part}" if part else ""
        commands["training" + suffix] = {
            "files": [str(configs / "train.json"), str(configs / "datasets/decathlon.json")],
            "overrides": {
                "dataset_dir": settings.dataset_dirs[run.dataset],
                "structures": structures,
                "shots": run.shots,
                "test_size": data.test_size,
                "seed": run.seed,
                "iterations": settings.iterations,
                "method": "blo-sam",  # bi-level unless the variant says otherwise, whatever train.json's default
                "ckpt_dir": str(out / "models"),
                "output_dir": str(out / "train"),
                **({"embedding_cache_dir": settings.embedding_cache_dir} if settings.embedding_cache_dir else {}),
                **({"slice_dir": settings.slice_dir} if settings.slice_dir else {}),
                **common,
                **variant.overrides,
                **settings.extra_overrides,
            },
        }
        for name, switches in PASSES.items():
            commands[name + suffix] = {
                "files": [str(configs / "inference.json"), str(configs / "volumes.json")],
                "overrides": {
                    "input_dir": input_dir,
                    "ckpt": str(out / "models" / "model.pt"),
                    **({"embedding_cache": cache} if cache else {}),
                    **common,
                    "output_dir": str(out / name),
                    **switches,
                },
            }
            if switches["token_prior"]:  # the record says which balance its token pass ran at (token_pass_scores)
                balance = common.get("token_prior_balance", _default_token_balance())
                commands[name + suffix]["overrides"]["token_prior_balance"] = float(balance)
    return commands


def execute_volume_run(run: VolumeRun, settings: VolumeSettings) -> dict:
    """Train, segment the test volumes (plain, with the size constraint, with the token prior) and score; skipped when
    ``done.json`` exists. Peak memory and wall time of each command are recorded (GNU ``time``)."""
    from bundle.commands import bundle_args, run_bundle

    folder = run.folder(settings.root)
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    data = VOLUME_DATASETS[run.dataset]
    if settings.eval_ids:
        support = support_ids(run, settings.dataset_dirs[run.dataset])
        if support & set(settings.eval_ids):
            raise ValueError(f"{run.label}: development volumes {sorted(support & set(settings.eval_ids))} are "
                             f"support volumes of this run ({sorted(support)}); score on others")  # fmt: skip
    items = test_items(data, settings.dataset_dirs[run.dataset], settings.root, settings.eval_ids)
    input_dir = str(Path(items[0]["image"]).parent)
    folder.mkdir(parents=True, exist_ok=True)
    commands = volume_commands(run, settings, input_dir)
    write_json_atomically(commands, folder / "command.json")
    record: dict = {"run": run.__dict__, "test_volumes": len(items)}
    parts: dict[str, dict[str, dict]] = {name: {} for name in PASSES}  # per-structure scores to merge
    for key, command in commands.items():
        stage, _, part = key.partition("/")
        name = key.replace("/", "_")
        usage, log_file = folder / f"{name}.usage", folder / f"{name}.log"
        args = bundle_args("run training" if stage == "training" else "run", command["files"], command["overrides"])
        with open(log_file, "a") as log:
            try:
                run_bundle(args, PROJECT, log=log, usage=usage)
            except RuntimeError as err:
                tail = log_file.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{run.label}: {key} failed; see {log_file}:\n" + "\n".join(tail)) from err
        peak_kib, wall = usage.read_text().split()[-2:]
        record[key] = {"seconds": float(wall), "peak_rss_mib": round(int(peak_kib) / 1024, 1)}
        if stage != "training":
            out = Path(command["overrides"]["output_dir"])
            structures = {part: data.structures[part]} if part else data.structures
            scores = score_folder(out, items, structures, out.parent / f"{stage}_scores.json")
            record[key]["mean_dice"] = scores["mean_dice_all"]
            if part:
                parts[stage][part] = scores
    if parts["pred"]:  # one model per structure: each scored on its own; the run's table and costs summed up
        for stage in ("training", *PASSES):
            steps = [record[k] for k in commands if k.partition("/")[0] == stage]
            record[stage] = {"seconds": sum(r["seconds"] for r in steps),
                             "peak_rss_mib": max(r["peak_rss_mib"] for r in steps)}  # fmt: skip
            if stage in parts:
                per = parts[stage]
                cases = {c: {p: per[p]["cases"][c][p] for p in per} for c in per[next(iter(per))]["cases"]}
                scores = summarise_cases(cases, data.structures)
                write_json_atomically(scores, folder / f"{stage}_scores.json")
                record[stage]["mean_dice"] = scores["mean_dice_all"]
    write_json_atomically(record, done)
    return record


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _default_token_balance() -> float:
    """``token_prior_balance`` of ``configs/volumes.json`` as shipped: the balance a token pass runs at unless told."""
    return float(json.loads((PROJECT / "configs" / "volumes.json").read_text())["token_prior_balance"])


def token_pass_scores(folder: Path) -> dict[float, dict]:
    """A run's token-prior scores by vote balance (gamma): its ``pred_tokens`` pass at the balance its commands
    name, and any later rescoring of the same model on the same test volumes, ``pred_tokens_g<gamma>``
    (docs/results/volumes/token_prior_balanced/).

    Commands written before bundle 0.8.1 name no balance: every such run here ran at gamma 0 (the runner of 0.8.0,
    whose default was 0.5, made none). A per-structure run's commands (``pred_tokens/<name>``) must agree.

    Raises:
        ValueError: the per-structure commands name different balances, or two passes have the same balance.
    """
    found: dict[float, dict] = {}
    if (folder / "pred_tokens_scores.json").is_file():
        command = json.loads((folder / "command.json").read_text()) if (folder / "command.json").is_file() else {}
        named = {float(c.get("overrides", {}).get("token_prior_balance", 0.0))
                 for key, c in command.items() if key.partition("/")[0] == "pred_tokens"}  # fmt: skip
        if len(named) > 1:
            raise ValueError(f"{folder}: the token passes' commands name different balances {sorted(named)}")
        found[named.pop() if named else 0.0] = load_score(folder / "pred_tokens_scores.json")
    for path in sorted(folder.glob("pred_tokens_g*_scores.json")):
        match = re.fullmatch(r"pred_tokens_g([0-9.]+(?:e-?[0-9]+)?)_scores\.json", path.name)
        if match is None:  # another pass whose name starts so (pred_tokens_gated_...): not a rescoring
            continue
        balance = float(match.group(1))
        if balance in found:
            raise ValueError(f"{folder}: two token passes at balance {balance:g} ({path.name} and another)")
        found[balance] = load_score(path)
    return dict(sorted(found.items()))


def collect_volume_runs(runs: Sequence[VolumeRun], root: Path) -> list[tuple[VolumeRun, dict, dict, dict, dict]]:
    """Finished runs with their record and scores: plain, with the size constraint, and with the token prior by
    vote balance (:func:`token_pass_scores`; empty for runs made before the token prior existed)."""
    found = []
    for run in runs:
        folder = run.folder(root)
        if (folder / "done.json").is_file():
            found.append(
                (run, json.loads((folder / "done.json").read_text()), load_score(folder / "pred_scores.json"),
                 load_score(folder / "pred_size_scores.json"), token_pass_scores(folder))
            )  # fmt: skip
    return found


def volume_report(runs: Sequence[VolumeRun], settings: VolumeSettings, report: Path) -> str:
    """The markdown report of the volumetric experiment and its figures (in ``<report stem>/``)."""
    done = collect_volume_runs(runs, settings.root)
    fig_dir = report.parent / report.stem
    lines = [
        "# Volumetric few-shot results",
        "",
        "Backbone **LiteMedSAM** (the bundle's offline default), slice-wise BLO-SAM: slices of the k support "
        "volumes are the samples, D1/D2 split by volume (with k = 1 both levels train on the one volume), "
        f"empty slices kept at 0.2 per slice with a structure, {settings.iterations} iterations, batch 2 per "
        "level. All classes of a data set are trained at once (one multi-class model per run), except in "
        "`blo-sam-per-organ`. "
        "3D Dice and HD95 (mm, at each volume's spacing) per structure; a cell is the mean ± std over seeds of "
        "the per-run mean over test volumes. 'k labels' = k labelled volumes in all (no validation volume). "
        "Variants: " + ", ".join(f"`{v.name}` {v.description}" for v in VARIANTS.values()) + ".",
        "",
        f"Finished runs: {len(done)} of {len(runs)} planned.",
        "",
    ]
    for name, data in VOLUME_DATASETS.items():
        mine = [d for d in done if d[0].dataset == name]
        if not mine:
            continue
        organs = list(data.structures)
        lines += [f"## {name}", "", _protocol(data), ""]
        lines += [
            "The bundle segments with the token prior (`--token_prior auto`, the default from bundle 0.9: on when the "
            "checkpoint has a token bank). The organ columns and the bold mean below are the plain pass of the same "
            "models (`--token_prior false`); the last columns are the passes with the size constraint and with the "
            "token prior.",
            "",
        ]
        default = _default_token_balance()
        gammas = sorted({g for *_, t in mine for g in t}) or [default]
        header = (
            "| k | variant | seeds | "
            + " | ".join(organs)
            + " | plain: mean | size constraint on: mean | "
            + " | ".join(f"token prior on, balance {g:g}{' (default)' if g == default else ''}: mean" for g in gammas)
            + " |"
        )
        lines += [header, "|" + "---|" * (len(organs) + 5 + len(gammas))]
        for k, variant, cell in _cells(mine):
            per = [_mean_std([100 * s["mean_dice"][o] for _, _, s, _, _ in cell]) for o in organs]
            mean = _mean_std([100 * s["mean_dice_all"] for _, _, s, _, _ in cell])
            sized = _mean_std([100 * z["mean_dice_all"] for _, _, _, z, _ in cell])
            voted = []
            for gamma in gammas:
                tokens = [100 * t[gamma]["mean_dice_all"] for *_, t in cell if gamma in t]
                voted.append(_mean_std(tokens))
                if 0 < len(tokens) < len(cell):  # runs without that pass (made before it existed): say so
                    voted[-1] += f" ({len(tokens)} of {len(cell)} seeds)"
            row = f"| {k} | {variant} | {len(cell)} | " + " | ".join(per) + f" | **{mean}** | {sized} | "
            lines.append(row + " | ".join(voted) + " |")
        voted_cells = [(k, v, c) for k, v, c in _cells(mine) if any(default in t for *_, t in c)]
        if voted_cells:  # the bundle's default token pass, organ by organ, over the seeds that have it
            lines += ["", f"With the token prior on (balance {default:g}, the default): Dice % (HD95 mm) per organ", ""]
            lines += ["| k | variant | seeds | " + " | ".join(organs) + " | mean |", "|" + "---|" * (len(organs) + 4)]
            for k, variant, cell in voted_cells:
                scores = [t[default] for *_, t in cell if default in t]
                per = [f"{_mean_std([100 * t['mean_dice'][o] for t in scores])} "
                       f"({_mean_std([t['mean_hd95_mm'][o] for t in scores])})" for o in organs]  # fmt: skip
                mean = _mean_std([100 * t["mean_dice_all"] for t in scores])
                lines.append(f"| {k} | {variant} | {len(scores)} | " + " | ".join(per) + f" | **{mean}** |")
        lines += ["", "HD95 (mm), plain pass (no size constraint, no token prior):", ""]
        lines += ["| k | variant | " + " | ".join(organs) + " |", "|" + "---|" * (len(organs) + 2)]
        for k, variant, cell in _cells(mine):
            per = [_mean_std([s["mean_hd95_mm"][o] for _, _, s, _, _ in cell]) for o in organs]
            lines.append(f"| {k} | {variant} | " + " | ".join(per) + " |")
        if data.anchors:
            lines += ["", "Published 1-shot Dice on the same SABS volumes (their protocols differ in detail):", ""]
            lines += ["| method | " + " | ".join(organs) + " | mean |", "|" + "---|" * (len(organs) + 2)]
            lines += [f"| {m} | " + " | ".join(f"{v:.1f}" for v in vals) + " |" for m, vals in data.anchors.items()]
        lines += ["", "Cost per run (2-core CPU; see the note on what else was running):", ""]
        lines += ["| k | seed | variant | train s | train peak MiB | segment s / volume (see the reading) | "
                  "segment peak MiB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for run, record, *_ in mine:
            # a pass run in parts, one of them stopped before its end, has no time for all its volumes
            timed = not record["pred"].get("parts_without_time")
            per_volume = f"{record['pred']['seconds'] / max(record['test_volumes'], 1):.1f}" if timed else "–"
            lines.append(
                f"| {run.shots} | {run.seed} | {run.variant} | {record['training']['seconds']:.0f} | "
                f"{record['training']['peak_rss_mib']:.0f} | {per_volume} | {record['pred']['peak_rss_mib']:.0f} |"
            )
        made = [dice_vs_k(mine, data, fig_dir / f"dice_vs_k_{name}.png")]
        first = min(mine, key=lambda d: (d[0].seed, -d[0].shots))
        made.append(overlay_planes(first[0], settings, fig_dir / f"planes_{name}.png"))
        lines += ["", "Figures:", ""] + [f"- `{p.relative_to(report.parent)}`" for p in made if p is not None]
        lines.append("")
    return write_markdown_report(lines, report)


def _cells(done: list) -> list[tuple[int, str, list]]:
    """``done`` (as :func:`collect_volume_runs` gives it) grouped by k and variant, in table order."""
    cells = []
    for k in sorted({r.shots for r, *_ in done}):
        for variant in VARIANTS:
            cell = [d for d in done if d[0].shots == k and d[0].variant == variant]
            if cell:
                cells.append((k, variant, cell))
    return cells


def _protocol(data: VolumeDataSet) -> str:
    window = f"CT window centre {data.ct_window[0]:g} / width {data.ct_window[1]:g} HU" if data.ct_window else (
        "MR: each volume's 0.5-99.5 percentiles")  # fmt: skip
    crop = (
        f"Test volumes are cut along z to the slices holding any of the structures, plus {data.crop_margin} "
        "slices on each side (the few-shot CT protocols score organ slices only); the whole cut volume is "
        "segmented by the bundle's volume command and scored."
        if data.crop_margin is not None
        else "Whole test volumes are segmented and scored."
    )
    return (
        f"Structures (label value): {', '.join(f'{k} ({v})' for k, v in data.structures.items())}. {window}. "
        f"Test: the last {data.test_size} sorted volumes; the k support volumes are drawn (seeded) from the "
        f"others. {crop}"
    )


def token_prior_by_k(done: list, variant: str, balance: float) -> dict[int, list[float]]:
    """Per k, the mean Dice (%) with the token prior at vote ``balance`` of each finished run of ``variant``
    (``done`` as :func:`collect_volume_runs` gives it), only for the k whose runs all have that pass: a point over
    fewer seeds than the plain mean's would read as the same kind of number (the table says "n of m seeds")."""
    by_k: dict[int, list] = {}
    for run, *_, tokens in done:
        if run.variant == variant:
            by_k.setdefault(run.shots, []).append(tokens.get(balance))
    return {k: [100 * t["mean_dice_all"] for t in ts] for k, ts in sorted(by_k.items()) if None not in ts}


def dice_vs_k(done: list, data: VolumeDataSet, path: Path) -> Path:
    """Mean ± std Dice over seeds against k: per structure and their mean for the default variant (or, when
    it has no finished run, the variant with the most), with its mean with the token prior (dotted; the default
    vote balance bold, others faint) where every seed has that pass, and the mean alone (dashed) for the other
    variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4))
    variants = [v for v in VARIANTS if any(d[0].variant == v for d in done)]
    main = "blo-sam" if "blo-sam" in variants else max(variants, key=lambda v: sum(d[0].variant == v for d in done))
    ks: set[int] = set()
    for variant in [main] + [v for v in variants if v != main]:
        runs = [d for d in done if d[0].variant == variant]
        shots = sorted({d[0].shots for d in runs})
        ks |= set(shots)
        for organ in [*data.structures, "mean"] if variant == main else ["mean"]:
            stats = []
            for k in shots:
                vals = [100 * (s["mean_dice_all"] if organ == "mean" else s["mean_dice"][organ])
                        for r, _, s, *_ in runs if r.shots == k]  # fmt: skip
                stats.append((np.mean(vals), np.std(vals)))
            ax.errorbar(shots, [m for m, _ in stats], yerr=[e for _, e in stats], marker="o", capsize=3,
                        label=f"{organ}, plain ({variant})", linewidth=2.5 if organ == "mean" else 1,
                        linestyle="-" if variant == main else "--")  # fmt: skip
    default = _default_token_balance()
    for i, balance in enumerate(sorted({g for *_, t in done for g in t})):
        voted = token_prior_by_k(done, main, balance)
        if voted:
            means, stds = [np.mean(v) for v in voted.values()], [np.std(v) for v in voted.values()]
            ax.errorbar(list(voted), means, yerr=stds, marker="sD^v"[i % 4], color="k", capsize=3, linestyle=":",
                        linewidth=2.5 if balance == default else 1, alpha=1.0 if balance == default else 0.5,
                        label=f"mean, token prior on, balance {balance:g} ({main})"
                        + (" (the default)" if balance == default else ""))  # fmt: skip
    if data.anchors:
        for method, vals in data.anchors.items():
            ax.scatter([1], [vals[-1]], marker="x", s=40, zorder=3, label=f"{method} (1-shot mean, published)")
    ax.set_xticks(sorted(ks) or [1])
    ax.set_xlabel("labelled volumes (k)")
    ax.set_ylabel("3D Dice %")
    ax.set_title(f"{data.name}: Dice against k (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the plot: no line hidden
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def overlay_planes(run: VolumeRun, settings: VolumeSettings, path: Path) -> Path | None:
    """Axial, coronal and sagittal planes through the first test volume's structures: the image with the
    reference (solid) and predicted (dashed) outlines of each structure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.data.volumes import decathlon_datalist

    data = VOLUME_DATASETS[run.dataset]
    dataset_dir = settings.dataset_dirs.get(run.dataset, "")
    first = decathlon_datalist(dataset_dir)[-data.test_size :][0]  # the first test volume, as test_items slices
    pred_path = run.folder(settings.root) / "pred" / f"{first['id']}.nii.gz"
    if not pred_path.is_file():  # a record without predictions (the committed one): keep the figure, cut nothing
        return path if path.is_file() else None
    items = test_items(data, dataset_dir, settings.root)

    def canonical(file: str | Path) -> nib.Nifti1Image:  # RAS arrays, so the planes can be shown upright
        return nib.as_closest_canonical(nib.load(file))

    image = np.asarray(canonical(items[0]["image"]).dataobj, dtype=np.float32)
    label = np.rint(np.asarray(canonical(items[0]["label"]).dataobj)).astype(int)
    pred = np.asarray(canonical(pred_path).dataobj).astype(int)
    zooms = canonical(items[0]["image"]).header.get_zooms()[:3]
    inside = np.argwhere(np.isin(label, list(data.structures.values())))
    centre = inside.mean(axis=0).round().astype(int)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    colours = plt.cm.tab10(np.arange(len(data.structures)))
    planes = (("axial", 2), ("coronal", 1), ("sagittal", 0))

    def upright(volume: np.ndarray, axis: int) -> np.ndarray:
        """Radiological display: anterior / superior at the top, the patient's right on the left."""
        plane = np.flipud(np.take(volume, centre[axis], axis=axis).T)
        return np.fliplr(plane) if axis != 0 else plane

    for ax, (title, axis) in zip(axes, planes, strict=True):
        img, ref, out = upright(image, axis), upright(label, axis), upright(pred, axis)
        rows, cols = [z for i, z in enumerate(zooms) if i != axis][::-1]
        ax.imshow(img, cmap="gray", aspect=rows / cols)
        for c, value in enumerate(data.structures.values()):
            for mask, style in ((ref == value, "solid"), (out == c + 1, "dashed")):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colours[c]], linestyles=style,
                               linewidths=1.2)  # fmt: skip
        ax.set_title(f"{title} (index {centre[axis]})")
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[c], label=o) for c, o in enumerate(data.structures)]
    handles += [
        plt.Line2D([], [], color="k", label="reference"),
        plt.Line2D([], [], color="k", ls="--", label="BLO-SAM"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"{items[0]['id']}: {run.label}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path

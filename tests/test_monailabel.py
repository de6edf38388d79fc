"""MONAI Label: an exported task bundle as a `monaibundle` model and trainer.

Without MONAI Label (always run): the exported ``configs/train.json`` has the config ids MONAI Label's
bundle trainer (``monailabel.tasks.train.bundle.BundleTrainTask``) and MONAI's train workflow use, and
a task trains from what that trainer passes (its labelled studies without ids, 0/1 and 0/255 labels, a
held-out validation part, a checkpoint loader in ``train#handlers``); fewer than 2 labels are refused
with one line; the export leaves no half-written folder.

End to end with the real MONAI Label server:

A bundle is trained once on the shipped JSRT sample (lungs, 4 shots, 40 iterations) and exported
twice: as a 2D task (PNG studies) and as a volume task (NIfTI studies, segmented slice by slice; the
study is a volume stacked from the sample's test radiographs, so it has a real ground truth). For
each, ``monailabel start_server`` (through ``scripts/monailabel_app.sh``) runs on 127.0.0.1, the
test asks ``GET /info/`` until our model, its label and its dimension are listed, segments the
study with ``POST /infer/<model>?image=<id>&output=image`` and checks the mask: the study's size,
labels {0, 1}, Dice against the ground truth, and the same mask as our own inference command gives. The server runs in its own process group, is killed however the test
ends, and writes only inside the test's temporary folder.

MONAI Label lives in its own environment (numpy pin): ``MONAILABEL_PYTHON`` or
``.monailabel-venv/bin/python``; without one the test skips. See docs/monailabel.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.serving import Server, monailabel_server

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundle" / "sample_data" / "jsrt"
MONAILABEL_PYTHON = Path(os.environ.get("MONAILABEL_PYTHON", ROOT / ".monailabel-venv" / "bin" / "python"))
DICE_FLOOR = 0.7  # 4 shots, 40 iterations on the downsized sample: validation Dice about 0.88 at 30
CONFIGS = ["configs/train.json", "configs/datasets/jsrt.json"]


def _run(*args: str, python: Path | str = sys.executable) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(python), *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@contextlib.contextmanager
def _serving(
    task: Path, studies: Path, log_file: Path, work: Path | None = None, env: dict | None = None
) -> Iterator[tuple[str, dict]]:
    """Serve ``task`` from MONAI Label over ``studies`` (``bundle.serving.monailabel_server``: work folder
    ``work`` or the script's temporary one); yield the base URL and ``GET /info/`` once the task's models
    are listed. Always stops the server (its whole process group)."""
    with monailabel_server(task, studies, log_file, work, env, python=MONAILABEL_PYTHON) as server:
        yield server.base, server.info


def _infer(base: str, model: str, image_id: str, extension: str, params: dict | None = None) -> tuple[bytes, str]:
    """``POST /infer/<model>?image=<id>&output=image`` (with request ``params``, e.g. a box): the mask
    file's bytes and content type."""
    return Server(base, {}, 0.0).infer(model, image_id, extension, params)


def _server_infer(
    task: Path, studies: Path, image_id: str, extension: str, work: Path
) -> tuple[dict, bytes, str, float]:
    """Serve ``task`` from MONAI Label over ``studies``; return its /info/ entry and the mask
    ``POST /infer`` answers for ``image_id`` (bytes, content type, seconds). Always stops the server."""
    with _serving(task, studies, work / "server.log", work / "monailabel") as (base, info):
        start = time.time()
        payload, content_type = _infer(base, task.name, image_id, extension)
        return info["models"][task.name], payload, content_type, time.time() - start


def _needs_monailabel() -> None:
    if not MONAILABEL_PYTHON.is_file():
        pytest.skip(
            f"MONAI Label environment not found at {MONAILABEL_PYTHON} " "(set MONAILABEL_PYTHON; docs/monailabel.md)"
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``model.pt`` of a small task trained on the shipped JSRT sample."""
    _needs_monailabel()
    out = tmp_path_factory.mktemp("jsrt_sample")
    _run("-m", "monai.bundle", "run", "training", "--config_file", json.dumps(CONFIGS),
         "--dataset_dir", str(SAMPLE), "--test_size", "6", "--val_size", "4", "--shots", "4",
         "--iterations", "40", "--val_interval", "10", "--flip_prob", "0.0", "--ckpt_dir", str(out / "models"),
         "--output_dir", str(out / "train"), "--embedding_cache_dir", str(out / "cache"))  # fmt: skip
    return out / "models" / "model.pt"


def _export(ckpt: Path, name: str, out: Path, *extra: str) -> Path:
    _run("scripts/export.py", "--name", name, "--ckpt", str(ckpt), "--config_file", *CONFIGS,
         "--out", str(out), "--no_torchscript", "--no_onnx", "--no_zip", *extra)  # fmt: skip
    return out / name


def _our_inference(task: Path, studies: Path, out: Path, python: Path | str = sys.executable) -> None:
    _run("-m", "monai.bundle", "run", "--config_file", str(task / "configs" / "inference.json"),
         "--bundle_root", str(task), "--input_dir", str(studies), "--output_dir", str(out), python=python)  # fmt: skip


def _lungs(image_id: str, size: tuple[int, int]) -> np.ndarray:
    """The SCR ground truth of a sample case (both lungs) at ``size`` (width, height), rows first."""
    lungs = [Image.open(SAMPLE / "masks" / side / f"{image_id}.gif").convert("L").resize(size, Image.NEAREST)
             for side in ("left_lung", "right_lung")]  # fmt: skip
    return np.logical_or(*[np.asarray(m) > 127 for m in lungs])


# with test_size 6 the sample's test split is its last 6 sorted ids: never trained or validated on
TEST_CASES = sorted(p for p in (SAMPLE / "images").iterdir())[-3:]


@pytest.mark.slow
def test_monailabel_server_segments_a_2d_study_with_the_exported_bundle(trained, tmp_path):
    task = _export(trained, "jsrt_sample", tmp_path / "dist")
    studies = tmp_path / "studies"
    studies.mkdir()
    case = TEST_CASES[-1]
    shutil.copy(case, studies / case.name)
    image_id = case.stem
    _our_inference(task, studies, tmp_path / "ours")
    own_mask = np.asarray(Image.open(tmp_path / "ours" / f"{image_id}.png"))

    info, payload, content_type, seconds = _server_infer(task, studies, image_id, ".png", tmp_path)
    assert info["labels"] == {"lung": 1} and info["dimension"] == 2
    mask_file = tmp_path / "monailabel_mask.png"
    mask_file.write_bytes(payload)
    mask = np.asarray(Image.open(mask_file))

    image = np.asarray(Image.open(case))
    dice = _dice(mask > 0, _lungs(image_id, (image.shape[1], image.shape[0])))
    assert content_type == "image/png"
    print(f"MONAI Label /infer/{task.name}?image={image_id}: {content_type}, {len(payload)} bytes, mask {mask.shape} "
          f"{mask.dtype} labels {sorted(np.unique(mask).tolist())}, Dice {dice:.4f}, "
          f"agreement with our inference {np.mean((mask > 0) == (own_mask > 0)):.6f}, {seconds:.1f} s")  # fmt: skip
    assert mask.shape == image.shape[:2]
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert dice > DICE_FLOOR
    np.testing.assert_array_equal(mask > 0, own_mask > 0)


@pytest.mark.slow
def test_monailabel_server_segments_a_volume_slice_by_slice(trained, tmp_path):
    import nibabel as nib

    task = _export(trained, "jsrt_volume", tmp_path / "dist", "--volumes")
    # a volume of three radiographs as slices, in MONAI's 2D axis order (x = column, y = row), as a
    # scanner's axial slices are stored; 0.5 mm pixels, 5 mm apart, off the origin
    slices = [np.asarray(Image.open(c)).T for c in TEST_CASES]
    truth = np.stack(
        [_lungs(c.stem, (s.shape[0], s.shape[1])).T for c, s in zip(TEST_CASES, slices, strict=True)], axis=-1
    )
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    affine[:3, 3] = [-64.0, -64.0, 10.0]
    studies = tmp_path / "studies"
    studies.mkdir()
    image_id = "jsrt_stack"
    nib.save(nib.Nifti1Image(np.stack(slices, axis=-1).astype(np.int16), affine), studies / f"{image_id}.nii.gz")
    _our_inference(task, studies, tmp_path / "ours")
    own = nib.load(tmp_path / "ours" / f"{image_id}.nii.gz")

    info, payload, content_type, seconds = _server_infer(task, studies, image_id, ".nii.gz", tmp_path)
    assert info["labels"] == {"lung": 1} and info["dimension"] == 3
    mask_file = tmp_path / "monailabel_mask.nii.gz"
    mask_file.write_bytes(payload)
    result = nib.load(mask_file)
    mask = np.asarray(result.dataobj)
    dice = [_dice(mask[..., k] > 0, truth[..., k]) for k in range(truth.shape[-1])]
    print(f"MONAI Label /infer/{task.name}?image={image_id}: {content_type}, {len(payload)} bytes, mask {mask.shape} "
          f"{mask.dtype} labels {sorted(np.unique(mask).tolist())}, Dice per slice {np.round(dice, 4).tolist()}, "
          f"agreement with our inference {np.mean((mask > 0) == (np.asarray(own.dataobj) > 0)):.6f}, {seconds:.1f} s")  # fmt: skip
    assert mask.shape == truth.shape
    np.testing.assert_allclose(result.affine, affine, atol=1e-4)
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert min(dice) > DICE_FLOOR
    np.testing.assert_array_equal(mask > 0, np.asarray(own.dataobj) > 0)


# --- the exported task as MONAI Label's trainer runs it (no MONAI Label needed) -------------------------------

KVASIR = ROOT / "bundle" / "sample_data" / "kvasir"
KVASIR_CONFIGS = [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "datasets" / "kvasir.json")]
# what MONAI Label's BundleTrainTask sets (monailabel/tasks/train/bundle.py, BundleConstants) and what
# MONAI's train workflow requires (monai.bundle.properties.TrainProperties)
MONAILABEL_TRAIN_IDS = ("bundle_root", "device", "dataset_dir", "network", "network_def", "train#trainer#max_epochs",
                        "train#dataset#data", "train#handlers", "train#inferer", "validate#dataset#data")  # fmt: skip


@pytest.fixture(scope="module")
def untrained_task(tmp_path_factory) -> Path:
    """An untrained Kvasir task with the small random backbone (``sam_tiny``): fast to train on a CPU."""
    from bundle.export import export_task

    out = tmp_path_factory.mktemp("dist")
    report = export_task(None, KVASIR_CONFIGS, "polyp", out, overrides={"backbone": "sam_tiny"}, torchscript=False,
                         onnx=False, make_zip=False, untrained=True)  # fmt: skip
    return report.folder


def _studies(folder: Path, n_images: int, labels: dict[int, int]) -> list[dict]:
    """A MONAI Label studies folder of the first ``n_images`` Kvasir sample images; image ``i`` in
    ``labels`` gets a PNG label in ``labels/final/`` with foreground value ``labels[i]`` (1 as MONAI
    Label saves, 255 as an image editor does). Returns MONAI Label's list: ``{"image", "label"}``, no id."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels" / "final").mkdir(parents=True, exist_ok=True)
    items = []
    for i, image in enumerate(sorted((KVASIR / "images").iterdir())[:n_images]):
        shutil.copy(image, folder / image.name)
        if i in labels:
            mask = np.asarray(Image.open(KVASIR / "masks" / image.name).convert("L")) > 127
            label = folder / "labels" / "final" / f"{image.stem}.png"
            Image.fromarray(mask.astype(np.uint8) * labels[i]).save(label)
            items.append({"image": str(folder / image.name), "label": str(label)})
    return items


def test_exported_train_config_has_the_ids_monai_label_and_the_train_workflow_use(untrained_task):
    from monai.bundle import ConfigParser
    from monai.bundle.properties import TrainProperties

    train = json.loads((untrained_task / "configs" / "train.json").read_text())
    assert train["train"]["trainer"]["max_epochs"] == 300 and train["iterations"] == "@train#trainer#max_epochs"
    assert (
        train["val_size"] == 0 and train["class_names"] == ["polyp"] and train["augmentation"] == "endoscopy_zoomlarge"
    )
    # MONAI Label runs "run" alone: it starts with the checks and the seeding of "initialize"
    assert train["run"][: len(train["initialize"])] == train["initialize"]
    assert any("set_determinism" in e for e in train["run"]) and train["run"][-1] == train["finalize"][-1]
    parser = ConfigParser()
    parser.read_config(str(untrained_task / "configs" / "train.json"))
    for key in MONAILABEL_TRAIN_IDS:
        assert key in parser, key
    required = [p["id"].replace("::", "#") for p in TrainProperties.values() if p["required"]]
    assert [key for key in required if key not in parser] == []
    meta = json.loads((untrained_task / "configs" / "metadata.json").read_text())
    assert "untrained" in meta["task"] and meta["eval_metrics"] == {}
    assert "not yet" in (untrained_task / "docs" / "README.md").read_text()


# MONAI Label's trainer, as monailabel/tasks/train/bundle.py runs one training: the bundle's train.json with
# its own overrides, through monai.bundle.run; here without MONAI Label (same MONAI API, our environment)
_AS_MONAI_LABEL = """
import json, sys
import monai.bundle
from monai.bundle import ConfigParser

task, train, val, epochs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, task)
config = ConfigParser()
config.read_config(task + "/configs/train.json")
handlers = config.get("train#handlers")
handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": task + "/models/model.pt",
                    "load_dict": {"model": "$@network"}, "strict": False})
monai.bundle.run(run_id="run", init_id=None, final_id=None, meta_file=task + "/configs/metadata.json",
                 config_file=task + "/configs/train.json", **{"bundle_root": task, "device": "cpu",
                 "train#trainer#max_epochs": epochs, "train#dataset#data": train, "train#handlers": handlers,
                 "validate#dataset#data": val})
"""


def _as_monai_label(
    task: Path, train: list[dict], val: list[dict], epochs: int, **env_vars: str
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **env_vars)
    return subprocess.run([sys.executable, "-c", _AS_MONAI_LABEL, str(task), json.dumps(train), json.dumps(val),
                           str(epochs)], env=env, capture_output=True, text=True, check=False)  # fmt: skip


def test_task_trains_on_what_monai_labels_trainer_passes(untrained_task, tmp_path):
    """4 labelled studies of 6 (two labels 0/1, two 0/255), one held out by MONAI Label's val_split:
    all 4 train (2 per level), and models/model.pt is replaced by the new weights (new file time)."""
    task = tmp_path / "polyp"
    shutil.copytree(untrained_task, task)
    items = _studies(tmp_path / "studies", 6, {0: 1, 2: 255, 3: 1, 5: 255})
    model = task / "models" / "model.pt"
    before, mtime = torch_load(model), model.stat().st_mtime_ns
    proc = _as_monai_label(task, items[:3], items[3:], epochs=3)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "D1 (lower level): 2" in proc.stdout and "D2 (upper level): 2" in proc.stdout, proc.stdout[-2000:]
    assert model.stat().st_mtime_ns != mtime
    after = torch_load(model)
    changed = [k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())]
    assert changed and all(("lora" in k or "prompt" in k or "upscal" in k or "hypernet" in k or "output" in k)
                           for k in changed), changed  # fmt: skip
    assert not (task / "models" / "resume.pt").exists()


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("n_labels", [0, 1])
def test_training_refuses_fewer_than_two_labels_in_one_line(untrained_task, tmp_path, n_labels):
    """From MONAI Label's list, and on the command line from a studies folder (``--dataset_dir``)."""
    items = _studies(tmp_path / "studies", 4, dict.fromkeys(range(n_labels), 1))
    proc = _as_monai_label(untrained_task, items, [], epochs=2)
    message = f"error: {n_labels} labelled image(s): bi-level training needs at least 2"
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
                           "--dataset_dir", str(tmp_path / "studies")], cwd=untrained_task, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]


def test_studies_datalist_lists_the_labelled_images_of_a_studies_folder(tmp_path):
    from bundle.data import studies_datalist

    _studies(tmp_path, 5, {1: 1, 4: 255})
    (tmp_path / "labels" / "original").mkdir()
    items = studies_datalist(tmp_path)
    images = sorted((KVASIR / "images").iterdir())
    assert [i["id"] for i in items] == [images[1].stem, images[4].stem]
    assert all(Path(i["label"]).parent == tmp_path / "labels" / "final" for i in items)
    assert studies_datalist(tmp_path / "labels" / "original") == []


def test_export_leaves_no_half_written_folder_and_needs_no_eval_folder(tmp_path, monkeypatch, caplog):
    import bundle.export as export

    out, ckpt = tmp_path / "dist", tmp_path / "model.pt"
    export.untrained_model(KVASIR_CONFIGS, ckpt, overrides={"backbone": "sam_tiny"})
    first = export.export_task(ckpt, KVASIR_CONFIGS, "polyp", out, overrides={"backbone": "sam_tiny"},
                               eval_dir=tmp_path / "eval", torchscript=False, onnx=False, make_zip=False)  # fmt: skip
    assert "no val_mean_dice_raw.csv" in caplog.text and (first.folder / "configs" / "train.json").is_file()
    assert first.folder.stat().st_mode & 0o777 == 0o777 & ~export.current_umask()
    stamp = (first.folder / "models" / "model.pt").stat().st_mtime_ns

    def broken(*args, **kwargs):
        raise RuntimeError("export tool failed")

    monkeypatch.setattr(export, "run_bundle", broken)
    monkeypatch.setattr(export, "onnx_tools_missing", lambda: ["onnxscript"])
    with pytest.raises(RuntimeError, match="export tool failed"):  # ONNX skipped with a warning, TorchScript fails
        export.export_task(None, KVASIR_CONFIGS, "polyp", out, overrides={"backbone": "sam_tiny"}, untrained=True)
    assert "ONNX export skipped: onnxscript not installed" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["polyp"]  # no temporary folder left, the previous export kept
    assert (first.folder / "models" / "model.pt").stat().st_mtime_ns == stamp


# --- the loop in MONAI Label: untrained task, 4 labels, Train, segment the rest, correct (real data) --------

DATA = ROOT.parent / "shared" / "data"
LOOP_STUDIES, LOOP_LABELS = 12, 4
LOOP_ITERATIONS = 100  # MONAI Label's max_epochs: BLO-SAM iterations


def _jsrt_lungs(case: Path, size: tuple[int, int]) -> np.ndarray:
    """The SCR lung masks of a JSRT case (``../shared/data/jsrt``) at ``size`` (width, height)."""
    masks = [Image.open(DATA / "jsrt" / "masks" / side / f"{case.stem}.gif").convert("L").resize(size, Image.NEAREST)
             for side in ("left_lung", "right_lung")]  # fmt: skip
    return np.logical_or(*[np.asarray(m) > 127 for m in masks])


def _kvasir_polyp(case: Path, size: tuple[int, int]) -> np.ndarray:
    """The polyp mask of a Kvasir-SEG case (``../shared/data/kvasir-seg``) at ``size`` (width, height)."""
    mask = Image.open(DATA / "kvasir-seg" / "masks" / case.name).convert("L").resize(size, Image.NEAREST)
    return np.asarray(mask) > 127


# task name -> (its preset, its images, its ground truth)
LOOP_TASKS = {
    "lungs": ("configs/datasets/jsrt.json", DATA / "jsrt" / "images", _jsrt_lungs),
    "polyps": ("configs/datasets/kvasir.json", DATA / "kvasir-seg" / "images", _kvasir_polyp),
}


def _put_label(base: str, image_id: str, label: Path) -> dict:
    """``PUT /datastore/label?image=<id>&tag=final`` with the label file, as 3D Slicer's Submit Label sends it."""
    boundary = "blosam-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename={json.dumps(label.name)}\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + label.read_bytes()
    body += (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}--\r\n'.encode()
    )
    query = urllib.parse.urlencode({"image": image_id, "tag": "final"})
    request = urllib.request.Request(f"{base}/datastore/label?{query}", data=body, method="PUT",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def _post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def _train(base: str, model: str, iterations: int) -> tuple[dict, float]:
    """``POST /train/<model>`` with ``max_epochs`` (BLO-SAM iterations); wait for the end of the run.
    Returns ``GET /train/`` (status, last log lines) and the seconds it took."""
    start = time.time()
    _post_json(f"{base}/train/{model}", {"max_epochs": iterations})
    status: dict = {}
    while time.time() - start < 1800:
        time.sleep(3)
        status = _get(f"{base}/train/")
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
    return status, time.time() - start


def _server_dice(base: str, model: str, cases: list[Path], truth, out: Path, params: dict | None = None) -> list[float]:
    out.mkdir(parents=True, exist_ok=True)
    dice = []
    for case in cases:
        payload, _ = _infer(base, model, case.stem, ".png", params)
        (out / f"{case.stem}.png").write_bytes(payload)
        mask = np.asarray(Image.open(out / f"{case.stem}.png")) > 0
        dice.append(_dice(mask, truth(case, (mask.shape[1], mask.shape[0]))))
    return dice


def _box(mask: np.ndarray) -> list[int]:
    """The bounding box of a rows-first mask as 3D Slicer sends an ROI: ``[i0, i1, j0, j1, k0, k1]`` in the
    image's voxel indices (i: column, j: row, k: slice)."""
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max()), 0, 0]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(LOOP_TASKS))
def test_monailabel_loop_untrained_task_four_labels_train_segment_the_rest_then_correct_with_a_box(tmp_path, name):
    """An untrained task (JSRT lungs, Kvasir-SEG polyps) served on 12 studies: 4 labels submitted with
    ``PUT /datastore/label``, ``POST /train/<task>``, and the served model (no restart) segments the 8
    others far better than before; the command-line training on the same 4 labels gives the same Dice
    (within 3 points). Then the study the trained model segments worst gets a box from the task's
    interactive model (``<task>_deepgrow``: fine-tuned decoder, learnt prompt plus the box)."""
    _needs_monailabel()
    preset, images, truth = LOOP_TASKS[name]
    if not images.is_dir():
        pytest.skip(f"real data not found at {images} (only on development machines)")
    configs = ["configs/train.json", preset]
    cases = sorted(p for p in images.iterdir() if p.suffix in (".png", ".jpg"))[:LOOP_STUDIES]
    studies = tmp_path / "studies"
    studies.mkdir()
    for case in cases:
        shutil.copy(case, studies / case.name)
    labelled, others = cases[:LOOP_LABELS], cases[LOOP_LABELS:]
    task = tmp_path / "dist" / name
    _run("scripts/export.py", "--name", name, "--untrained", "--config_file", *configs, "--out", str(task.parent))
    model = task / "models" / "model.pt"
    server_tmp = tmp_path / "server_tmp"
    server_tmp.mkdir()

    with _serving(task, studies, tmp_path / "server.log", env={"TMPDIR": str(server_tmp)}) as (base, info):
        assert name in info["trainers"], info["trainers"]
        assert info["models"][f"{name}_deepgrow"]["type"] == "deepgrow", info["models"]
        assert info["models"][f"{name}_deepgrow"]["dimension"] == 2 and f"{name}_deepgrow" not in info["trainers"]
        untrained = _server_dice(base, name, others, truth, tmp_path / "untrained")
        labels = tmp_path / "labels"
        labels.mkdir()
        for i, case in enumerate(labelled):  # 0/1 PNG labels, as Slicer's Submit Label saves a 2D segmentation
            Image.fromarray(truth(case, Image.open(case).size).astype(np.uint8)).save(labels / f"{case.stem}.png")
            _put_label(base, case.stem, labels / f"{case.stem}.png")
            if i == 0:  # one label: the training is refused in one line, the model stays
                status, _ = _train(base, name, LOOP_ITERATIONS)
                assert status["status"] == "ERROR", json.dumps(status)[-4000:]
                assert any("error: 1 labelled image(s): bi-level training needs at least 2" in line
                           for line in status["details"]), status["details"]  # fmt: skip
        assert len(list((studies / "labels" / "final").glob("*.png"))) == LOOP_LABELS

        stamp = model.stat().st_mtime_ns
        status, train_seconds = _train(base, name, LOOP_ITERATIONS)
        assert status["status"] == "DONE", json.dumps(status)[-4000:]
        assert model.stat().st_mtime_ns != stamp
        first = time.time()
        trained = _server_dice(base, name, others[:1], truth, tmp_path / "trained")
        first_seconds = time.time() - first
        trained += _server_dice(base, name, others[1:], truth, tmp_path / "trained")

        # a box on the worst study, through the interactive model (the study's embedding is cached: seen)
        worst = others[int(np.argmin(trained))]
        label = next(iter(info["models"][name]["labels"]))  # the segment's name, as Slicer sends it
        box = _box(truth(worst, Image.open(worst).size))
        corrected, seconds = [], []
        for _ in range(3):
            start = time.time()
            corrected = _server_dice(base, f"{name}_deepgrow", [worst], truth, tmp_path / "boxed",
                                     {"roi": box, "label": label, "foreground": [], "background": []})  # fmt: skip
            seconds.append(time.time() - start)
        rows, cols = np.nonzero(truth(worst, Image.open(worst).size))
        centre = [int(np.median(cols)), int(np.median(rows)), 0]
        start = time.time()
        clicked = _server_dice(base, f"{name}_deepgrow", [worst], truth, tmp_path / "clicked",
                               {"foreground": [centre], "background": [], "label": label})  # fmt: skip
        click_seconds = time.time() - start
    assert list(server_tmp.iterdir()) == []  # the script's temporary work folder is gone

    # the same 4 labels on the command line, in a fresh copy of the untrained task, in the server's Python
    # environment (its numpy 1.26 and other pins differ from the bundle's: a 4-shot polyp model is sensitive
    # enough that the environment alone moved its Dice by 10 points)
    cli = tmp_path / "cli" / name
    _run("scripts/export.py", "--name", name, "--untrained", "--config_file", *configs, "--out", str(cli.parent))
    _run("-m", "monai.bundle", "run", "training", "--config_file", str(cli / "configs" / "train.json"),
         "--bundle_root", str(cli), "--dataset_dir", str(studies),
         "--train#trainer#max_epochs", str(LOOP_ITERATIONS), python=MONAILABEL_PYTHON)  # fmt: skip
    test_images = tmp_path / "test_images"
    test_images.mkdir()
    for case in others:
        shutil.copy(case, test_images / case.name)
    _our_inference(cli, test_images, tmp_path / "cli_masks", python=MONAILABEL_PYTHON)
    command_line = [_dice(np.asarray(Image.open(tmp_path / "cli_masks" / f"{c.stem}.png")) > 0,
                          truth(c, Image.open(c).size)) for c in others]  # fmt: skip

    print(f"MONAI Label loop, {name}: {LOOP_STUDIES} studies, {LOOP_LABELS} labels, {LOOP_ITERATIONS} iterations: "
          f"Dice on the other {len(others)}: untrained {np.mean(untrained):.4f} -> trained {np.mean(trained):.4f} "
          f"(command line on the same labels {np.mean(command_line):.4f}); POST /train to DONE {train_seconds:.0f} s, "
          f"first segmentation with the new model {first_seconds:.1f} s, "
          f"Train to first usable mask {train_seconds + first_seconds:.0f} s; worst study {worst.stem}: "
          f"Dice {min(trained):.4f} -> box {corrected[0]:.4f} (box {box}; {', '.join(f'{s:.2f}' for s in seconds)} s), "
          f"one foreground click {clicked[0]:.4f} ({click_seconds:.2f} s)")  # fmt: skip
    assert np.mean(trained) > np.mean(untrained) + 0.1
    assert abs(np.mean(trained) - np.mean(command_line)) < 0.03
    # lungs (interactive_box "clip": the box clears what lies outside it) never lose; a polyp box replaces
    # the learnt tokens and must correct the worst study
    assert corrected[0] >= min(trained) and (name != "polyps" or corrected[0] > min(trained) + 0.05)


def test_the_halves_do_not_depend_on_the_order_monai_label_lists_the_labels_in(untrained_task, tmp_path):
    """MONAI Label's list is in its own order, with a random val_split part last; the command line reads the
    studies folder sorted: both must give the same D1 and D2, or the same labels train different models."""
    from monai.bundle import ConfigParser

    items = _studies(tmp_path / "studies", 6, {0: 1, 2: 255, 3: 1, 5: 255})

    def halves(train: list[dict], val: list[dict]) -> list[list[str]]:
        parser = ConfigParser()
        parser.read_config(str(untrained_task / "configs" / "train.json"))
        parser.update({"bundle_root": str(untrained_task), "dataset_dir": str(tmp_path / "studies")})
        if train or val:
            parser.update({"train#dataset#data": train, "validate#dataset#data": val})
        return [[Path(i["image"]).name for i in half] for half in parser.get_parsed_content("train#halves")]

    command_line = halves([], [])
    assert [len(h) for h in command_line] == [2, 2]
    for order in ([3, 0, 2], [2, 3, 0], [0, 3, 2]):  # MONAI Label: 3 train items in some order, 1 held out
        held_out = next(i for i in range(4) if i not in order)
        assert halves([items[i] for i in order], [items[held_out]]) == command_line


def test_monai_labels_runs_are_seeded_and_train_the_same_model_from_the_same_labels(untrained_task, tmp_path):
    """The same 4 labels, listed in two orders with another held-out image (MONAI Label's random val_split),
    and read by the command line from the studies folder, train bit-identical weights: the run is seeded,
    and neither the halves nor the augmented views depend on the order or on the items' ids. On the CPU also
    where a GPU is present: CUDA runs are not bit-identical (tests/test_resume.py bounds their spread)."""
    items = _studies(tmp_path / "studies", 6, {0: 1, 2: 255, 3: 1, 5: 255})
    weights = []
    for name, train, val in (("a", items[:3], items[3:]), ("b", [items[3], items[0], items[1]], [items[2]])):
        task = tmp_path / name / "polyp"
        shutil.copytree(untrained_task, task)
        proc = _as_monai_label(task, train, val, epochs=2, CUDA_VISIBLE_DEVICES="")
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        weights.append(torch_load(task / "models" / "model.pt"))
    # ... and the command line on the studies folder (its items carry ids; MONAI Label's do not)
    task = tmp_path / "cli" / "polyp"
    shutil.copytree(untrained_task, task)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
                           "--dataset_dir", str(tmp_path / "studies"), "--train#trainer#max_epochs", "2"], cwd=task,
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    weights.append(torch_load(task / "models" / "model.pt"))
    for other in weights[1:]:
        assert all(np.array_equal(weights[0][k].numpy(), other[k].numpy()) for k in weights[0])

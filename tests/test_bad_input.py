"""Bad input gets one clear line and loses nothing (issue 17).

Every case asserts: exit status 1, a single ``error: ...`` line naming the file or option, no traceback,
and the files written before the failure intact. Most cases run in-process through the same hook the
command line uses (:func:`bundle.errors.excepthook`); a handful run ``python -m monai.bundle run``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader, Dataset
from monai.handlers import CheckpointSaver
from monai.transforms import EnsureChannelFirstd
from PIL import Image

from bundle import errors
from bundle.data import LoadAnyImaged, LoadMaskd
from bundle.data.inputs import check_outputs, image_datalist
from bundle.data.masks import check_training_labels
from bundle.data.readers import read_image
from bundle.errors import BundleInputError, find_input_error
from bundle.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckedCheckpointLoader,
    check_command_line,
    check_device,
    check_writable,
    existing_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN, INFER, EVAL = (str(ROOT / "configs" / f"{n}.json") for n in ("train", "inference", "evaluate"))
SAMPLE = ROOT / "bundle" / "sample_data" / "kvasir"
TINY = ("--backbone", "sam_tiny", "--prompt", "dense")  # the settings of the tiny_ckpt fixture


# ---------------------------------------------------------------- helpers


def _digests(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        if folder.exists()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_one_line(text: str, *names: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text[-3000:]
    assert "\n" not in lines[0] and "Traceback" not in text, text[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    _record(lines[0])
    return lines[0]


def _record(line: str) -> None:
    """Append (case, message) to ``$BAD_INPUT_TABLE`` when set: ``scripts/bad_input_table.py`` turns
    the suite's own messages into the table of docs/results/bad_input.md."""
    table = os.environ.get("BAD_INPUT_TABLE")
    if table:
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].removesuffix(" (call)")
        line = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/]+?/", "<tmp>/", line)
        with open(table, "a") as f:
            f.write(json.dumps({"case": case, "message": line}) + "\n")


@pytest.fixture
def fails(capsys, monkeypatch, tmp_path):
    """``fails(fn, *names)``: run ``fn``; the uncaught error goes through the CLI's hook: status 1, one line."""
    sentinel = tmp_path / "written_before" / "model.pt"
    sentinel.parent.mkdir()
    sentinel.write_bytes(b"previous model")

    def run(fn, *names: str) -> str:
        before = _digests(tmp_path)
        with pytest.raises(BaseException) as info:  # noqa: B017 - any failure goes to the hook
            fn()
        codes: list[int] = []
        monkeypatch.setattr(errors.os, "_exit", codes.append)
        monkeypatch.setattr(errors.logging, "shutdown", lambda: None)  # keep pytest's log capture open
        capsys.readouterr()
        errors.excepthook(info.type, info.value, info.tb)
        out = capsys.readouterr()
        assert codes == [1], f"not reported as bad input: {info.value!r}"
        line = _assert_one_line(out.out + out.err, *names)
        after = _digests(tmp_path)
        assert {k: v for k, v in after.items() if k in before} == before, "a file written before changed"
        return line

    return run


def _png(path: Path, value: int = 120, shape=(24, 32)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random sam_tiny BLO-SAM state dict, as training saves it (1 class, LoRA rank 4)."""
    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(BLOSAM("sam_tiny", num_classes=1, prompt="dense").state_dict(), path)
    return path


def _net(**kwargs):
    from bundle.networks import BLOSAM

    return BLOSAM("sam_tiny", pretrained=False, **{"num_classes": 1, "prompt": "dense", **kwargs})


# ---------------------------------------------------------------- readers and masks


def test_garbage_png(fails, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    fails(lambda: LoadAnyImaged("image")({"image": str(tmp_path / "bad.png")}), "bad.png", "replace or remove")


def test_truncated_jpeg(fails, tmp_path):
    src = sorted((SAMPLE / "images").iterdir())[0]
    (tmp_path / "cut.jpg").write_bytes(src.read_bytes()[:2000])
    fails(lambda: LoadAnyImaged("image")({"image": str(tmp_path / "cut.jpg")}), "cut.jpg")


def test_empty_image_file(fails, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    fails(lambda: read_image(tmp_path / "empty.png"), "empty.png")


def test_garbage_dicom(fails, tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"garbage" * 20)
    fails(lambda: LoadAnyImaged("image")({"image": str(tmp_path / "a.dcm")}), "a.dcm")


def test_truncated_nifti(fails, tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.random.rand(40, 40, 8).astype("float32"), np.eye(4)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "v.nii.gz").write_bytes(data[: len(data) // 3])
    fails(lambda: LoadAnyImaged("image")({"image": str(tmp_path / "v.nii.gz")}), "v.nii.gz")


def test_missing_image_file(fails, tmp_path):
    fails(lambda: read_image(tmp_path / "absent.png"), "absent.png", "not found")


def test_unsupported_suffix(fails, tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    fails(lambda: read_image(tmp_path / "notes.xyz"), "notes.xyz")


def test_wrong_size_jsrt_raw(fails, tmp_path):
    (tmp_path / "bad.IMG").write_bytes(b"\0" * 100)
    fails(lambda: read_image(tmp_path / "bad.IMG"), "bad.IMG")


def test_garbage_mask(fails, tmp_path):
    image = _png(tmp_path / "img.png")
    (tmp_path / "m.png").write_bytes(b"garbage")
    load = LoadMaskd("label", threshold=127)
    data = LoadAnyImaged("image")({"image": image, "label": str(tmp_path / "m.png")})
    fails(lambda: load(data), "m.png")


def test_mask_of_another_image(fails, tmp_path):
    image = _png(tmp_path / "img.png", shape=(24, 32))
    mask = _png(tmp_path / "m.png", value=255, shape=(50, 20))
    data = EnsureChannelFirstd("image")(LoadAnyImaged("image")({"image": image, "label": mask}))  # as the configs
    line = fails(lambda: LoadMaskd("label", threshold=127)(data), "m.png", "img.png")
    assert "(20, 50)" in line and "(32, 24)" in line  # MONAI's (x, y) order of both files


def test_image_error_inside_a_dataloader_worker(fails, tmp_path):
    """torch re-raises a worker's error as text: the bundle's line is still found, the file still named."""
    (tmp_path / "bad.png").write_bytes(b"garbage")
    loader = DataLoader(Dataset([{"image": str(tmp_path / "bad.png")}], LoadAnyImaged("image")), num_workers=1)
    fails(lambda: next(iter(loader)), "bad.png")


def test_image_error_while_caching_a_dataset(fails, tmp_path):
    items = [{"image": _png(tmp_path / "ok.png")}, {"image": str(tmp_path / "bad.jpg")}]
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    fails(lambda: CacheDataset(items, LoadAnyImaged("image"), progress=False), "bad.jpg")


def test_all_training_masks_empty(fails, tmp_path):
    items = [{"label": _png(tmp_path / f"m{i}.png", value=0)} for i in range(3)]
    fails(lambda: check_training_labels(items, threshold=127), "m0.png", "empty", "--mask_threshold")


# ---------------------------------------------------------------- options, device, folders


def test_unknown_option_suggests_the_right_one(fails):
    argv = ["training", "--config_file", TRAIN, "--shot", "2"]
    fails(lambda: check_command_line(argv), "--shot", "did you mean --shots")


def test_unknown_option_with_equals_sign(fails):
    argv = ["--config_file", INFER, "--input-dir=x"]
    fails(lambda: check_command_line(argv), "--input-dir", "did you mean --input_dir")


def test_unknown_option_in_merged_configs(fails):
    argv = ["evaluating", "--config_file", f"[{TRAIN!r},{EVAL!r}]", "--ckpt", "m.pt"]
    fails(lambda: check_command_line(argv), "--ckpt", "did you mean --ckpt_")


def test_known_options_pass():
    argv = ["training", "--config_file", f"[{TRAIN!r},{EVAL!r}]", "--shots", "2", "--ckpt_path", "m.pt",
            "--validate#dataloader#num_workers", "0", "--network_def#prompt", "dense"]  # fmt: skip
    check_command_line(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_gpu(fails):
    fails(lambda: check_device("cuda"), "--device cuda", "--device cpu")


def test_more_torchrun_processes_than_gpus(fails, monkeypatch):
    from bundle.engines.distributed import distributed_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed_device() == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    fails(distributed_device, "--nproc_per_node", "1 CUDA GPU(s)", "local rank 1", "CUDA_VISIBLE_DEVICES")


def test_device_that_does_not_exist(fails):
    fails(lambda: check_device("gpu"), "--device gpu")


def test_ckpt_dir_is_a_file(fails, tmp_path):
    (tmp_path / "taken").write_text("a file")
    fails(lambda: check_writable(ckpt_dir=str(tmp_path / "taken")), "--ckpt_dir", "taken")


def test_output_dir_below_a_file(fails, tmp_path):
    (tmp_path / "taken").write_text("a file")
    fails(lambda: check_writable(output_dir=str(tmp_path / "taken" / "eval")), "--output_dir")


# ---------------------------------------------------------------- inference inputs and outputs


def test_output_dir_is_the_input_dir(fails, tmp_path):
    _png(tmp_path / "in" / "a.png")
    inputs = image_datalist(tmp_path / "in")
    fails(lambda: check_outputs(inputs, tmp_path / "in", tmp_path / "in", ".png"), "--output_dir", "input folder")


def test_output_dir_is_the_input_dir_through_a_link(fails, tmp_path):
    _png(tmp_path / "in" / "a.png")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    inputs = image_datalist(tmp_path / "in")
    fails(lambda: check_outputs(inputs, tmp_path / "in", tmp_path / "link", ".png"), "--output_dir")


def test_an_output_would_overwrite_an_input(fails, tmp_path):
    inputs = [{"image": _png(tmp_path / "out" / "a.png"), "id": "a"}]
    fails(lambda: check_outputs(inputs, tmp_path / "in", tmp_path / "out", ".png"), "a.png", "overwrite")


def test_missing_input_dir(fails, tmp_path):
    fails(lambda: image_datalist(tmp_path / "nowhere"), "--input_dir", "nowhere")


def test_input_dir_without_images(fails, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images")
    fails(lambda: image_datalist(tmp_path / "docs"), "--input_dir", "docs")


def test_same_stem_inputs_get_distinct_stated_names(tmp_path, caplog):
    _png(tmp_path / "in" / "case.png")
    Image.open(tmp_path / "in" / "case.png").convert("RGB").save(tmp_path / "in" / "case.jpg")
    _png(tmp_path / "in" / "other.png")
    items = image_datalist(tmp_path / "in")
    assert [i["id"] for i in items] == ["case_jpg", "case_png", "other"]
    assert "case.jpg -> case_jpg" in caplog.text


# ---------------------------------------------------------------- checkpoints


def test_missing_checkpoint_names_the_inference_flag(fails, tmp_path):
    fails(lambda: existing_checkpoint(str(tmp_path / "missing.pt")), "missing.pt", "--ckpt <model.pt>")


def test_missing_checkpoint_names_the_evaluation_flag(fails, tmp_path):
    fails(lambda: existing_checkpoint(str(tmp_path / "missing.pt"), "--ckpt_path"), "--ckpt_path")


def test_empty_checkpoint(fails, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    net = _net()
    fails(lambda: CheckedCheckpointLoader(str(tmp_path / "empty.pt"), {"model": net}), "empty.pt", "empty")


def test_corrupt_checkpoint(fails, tmp_path, tiny_ckpt):
    (tmp_path / "cut.pt").write_bytes(tiny_ckpt.read_bytes()[:5000])
    net = _net()
    fails(lambda: CheckedCheckpointLoader(str(tmp_path / "cut.pt"), {"model": net}), "cut.pt", "cannot be read")


def test_foreign_checkpoint(fails, tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    net = _net()
    fails(lambda: CheckedCheckpointLoader(str(tmp_path / "linear.pt"), {"model": net}), "linear.pt", "not a BLO-SAM")


def test_checkpoint_that_is_not_a_state_dict(fails, tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    net = _net()
    fails(lambda: CheckedCheckpointLoader(str(tmp_path / "list.pt"), {"model": net}), "list.pt", "state dict")


def test_checkpoint_of_another_lora_rank(fails, tiny_ckpt):
    net = _net(lora_rank=8)
    fails(lambda: CheckedCheckpointLoader(str(tiny_ckpt), {"model": net}), "--lora_rank 4", "--lora_rank 8")


def test_checkpoint_of_another_backbone(fails, tmp_path, tiny_ckpt):
    state = torch.load(tiny_ckpt, weights_only=True)
    state = {k.replace("image_encoder.blocks.1.", "image_encoder.blocks.9."): v for k, v in state.items()}
    torch.save(state, tmp_path / "other.pt")
    net = _net()
    fails(lambda: CheckedCheckpointLoader(str(tmp_path / "other.pt"), {"model": net}), "other.pt", "--backbone")


def test_checkpoint_of_another_prompt(fails, tiny_ckpt):
    net = _net(prompt="tokens")
    fails(lambda: CheckedCheckpointLoader(str(tiny_ckpt), {"model": net}), "model.pt", "--prompt")


def test_checkpoint_of_another_number_of_classes(fails, tiny_ckpt):
    net = _net(num_classes=6)
    fails(lambda: CheckedCheckpointLoader(str(tiny_ckpt), {"model": net}), "model.pt", "--class_names")


def test_checkpoint_of_two_classes_in_a_one_class_run(fails, tmp_path, tiny_ckpt):
    """Up to 3 classes the tensors have the same shapes; the saved class count tells them apart."""
    two = tmp_path / "two_classes.pt"
    torch.save(_net(num_classes=2).state_dict(), two)
    line = fails(lambda: CheckedCheckpointLoader(str(two), {"model": _net()}), "two_classes.pt", "--class_names")
    assert "trained for 2 class(es)" in line and "gives 1" in line


def test_checkpoint_without_a_saved_class_count_still_loads(tmp_path):
    """Checkpoints written before the class count was saved load as before (strict)."""
    state = _net().state_dict()
    del state["class_count"]
    torch.save(state, tmp_path / "old.pt")
    net = _net()
    CheckedCheckpointLoader(str(tmp_path / "old.pt"), {"model": net})
    net.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    assert int(net.class_count) == 1


def test_matching_checkpoint_loads(tiny_ckpt):
    net = _net()
    CheckedCheckpointLoader(str(tiny_ckpt), {"model": net}, map_location="cpu")(Engine(lambda e, b: None))
    reference = torch.load(tiny_ckpt, weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in net.state_dict().items())


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("name", ["..", "a/../..", "/etc", "."])
def test_export_name_leaving_the_output_folder(fails, tmp_path, tiny_ckpt, name):
    from bundle.export import export_task

    out = tmp_path / "dist"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    fails(lambda: export_task(tiny_ckpt, [TRAIN], name, out, torchscript=False, onnx=False), "--name")
    assert (out / "keep.txt").read_text() == "an earlier export"


# ---------------------------------------------------------------- atomic checkpoints


def _validating_engine(scores: list[float], saver) -> Engine:
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e: Engine) -> None:
        e.state.key_metric_name = "dice"
        e.state.metrics = {"dice": scores[e.state.epoch - 1]}

    saver.attach(engine)
    return engine


def _dies_half_way(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"half a checkpoint")
    raise OSError("No space left on device")


@pytest.mark.parametrize("atomic", [True, False])
def test_best_model_survives_a_failure_while_writing_the_next(tmp_path, monkeypatch, atomic):
    """The finding: MONAI's saver deletes model.pt before writing the new best; the atomic one does not."""
    net = torch.nn.Linear(2, 1)
    kwargs = dict(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                  key_metric_filename="model.pt")  # fmt: skip
    saver = AtomicCheckpointSaver(**kwargs) if atomic else CheckpointSaver(**kwargs)
    engine = _validating_engine([0.5, 0.9], saver)
    engine.run([0], max_epochs=1)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", _dies_half_way)
    with pytest.raises(OSError, match="No space"):
        engine.run([0], max_epochs=2)
    monkeypatch.undo()
    if not atomic:  # the bug: the previous best is gone or half-written
        path = tmp_path / "model.pt"
        assert not path.is_file() or path.read_bytes() == b"half a checkpoint"
        return
    kept = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], first[k]) for k in first)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_best_model_survives_a_killed_saver(tmp_path):
    """A saver process killed (SIGKILL) in the middle of writing the new best leaves the old model.pt whole."""
    script = textwrap.dedent(f"""
        import sys, time, torch
        from bundle.handlers import AtomicDiskSaver
        saver = AtomicDiskSaver({str(tmp_path)!r}, "model.pt")
        saver({{"w": torch.ones(3)}}, "model.pt")
        saver.remove("model.pt")
        real = torch.save
        def slow(obj, f, *a, **k):
            open(f, "wb").write(b"half")
            print("writing", flush=True)
            time.sleep(60)
        torch.save = slow
        saver({{"w": torch.zeros(3)}}, "model.pt")
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(3))


@pytest.mark.parametrize("atomic", [True, False])
def test_resume_with_the_best_model_missing(tmp_path, caplog, atomic):
    net = torch.nn.Linear(2, 1)
    kwargs = dict(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                  key_metric_filename="model.pt")  # fmt: skip
    first = AtomicCheckpointSaver(**kwargs)
    _validating_engine([0.5], first).run([0], max_epochs=1)
    state = first._key_metric_checkpoint.state_dict()
    (tmp_path / "model.pt").unlink()  # lost between the runs
    resumed = AtomicCheckpointSaver(**kwargs) if atomic else CheckpointSaver(**kwargs)
    resumed.load_state_dict(state)
    engine = _validating_engine([0.9], resumed)
    if not atomic:  # the finding: MONAI's saver crashes removing the missing file
        with pytest.raises(FileNotFoundError):
            engine.run([0], max_epochs=1)
        return
    engine.run([0], max_epochs=1)
    assert "model.pt" in caplog.text and "missing" in caplog.text
    assert (tmp_path / "model.pt").is_file()


def test_atomic_saver_writes_on_rank_zero_only(tmp_path, monkeypatch):
    """Under torchrun only rank 0 writes or removes checkpoints, as Ignite's DiskSaver does."""
    import ignite.distributed as idist

    saver = AtomicDiskSaver(tmp_path, "model.pt")
    saver({"w": torch.ones(1)}, "model.pt")
    monkeypatch.setattr(idist, "get_rank", lambda: 1)
    saver.remove("model.pt")
    saver({"w": torch.zeros(1)}, "model.pt")
    saver({"w": torch.zeros(1)}, "other.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(1))


def test_resume_forgets_the_best_metric_of_a_missing_best_model(tmp_path):
    """resume.pt restores the evaluator's best Dice; with model.pt gone it must not label the next model."""
    from monai.transforms import Compose

    from bundle.handlers import ResumableTraining

    def handler(evaluator: Engine, saver) -> ResumableTraining:
        return ResumableTraining(tmp_path / "resume.pt", 1, torch.nn.Linear(2, 1), [], [], [], Compose([]),
                                 evaluator=evaluator, best_saver=saver, fingerprint="test")  # fmt: skip

    kwargs = dict(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(2, 1)}, save_key_metric=True,
                  key_metric_filename="model.pt")  # fmt: skip
    first = AtomicCheckpointSaver(**kwargs)
    evaluator = _validating_engine([0.9], first)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    evaluator.run([0], max_epochs=1)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.9, 1
    trainer = Engine(lambda e, b: None)
    trainer.state.iteration = trainer.state.epoch = 1
    torch.save(handler(evaluator, first).state_dict(trainer), tmp_path / "resume.pt")

    for lost in (False, True):
        if lost:
            (tmp_path / "model.pt").unlink()  # lost between the runs
        fresh = Engine(lambda e, b: None)
        fresh.state.best_metric, fresh.state.best_metric_epoch = -1, -1  # as MONAI's evaluators start
        handler(fresh, AtomicCheckpointSaver(**kwargs)).restore(Engine(lambda e, b: None))
        expected = (-1, -1) if lost else (0.9, 1)
        assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == expected


def test_final_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_final=True,
                                  final_filename="model_final.pt")  # fmt: skip
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "model_final.pt").read_bytes()
    monkeypatch.setattr(torch, "save", _dies_half_way)
    with pytest.raises(OSError):
        saver.completed(engine)
    assert (tmp_path / "model_final.pt").read_bytes() == before


def test_the_hook_finds_the_error_through_monai_wrappers():
    try:
        try:
            raise BundleInputError("x.png: not a readable image")
        except BundleInputError as inner:
            raise RuntimeError("applying transform <LoadAnyImaged>") from inner
    except RuntimeError as middle:
        wrapped = RuntimeError("Failed to evaluate ConfigExpression")
        wrapped.__context__ = middle
    assert str(find_input_error(wrapped)) == "x.png: not a readable image"
    assert find_input_error(RuntimeError("a bug")) is None


# ---------------------------------------------------------------- through `python -m monai.bundle run`


def _bundle_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    full.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _assert_cli_failure(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.returncode == 1, (proc.returncode, (proc.stdout + proc.stderr)[-3000:])
    assert "terminate called" not in proc.stderr
    return _assert_one_line(proc.stdout + proc.stderr, *names)


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted((SAMPLE / "images").iterdir())[:1]:
        (folder / src.name).write_bytes(src.read_bytes())
    return folder


@pytest.mark.slow  # a whole `python -m monai.bundle run` (15-25 s); the in-process case above covers the message
def test_cli_corrupt_input_image_keeps_earlier_masks(tmp_path, inputs, tiny_ckpt):
    (inputs / "zz_bad.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"a mask from an earlier run")
    before = _digests(inputs, out)
    proc = _bundle_run("--config_file", INFER, "--input_dir", str(inputs), "--output_dir", str(out),
                       "--ckpt", str(tiny_ckpt), *TINY)  # fmt: skip
    _assert_cli_failure(proc, "zz_bad.png")
    after = _digests(inputs, out)
    assert {k: after.get(k) for k in before} == before


def test_cli_bad_inputs_are_skipped_and_the_others_segmented(tmp_path, inputs, tiny_ckpt):
    """A zero-byte and a corrupt file among the inputs: each skipped with a warning, the others segmented,
    status 1 at the end with one line naming the skipped files."""
    (inputs / "aa_empty.png").write_bytes(b"")
    (inputs / "zz_bad.jpg").write_bytes(b"garbage")
    good = sorted(p for p in inputs.iterdir() if p.stat().st_size > 100)
    out = tmp_path / "out"
    proc = _bundle_run("--config_file", INFER, "--input_dir", str(inputs), "--output_dir", str(out),
                       "--ckpt", str(tiny_ckpt), *TINY)  # fmt: skip
    line = _assert_cli_failure(proc, "aa_empty.png", "zz_bad.jpg", "skipped 2")
    assert str(out) in line
    warnings = [x for x in (proc.stdout + proc.stderr).splitlines() if "WARNING" in x and "skipped" in x]
    assert len(warnings) == 2 and "aa_empty.png" in warnings[0] and "zz_bad.jpg" in warnings[1], warnings
    assert sorted(p.stem for p in out.iterdir()) == [p.stem for p in good]


def test_cli_unknown_option(tmp_path):
    start = time.monotonic()
    proc = _bundle_run("training", "--config_file", TRAIN, "--backbone", "sam_tiny", "--shot", "2",
                       "--ckpt_dir", str(tmp_path / "models"), "--embedding_cache_dir", "None")  # fmt: skip
    _assert_cli_failure(proc, "--shot", "--shots")
    assert not (tmp_path / "models" / "model.pt").exists() and time.monotonic() - start < 120


@pytest.mark.slow  # a whole `python -m monai.bundle run` (15-25 s); the in-process case above covers the message
def test_cli_output_dir_is_input_dir(inputs, tiny_ckpt):
    before = _digests(inputs)
    proc = _bundle_run("--config_file", INFER, "--input_dir", str(inputs), "--output_dir", str(inputs),
                       "--ckpt", str(tiny_ckpt), *TINY)  # fmt: skip
    _assert_cli_failure(proc, "--output_dir")
    assert _digests(inputs) == before


@pytest.mark.slow  # a whole `python -m monai.bundle run` (15-25 s); the in-process case above covers the message
def test_cli_worker_error_during_evaluation(tmp_path, tiny_ckpt):
    """Evaluation reads images in a DataLoader worker (num_workers 1): still one line, no SIGABRT."""
    data = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for src in sorted((SAMPLE / sub).iterdir()):
            (data / sub / src.name).write_bytes(b"garbage" if sub == "images" else src.read_bytes())
    proc = _bundle_run("evaluating", "--config_file", f"[{TRAIN!r},{EVAL!r}]", "--dataset_dir", str(data),
                       *TINY, "--ckpt_path", str(tiny_ckpt), "--ckpt_dir", str(tmp_path / "m"),
                       "--output_dir", str(tmp_path / "eval"), "--embedding_cache_dir", "None")  # fmt: skip
    _assert_cli_failure(proc, str(data / "images"))


def test_cli_debug_keeps_the_traceback(tmp_path, tiny_ckpt):
    proc = _bundle_run("--config_file", INFER, "--input_dir", str(tmp_path / "nowhere"), "--ckpt", str(tiny_ckpt),
                       *TINY, env={errors.DEBUG_ENV: "1"})  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "nowhere" in proc.stderr

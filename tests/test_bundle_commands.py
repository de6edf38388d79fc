"""The README's bundle commands, run as a user runs them, on the shipped sample."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundle" / "sample_data"


def bundle_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ...``; fails the test with the tail of the log."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"bundle run {args[:2]} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A model trained on the shipped Kvasir sample for a few iterations (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("run")
    dirs = {"ckpt": tmp / "models", "out": tmp / "eval", "cache": tmp / "cache"}
    proc = bundle_run(
        "training", "--config_file", "configs/train.json",
        "--iterations", "30", "--val_interval", "10", "--flip_prob", "0.0",
        "--ckpt_dir", str(dirs["ckpt"]), "--output_dir", str(dirs["out"]),
        "--embedding_cache_dir", str(dirs["cache"]),
    )  # fmt: skip
    dirs["log"] = proc.stdout + proc.stderr
    return dirs


def test_training_writes_the_model_and_prints_the_validation_dice(trained):
    assert (trained["ckpt"] / "model.pt").is_file()
    assert "best validation Dice" in trained["log"]
    assert "D1 (lower level): 2" in trained["log"] and "D2 (upper level): 2" in trained["log"]
    assert not list(trained["ckpt"].glob("*.tmp")), "a temporary checkpoint file was left behind"


def test_evaluation_writes_per_case_dice_at_original_resolution_and_overlays(trained):
    bundle_run(
        "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
        "--ckpt_dir", str(trained["ckpt"]), "--output_dir", str(trained["out"]),
        "--embedding_cache_dir", str(trained["cache"]),
    )  # fmt: skip
    with open(trained["out"] / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f, delimiter=","))
    assert len(rows) == 1 + 6  # header + the 6 test cases of the sample
    values = [float(r[1]) for r in rows[1:]]
    assert all(0.0 <= v <= 1.0 for v in values)
    summary = (trained["out"] / "val_mean_dice_summary.csv").read_text()
    assert "mean" in summary and "std" in summary and "median" in summary
    overlays = sorted((trained["out"] / "overlays").glob("*_overlay.png"))
    assert len(overlays) == 6
    # overlays are drawn at the original image size
    source = SAMPLE / "kvasir" / "images" / overlays[0].name.replace("_overlay.png", ".jpg")
    assert Image.open(overlays[0]).size == Image.open(source).size


def test_inference_writes_one_mask_per_input_at_its_size(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in sorted(os.listdir(SAMPLE / "kvasir" / "images"))[:2]:
        shutil.copy(SAMPLE / "kvasir" / "images" / name, inputs / name)
    shutil.copy(SAMPLE / "jsrt" / "images" / sorted(os.listdir(SAMPLE / "jsrt" / "images"))[0], inputs / "grey.png")
    out = tmp_path / "out"
    bundle_run(
        "--config_file",
        "configs/inference.json",
        "--input_dir",
        str(inputs),
        "--output_dir",
        str(out),
        "--ckpt",
        str(trained["ckpt"] / "model.pt"),
    )
    for src in sorted(inputs.iterdir()):
        mask_path = out / f"{src.name.split('.')[0]}.png"
        assert mask_path.is_file(), f"no mask for {src.name}: {sorted(os.listdir(out))}"
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == np.asarray(Image.open(src)).shape[:2]
        assert set(np.unique(mask)) <= {0, 1}


def test_inference_without_a_checkpoint_says_how_to_get_one(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--ckpt", str(tmp_path / "missing.pt"), "--output_dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "missing.pt not found" in proc.stderr and "run training" in proc.stderr


def test_plain_run_with_the_evaluation_config_evaluates_and_does_not_train(tmp_path):
    """``run`` without a key, as the Model Zoo calls it, runs evaluate.json's ``run``, not train.json's."""
    import torch
    from monai.bundle import ConfigParser

    configs = ["configs/train.json", "configs/evaluate.json"]
    ckpt_dir, out = tmp_path / "models", tmp_path / "eval"
    overrides = {"backbone": "sam_tiny", "iterations": 1, "ckpt_dir": str(ckpt_dir), "output_dir": str(out),
                 "embedding_cache_dir": str(tmp_path / "cache")}  # fmt: skip
    parser = ConfigParser()  # a "trained" model of the tiny test backbone, as these configs build it
    parser.read_config([str(ROOT / c) for c in configs])
    parser.update(overrides)
    ckpt_dir.mkdir()
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt_dir / "model.pt")
    before = (ckpt_dir / "model.pt").read_bytes()
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    proc = bundle_run("--config_file", str(configs), *args)
    with open(out / "val_mean_dice_raw.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 6  # header + the sample's 6 test cases
    # the trainer never ran: no final or resume checkpoint, no training log, the model untouched
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["model.pt"]
    assert (ckpt_dir / "model.pt").read_bytes() == before
    assert "best validation Dice" not in proc.stdout + proc.stderr

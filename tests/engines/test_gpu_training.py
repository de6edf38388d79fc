"""The training command on a CUDA GPU: each hypergradient, single level, AMP (float16 + GradScaler) on and off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("hypergradient", ["first", "finite_difference"])
def test_training_command_on_gpu(tmp_path, hypergradient, amp):
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
        "--backbone", "sam_tiny", "--iterations", "4", "--val_interval", "2", "--resume_interval", "2",
        "--method", "blo-sam", "--hypergradient", hypergradient, "--amp", str(amp),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--embedding_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    log = done.stdout + done.stderr
    assert f"{hypergradient!r} hypergradient, amp={amp}" in log
    weights = torch.load(tmp_path / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    assert not (tmp_path / "models" / "resume.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("amp", [False, True])
def test_single_level_training_command_on_gpu(tmp_path, amp):
    """The default method (joint: MONAI's SupervisedTrainer underneath, float16 autocast + GradScaler with amp)."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
        "--backbone", "sam_tiny", "--iterations", "4", "--val_interval", "2", "--resume_interval", "2",
        "--method", "joint", "--amp", str(amp),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--embedding_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    weights = torch.load(tmp_path / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    assert not (tmp_path / "models" / "resume.pt").exists()

"""Resuming training: a run killed with SIGKILL and restarted ends with the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bundle.data import CyclicShuffleSampler

ROOT = Path(__file__).resolve().parents[1]


def _command(tmp: Path, extra: tuple[str, ...] = ()) -> list[str]:
    # a small random backbone keeps this fast; the data path is the real one (shipped sample, flips on)
    return [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
        "--backbone", "sam_tiny", "--iterations", "40", "--val_interval", "4", "--resume_interval", "2",
        "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval"),
        "--embedding_cache_dir", str(tmp / "cache"), *extra,
    ]  # fmt: skip


def _env() -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sampler_stream_depends_only_on_seed_and_position():
    a = CyclicShuffleSampler(5, seed=3)
    stream = iter(a)
    first = [next(stream) for _ in range(12)]
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:10]) == list(range(5))
    b = CyclicShuffleSampler(5, seed=3)
    b.load_state_dict({"drawn": 7, "size": 5, "seed": 3})
    assert [x for _, x in zip(range(5), b, strict=False)] == first[7:12]
    with pytest.raises(ValueError, match="size 5 / seed 3"):
        CyclicShuffleSampler(4, seed=3).load_state_dict(a.state_dict())


def _kill_and_resume(tmp: Path, env: dict, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """An uninterrupted run, and the same run killed with SIGKILL after iteration 10 and resumed."""
    plain = tmp / "plain"
    done = subprocess.run(_command(plain, extra), cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp / "killed"
    resume_file = killed / "models" / "resume.pt"
    proc = subprocess.Popen(_command(killed, extra), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    iteration = 0
    while time.time() < deadline and proc.poll() is None:
        if resume_file.is_file():
            iteration = torch.load(resume_file, weights_only=True)["iteration"]
            if iteration >= 10:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert 10 <= iteration < 40

    resumed = subprocess.run(_command(killed, extra), cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert not resume_file.exists(), "a finished run keeps no resume checkpoint"
    return plain, killed


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].is_floating_point())


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    # on the CPU (also where a GPU is present), where two runs of one seeded command are bit-identical
    plain, killed = _kill_and_resume(tmp_path, dict(_env(), CUDA_VISIBLE_DEVICES=""))
    for name in ("model_final.pt", "model.pt"):
        a, b = _weights(plain / "models" / name), _weights(killed / "models" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"


def test_sigkill_then_resume_with_snapshot_averaging(tmp_path):
    # snapshots at iterations 24, 28, ..., 40; the kill comes after iteration 10 or later, often among them
    extra = ("--snapshot_average", "0.4", "--snapshot_interval", "4", "--snapshot_keep_last", "True")
    plain, killed = _kill_and_resume(tmp_path, dict(_env(), CUDA_VISIBLE_DEVICES=""), extra)
    for name in ("model_final.pt", "model_last.pt", "model.pt"):
        a, b = _weights(plain / "models" / name), _weights(killed / "models" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    averaged, last = _weights(plain / "models" / "model_final.pt"), _weights(plain / "models" / "model_last.pt")
    assert averaged.keys() == last.keys()
    changed = [k for k in averaged if not torch.equal(averaged[k], last[k])]
    frozen = ("image_encoder.", "prompt_encoder.")  # only trained parameters are averaged
    assert changed and not [k for k in changed if k.startswith(frozen)], changed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_sigkill_then_resume_on_gpu_differs_no_more_than_two_uninterrupted_runs(tmp_path):
    """On CUDA two uninterrupted runs of one seeded command are not bit-identical (on H200 machines they
    differed by up to 5.5e-4 in one session and 2.3e-2 in another, in a weight after these 40 iterations;
    non-deterministic GPU kernels, the likely cause, were not traced); the resumed run must lie within that
    spread."""
    plain, killed = _kill_and_resume(tmp_path, _env())
    again = tmp_path / "again"
    done = subprocess.run(_command(again), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    noise = _max_difference(plain / "models" / "model_final.pt", again / "models" / "model_final.pt")
    resumed = _max_difference(plain / "models" / "model_final.pt", killed / "models" / "model_final.pt")
    print(f"largest weight difference: two uninterrupted runs {noise:.2e}, resumed vs uninterrupted {resumed:.2e}")
    assert resumed <= 10 * noise, (resumed, noise)

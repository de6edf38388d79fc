"""Data-parallel training (configs/multi_gpu_train.json) with 2 gloo processes on CPU.

Two processes sharing each global batch must train as one process on the whole batch: same loss
curve, same final weights up to float rounding (the averaged gradient is summed in another order).
The tolerance on the weights is a tenth of one AdamW step (lr 5e-3): AdamW's first steps move a
weight by about lr * g / (|g| + eps), so a gradient of the size of the rounding error can move it
visibly; the losses agree to float32 rounding.

The end-to-end comparison uses the first-order hypergradient. The finite-difference one divides
by a radius of 1e-3 / ||u||: in float32 the summation-order rounding between one and two processes
(and ReLU kinks near the perturbed weights) changes single hypergradients by up to a few per cent
(once 15x on this random tiny network), so its trajectories part after a few iterations even
though the algebra is the same; tests/engines/test_distributed_hypergradient.py checks that algebra
in float64 (two processes equal one to 1e-11), and the resume test below runs it under DDP.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.data import CyclicShuffleSampler

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 6
LOSS_TOL, WEIGHT_TOL = 1e-5, 5e-4
MULTI = ["configs/train.json", "configs/multi_gpu_train.json"]


def _env() -> dict:
    # CPU processes with gloo also where a GPU is present (two processes on one GPU cannot use NCCL)
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def _command(tmp: Path, processes: int, hypergradient: str, configs: list[str], method: str) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return launcher + [
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs),
        "--backbone", "sam_tiny", "--iterations", str(ITERATIONS), "--val_interval", "3", "--resume_interval", "2",
        "--batch_size", "2", "--flip_prob", "0", "--hypergradient", hypergradient, "--method", method,
        "--ckpt_dir", str(tmp / "models"), "--output_dir", str(tmp / "eval"),
        "--embedding_cache_dir", str(tmp / "cache"),
    ]  # fmt: skip


def _train(
    tmp: Path, processes: int, hypergradient: str, extra_config: dict | None = None, method: str = "blo-sam"
) -> subprocess.CompletedProcess:
    configs = ["configs/train.json"] if processes == 1 else list(MULTI)
    if extra_config is not None:
        (tmp / "extra.json").parent.mkdir(parents=True, exist_ok=True)
        (tmp / "extra.json").write_text(json.dumps(extra_config))
        configs.append(str(tmp / "extra.json"))
    cmd = _command(tmp, processes, hypergradient, configs, method)
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)


def _losses(output_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[float]] = {}
    for f in sorted(glob.glob(str(output_dir / "events.out.tfevents.*"))):
        events = EventAccumulator(f)
        events.Reload()
        for tag in ("lower_loss", "upper_loss", "hypergrad_norm", "loss"):
            if tag in events.Tags()["scalars"]:
                curves[tag] = [e.value for e in events.Scalars(tag)]
    return curves


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


_RUNS: dict[tuple[int, str, str], Path] = {}


def _finished_run(tmp_factory, processes: int, hypergradient: str, method: str = "blo-sam") -> Path:
    """One finished training run per (processes, hypergradient, method), shared by the tests of this module."""
    key = (processes, hypergradient, method)
    if key not in _RUNS:
        tmp = tmp_factory.mktemp(f"run{processes}_{hypergradient}_{method}")
        done = _train(tmp, processes, hypergradient, method=method)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        _RUNS[key] = tmp
    return _RUNS[key]


def test_ranks_share_each_global_batch_of_the_one_process_stream():
    one = iter(CyclicShuffleSampler(5, seed=3))
    stream = [next(one) for _ in range(24)]
    for processes, batch in [(2, 2), (2, 4), (3, 6)]:
        samplers = [CyclicShuffleSampler(5, 3, processes, r, batch) for r in range(processes)]
        iterators = [iter(s) for s in samplers]
        seen = []
        for k in range(len(stream) // batch):
            for it in iterators:  # rank order: rank r holds the r-th share of global batch k
                seen += [next(it) for _ in range(batch // processes)]
            assert {s.drawn for s in samplers} == {(k + 1) * batch}, "ranks disagree on the position"
        assert seen == stream[: len(seen)]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        CyclicShuffleSampler(5, 3, num_replicas=2, rank=0, batch_size=3)


@pytest.mark.parametrize("method", ["blo-sam", "joint"])
def test_multi_gpu_config_keeps_writes_and_reports_on_rank_zero(tmp_path, monkeypatch, method):
    from ignite.handlers import ProgressBar
    from monai.bundle import ConfigParser
    from monai.handlers import (
        CheckpointSaver,
        LrScheduleHandler,
        StatsHandler,
        TensorBoardStatsHandler,
        ValidationHandler,
    )

    import bundle.engines
    from bundle.handlers import ResumableTraining

    monkeypatch.setattr(bundle.engines, "rank", lambda: 1)
    monkeypatch.setattr(bundle.engines, "world_size", lambda: 2)
    monkeypatch.setattr(bundle.engines, "is_main_process", lambda: False)
    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in MULTI])
    parser.update({"backbone": "sam_tiny", "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models"),
                   "method": method})  # fmt: skip
    reports = (StatsHandler, TensorBoardStatsHandler, ProgressBar)
    train = parser.get_parsed_content("train#handlers")
    assert not any(isinstance(h, (*reports, CheckpointSaver)) for h in train), train
    assert any(isinstance(h, ResumableTraining) for h in train) and any(isinstance(h, ValidationHandler) for h in train)
    assert sum(isinstance(h, LrScheduleHandler) for h in train) == (2 if method == "blo-sam" else 1)
    validate = parser.get_parsed_content("validate#handlers")
    assert not any(isinstance(h, (*reports, CheckpointSaver)) for h in validate), validate
    assert parser.get_parsed_content("embedding_cache").cache_dir is None
    sampler = parser.get_parsed_content("train#lower_sampler")
    global_batch = 2 if method == "blo-sam" else 4  # one level: D1's and D2's images in one batch
    assert (sampler.rank, sampler.num_replicas, sampler.batch_size) == (1, 2, global_batch)
    assert parser.get_parsed_content("train#lower_dataloader").batch_size == global_batch // 2
    assert not (tmp_path / "eval").exists(), "rank 1 created TensorBoard files"


@pytest.mark.slow  # two training commands, ~65 s on an idle 2-core CPU, ~100 s with another job running
def test_two_gloo_processes_train_as_one_process(tmp_path_factory):
    hypergradient = "first"
    one = _finished_run(tmp_path_factory, 1, hypergradient)
    two = _finished_run(tmp_path_factory, 2, hypergradient)
    curves_one, curves_two = _losses(one / "eval"), _losses(two / "eval")
    assert len(curves_one["lower_loss"]) == len(curves_two["lower_loss"]) == ITERATIONS
    tags = ("lower_loss", "upper_loss")
    pairs = [pair for tag in tags for pair in zip(curves_one[tag], curves_two[tag], strict=True)]
    loss_diff = max(abs(a - b) for a, b in pairs)
    weight_diff = _max_diff(_weights(one / "models" / "model_final.pt"), _weights(two / "models" / "model_final.pt"))
    print(f"\n{hypergradient}: 2 processes vs 1, {ITERATIONS} iterations: max |loss diff| {loss_diff:.2e} "
          f"(tol {LOSS_TOL:.0e}), max |weight diff| {weight_diff:.2e} (tol {WEIGHT_TOL:.0e})")  # fmt: skip
    assert loss_diff <= LOSS_TOL and weight_diff <= WEIGHT_TOL
    events = [glob.glob(str(run / "eval" / "events.out.tfevents.*")) for run in (one, two)]
    assert len(events[0]) == len(events[1]), "the other rank wrote TensorBoard files"


@pytest.mark.slow  # two training commands, about a minute on an idle 2-core CPU
def test_two_gloo_processes_train_the_single_level_method_as_one_process(tmp_path_factory):
    """--method joint: MONAI's SupervisedTrainer underneath, with the gradient averaging of
    bundle.engines.SingleLevelTrainer (without it each rank would step on its own half batch)."""
    one = _finished_run(tmp_path_factory, 1, "first", "joint")
    two = _finished_run(tmp_path_factory, 2, "first", "joint")
    curves_one, curves_two = _losses(one / "eval"), _losses(two / "eval")
    assert "lower_loss" not in curves_one and len(curves_one["loss"]) == len(curves_two["loss"]) == ITERATIONS
    loss_diff = max(abs(a - b) for a, b in zip(curves_one["loss"], curves_two["loss"], strict=True))
    weight_diff = _max_diff(_weights(one / "models" / "model_final.pt"), _weights(two / "models" / "model_final.pt"))
    print(f"\njoint: 2 processes vs 1, {ITERATIONS} iterations: max |loss diff| {loss_diff:.2e} (tol {LOSS_TOL:.0e}), "
          f"max |weight diff| {weight_diff:.2e} (tol {WEIGHT_TOL:.0e})")  # fmt: skip
    assert loss_diff <= LOSS_TOL and weight_diff <= WEIGHT_TOL


@pytest.mark.slow
def test_two_gloo_processes_resume_after_a_crash(tmp_path_factory):
    plain = _finished_run(tmp_path_factory, 2, "finite_difference")
    tmp = tmp_path_factory.mktemp("crashed")
    # rank 0 dies (as by SIGKILL: no handler runs) while iteration 5 completes; resume.pt holds iteration 4
    crash = {"train#handlers#4#iteration_log": "$lambda engine, iteration: os._exit(3) if iteration == 5 else False"}
    died = _train(tmp, 2, "finite_difference", crash)
    assert died.returncode != 0
    assert torch.load(tmp / "models" / "resume.pt", weights_only=True)["iteration"] == 4
    resumed = _train(tmp, 2, "finite_difference")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert not (tmp / "models" / "resume.pt").exists()
    diff = _max_diff(_weights(plain / "models" / "model_final.pt"), _weights(tmp / "models" / "model_final.pt"))
    print(f"\nDDP resume: max |weight diff| against the uninterrupted 2-process run {diff:.2e}")
    assert diff == 0.0

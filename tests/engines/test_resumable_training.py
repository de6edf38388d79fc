"""ResumableTraining in-process: wherever it sits among the handlers, an interrupted run resumed
ends where an uninterrupted one does; the GradScaler and the CUDA random states are in resume.pt."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader, LrScheduleHandler
from monai.transforms import Compose

from bundle.engines import BiLevelTrainer
from bundle.handlers import ResumableTraining


class _Interrupted(Exception):
    pass


class _DoublingScaler(torch.amp.GradScaler):
    """A CPU GradScaler whose scale doubles every iteration: its state changes at every step."""

    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**8, growth_interval=1)


def _run(make_trainer, net, path, initial, iterations=6, stop_after=None):
    """Train ``net`` with the resume handler attached FIRST, a CheckpointLoader of the initial
    weights (STARTED) and epoch-level lr schedulers (EPOCH_COMPLETED) after it."""
    trainer = make_trainer(net, ["a", "b"], ["c", "d"], iterations=iterations, amp=True)
    schedulers = [
        torch.optim.lr_scheduler.PolynomialLR(o, total_iters=iterations, power=0.9)
        for o in (trainer.lower_optimizer, trainer.upper_optimizer)
    ]
    resume = ResumableTraining(
        path=path,
        interval=2,
        network=net,
        optimizers=[trainer.lower_optimizer, trainer.upper_optimizer],
        lr_schedulers=schedulers,
        samplers=[trainer.data_loader.sampler, trainer.upper_data_loader.sampler],
        transforms=Compose([]),
        fingerprint="test",
    )
    handlers = [resume, CheckpointLoader(str(initial), {"model": net}, map_location="cpu")]
    handlers += [LrScheduleHandler(s, print_lr=False) for s in schedulers]  # epoch level: EPOCH_COMPLETED
    for h in handlers:
        h.attach(trainer)
    if stop_after is not None:

        @trainer.on(Events.ITERATION_STARTED(once=stop_after + 1))
        def _kill(_engine):  # as if the process died during the next iteration
            raise _Interrupted

    trainer.run()
    return trainer, resume


def test_resume_handler_placed_first_gives_the_uninterrupted_run(
    make_trainer, tiny_net, tmp_path, monkeypatch, one_thread
):
    monkeypatch.setattr(BiLevelTrainer, "_make_scaler", lambda self: _DoublingScaler())
    initial = tmp_path / "initial.pt"
    torch.save(tiny_net.state_dict(), initial)

    torch.manual_seed(0)
    plain_net = copy.deepcopy(tiny_net)
    plain, _ = _run(make_trainer, plain_net, tmp_path / "plain.pt", initial)

    path = tmp_path / "resume.pt"
    torch.manual_seed(0)
    with pytest.raises(_Interrupted):
        _run(make_trainer, copy.deepcopy(tiny_net), path, initial, stop_after=4)
    saved = torch.load(path, weights_only=True)
    assert saved["iteration"] == 4 and saved["scaler"]["scale"] == 2.0 ** (8 + 4)

    torch.manual_seed(123)  # the torch random state must come from the checkpoint
    resumed_net = copy.deepcopy(tiny_net)
    resumed, handler = _run(make_trainer, resumed_net, path, initial)
    assert handler.resumed_from == 4
    assert resumed.state.iteration == plain.state.iteration == 6
    assert resumed.scaler.get_scale() == plain.scaler.get_scale() == 2.0 ** (8 + 6)
    assert not path.exists(), "a finished run keeps no resume checkpoint"
    for (name, a), b in zip(plain_net.state_dict().items(), resumed_net.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_resume_state_keeps_the_cuda_random_states(make_trainer, tiny_net, tmp_path, monkeypatch):
    # no GPU here: fake a one-device CUDA RNG and check that it is saved and set back
    cuda_state = [torch.arange(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in cuda_state])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    trainer = make_trainer(tiny_net, ["a"], ["b"], iterations=1)
    handler = ResumableTraining(
        path=tmp_path / "resume.pt",
        interval=1,
        network=tiny_net,
        optimizers=[trainer.lower_optimizer, trainer.upper_optimizer],
        lr_schedulers=[],
        samplers=[trainer.data_loader.sampler, trainer.upper_data_loader.sampler],
        transforms=Compose([]),
        fingerprint="test",
    )
    trainer.scaler = _DoublingScaler()
    state = handler.state_dict(trainer)
    torch.save(state, handler.path)
    assert torch.equal(state["random"][0]["cuda_rng"][0], cuda_state[0])
    assert state["scaler"]["scale"] == 2.0**8
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    handler.restore(trainer)
    assert len(restored) == 1 and torch.equal(restored[0], cuda_state[0])
    assert trainer.scaler.get_scale() == 2.0**8


def test_resume_purges_tensorboard_steps_logged_after_the_resumed_iteration(tmp_path):
    """A run interrupted at iteration 10 and resumed from its checkpoint of iteration 6 logs 7..10
    again: the purge marker makes TensorBoard show each iteration once, with the new values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from bundle.handlers.resume import purge_tensorboard

    first = SummaryWriter(log_dir=str(tmp_path))
    for step in range(1, 11):
        first.add_scalar("lower_loss", 1.0, step)
    first.close()
    # a resumed attempt is a later process: its event file's name (time stamp, then a per-process writer
    # count) must sort after the first one's, which two writers made in the same second need not do
    time.sleep(1.1)
    second = SummaryWriter(log_dir=str(tmp_path))  # the resumed attempt, same folder
    purge_tensorboard(second, 7)
    for step in range(7, 16):
        second.add_scalar("lower_loss", 2.0, step)
    second.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Scalars("lower_loss")
    assert [s.step for s in scalars] == list(range(1, 16))
    assert [s.value for s in scalars] == [1.0] * 6 + [2.0] * 9


def test_training_and_validation_share_the_writer_the_resume_handler_purges():
    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[2]
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root), "backbone": "sam_tiny", "output_dir": "/tmp/tb_shared_writer_test"})
    config = parser.get()
    inline = [h for h in config["train"]["handlers"] + config["validate"]["handlers"] if isinstance(h, dict)]
    writers = [h.get("summary_writer") for h in inline if h["_target_"] == "TensorBoardStatsHandler"]
    resume = [h for h in inline if h["_target_"] == "bundle.handlers.ResumableTraining"][0]
    assert writers == ["@tensorboard_writer"] * 2 and resume["summary_writer"] == "@tensorboard_writer"

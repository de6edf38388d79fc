"""SnapshotAveraging: the final weights are the mean of the scheduled snapshots, also after a resume."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.transforms import Compose

from bundle.handlers import ResumableTraining, SnapshotAveraging
from bundle.handlers.resume import trained_parameters


class _Interrupted(Exception):
    pass


def _trained(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trained_parameters(net).items()}


def test_snapshot_schedule_counts_back_from_the_last_iteration():
    half = SnapshotAveraging(torch.nn.Linear(1, 1), fraction=0.5, interval=10)
    assert [i for i in range(1, 301) if half.is_snapshot(i, 300)] == list(range(160, 301, 10))
    every = SnapshotAveraging(torch.nn.Linear(1, 1), fraction=1.0, interval=1)
    assert [i for i in range(1, 7) if every.is_snapshot(i, 6)] == [1, 2, 3, 4, 5, 6]
    odd = SnapshotAveraging(torch.nn.Linear(1, 1), fraction=0.25, interval=3)
    assert [i for i in range(1, 41) if odd.is_snapshot(i, 40)] == [31, 34, 37, 40]


@pytest.mark.parametrize("kwargs", [{"fraction": 1.5}, {"fraction": -0.1}, {"interval": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="snapshot averaging"):
        SnapshotAveraging(torch.nn.Linear(1, 1), **kwargs)


def _run(make_trainer, net, averaging, resume_path=None, stop_after=None, record=None):
    """Train ``net`` 6 iterations with ``averaging``; with ``resume_path``, also with a ResumableTraining that
    holds its state (returned). ``record`` gets the trained weights after each iteration, before averaging."""
    trainer = make_trainer(net, ["a", "b"], ["c", "d"], iterations=6)
    handlers, resume = [averaging], None
    if resume_path is not None:
        resume = ResumableTraining(path=resume_path, interval=2, network=net,
                                   optimizers=[trainer.lower_optimizer, trainer.upper_optimizer], lr_schedulers=[],
                                   samplers=[trainer.data_loader.sampler, trainer.upper_data_loader.sampler],
                                   transforms=Compose([]), fingerprint="test", stateful=[averaging])  # fmt: skip
        handlers.insert(0, resume)
    if record is not None:

        @trainer.on(Events.EPOCH_COMPLETED)
        def _record(engine):
            record[engine.state.epoch] = _trained(net)

    for h in handlers:
        h.attach(trainer)
    if stop_after is not None:

        @trainer.on(Events.ITERATION_STARTED(once=stop_after + 1))
        def _kill(_engine):
            raise _Interrupted

    trainer.run()
    return resume


def test_final_weights_are_the_mean_of_the_snapshots(make_trainer, tiny_net, tmp_path, one_thread):
    last_path = tmp_path / "model_last.pt"
    averaging = SnapshotAveraging(tiny_net, fraction=0.5, interval=1, last_weights_path=last_path)
    record: dict[int, dict[str, torch.Tensor]] = {}
    _run(make_trainer, tiny_net, averaging, record=record)
    assert averaging.count == 3  # iterations 4, 5 and 6
    final = _trained(tiny_net)
    for name, value in final.items():
        expected = torch.stack([record[i][name] for i in (4, 5, 6)]).mean(0)
        assert torch.allclose(value, expected, atol=1e-6), name
    assert any(not torch.equal(final[n], record[6][n]) for n in final), "averaging changed nothing"
    last = torch.load(last_path, weights_only=True)
    assert set(last) == set(tiny_net.state_dict())
    assert all(torch.equal(last[n], record[6][n]) for n in final), "model_last.pt is not the last iteration's"


def test_fraction_zero_keeps_the_last_weights(make_trainer, tiny_net, tmp_path, one_thread):
    torch.manual_seed(0)
    plain = copy.deepcopy(tiny_net)
    _run(make_trainer, plain, SnapshotAveraging(plain, fraction=0.0))
    torch.manual_seed(0)
    off = copy.deepcopy(tiny_net)
    record: dict[int, dict[str, torch.Tensor]] = {}
    _run(make_trainer, off, SnapshotAveraging(off, fraction=0.0, last_weights_path=tmp_path / "x.pt"), record=record)
    assert all(torch.equal(v, record[6][n]) for n, v in _trained(off).items())
    assert not (tmp_path / "x.pt").exists()


def test_resumed_run_averages_the_same_snapshots(make_trainer, tiny_net, tmp_path, one_thread):
    path = tmp_path / "resume.pt"

    def run(net, stop_after=None):
        averaging = SnapshotAveraging(net, fraction=0.5, interval=1)
        return averaging, _run(make_trainer, net, averaging, resume_path=path, stop_after=stop_after)

    torch.manual_seed(0)
    plain_net = copy.deepcopy(tiny_net)
    plain, _ = run(plain_net)

    torch.manual_seed(0)
    with pytest.raises(_Interrupted):
        run(copy.deepcopy(tiny_net), stop_after=5)  # resume.pt holds iteration 4 and its one snapshot
    saved = torch.load(path, weights_only=True)
    assert saved["iteration"] == 4 and saved["stateful"][0]["count"] == 1

    torch.manual_seed(123)
    resumed_net = copy.deepcopy(tiny_net)
    resumed, handler = run(resumed_net)
    assert handler.resumed_from == 4 and resumed.count == plain.count == 3
    for (name, a), b in zip(plain_net.state_dict().items(), resumed_net.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"

"""Bi-level trainer: which parameters each level moves, the D2 stream, events and schedules."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.engines import IterationEvents
from monai.handlers import LrScheduleHandler

from bundle.engines import BiLevelEvents


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return [not torch.equal(b, p) for b, p in zip(before, params, strict=True)]


def test_lower_step_moves_only_w_and_upper_step_only_phi(make_trainer, tiny_net):
    torch.manual_seed(0)
    trainer = make_trainer(tiny_net, ["a"], ["b"], iterations=1)
    frozen = [p for p in tiny_net.parameters() if not p.requires_grad]
    lower, upper = tiny_net.lower_parameters(), tiny_net.upper_parameters()
    seen = {}

    @trainer.on(BiLevelEvents.LOWER_COMPLETED)
    def after_lower(engine):
        seen["upper_after_lower"] = _changed(upper0, upper)
        seen["lower_after_lower"] = _changed(lower0, lower)
        seen["lower_mid"] = _snapshot(lower)

    @trainer.on(BiLevelEvents.UPPER_COMPLETED)
    def after_upper(engine):
        seen["lower_after_upper"] = _changed(seen["lower_mid"], lower)
        seen["upper_after_upper"] = _changed(upper0, upper)

    frozen0, lower0, upper0 = _snapshot(frozen), _snapshot(lower), _snapshot(upper)
    trainer.run()
    assert not any(seen["upper_after_lower"]), "the lower step must not touch phi"
    # LoRA A gets no gradient while B is still 0 (first step): everything else moves
    assert sum(seen["lower_after_lower"]) >= len(lower) - 14
    assert not any(seen["lower_after_upper"]), "the upper step must not touch W"
    assert all(seen["upper_after_upper"])
    assert not any(_changed(frozen0, frozen)), "frozen SAM weights moved"


def test_upper_level_sees_every_d2_sample_once_per_pass_and_a_new_batch_each_step(make_trainer, tiny_net):
    torch.manual_seed(0)
    d2 = ["u1", "u2", "u3", "u4"]
    trainer = make_trainer(tiny_net, ["l1", "l2"], d2, iterations=6)
    seen: list[list[str]] = []
    original = trainer.next_upper_batch

    def recording():
        batch = original()
        seen.append(list(batch["id"]))
        return batch

    trainer.next_upper_batch = recording
    trainer.run()
    flat = [i for b in seen for i in b]
    assert sorted(flat[:4]) == d2 and len(set(flat[:4])) == 4  # first pass: every sample once
    assert len(flat) == 6
    reused = [a == b for a, b in zip(flat[:3], flat[1:4], strict=True)]
    assert not any(reused), "consecutive upper steps reused a batch"


def test_standard_monai_events_and_outputs(make_trainer, tiny_net):
    trainer = make_trainer(tiny_net, ["a"], ["b"], iterations=2)
    fired = []
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
        BiLevelEvents.LOWER_COMPLETED,
        BiLevelEvents.UPPER_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda e, ev=event: fired.append(ev))
    trainer.run()
    assert len(fired) == 12 and fired.count(IterationEvents.MODEL_COMPLETED) == 2
    out = trainer.state.output
    assert {"lower_loss", "upper_loss", "hypergrad_norm", "upper_seconds", "loss", "pred"} <= set(out)
    assert out["hypergrad_norm"] > 0


def test_both_schedulers_step_once_per_iteration(make_trainer, tiny_net):
    trainer = make_trainer(tiny_net, ["a"], ["b"], iterations=5)
    scheds = [
        torch.optim.lr_scheduler.PolynomialLR(o, total_iters=5, power=0.9)
        for o in (trainer.lower_optimizer, trainer.upper_optimizer)
    ]
    for s in scheds:
        LrScheduleHandler(s, print_lr=False).attach(trainer)
    lrs = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: lrs.append((e.lower_optimizer.param_groups[0]["lr"], e.upper_optimizer.param_groups[0]["lr"])),
    )
    trainer.run()
    expected = [5e-3 * (1 - i / 5) ** 0.9 for i in range(5)]
    for (lo, up), exp in zip(lrs, expected, strict=True):
        assert abs(lo - exp) < 1e-9 and abs(up - exp) < 1e-9


def test_training_fits_the_training_images(make_trainer, tiny_net):
    torch.manual_seed(0)
    trainer = make_trainer(tiny_net, ["a", "b"], ["c", "d"], iterations=40, batch=2, lr=1e-2)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["lower_loss"]))
    trainer.run()
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_gradients_are_zeroed_between_iterations(make_trainer, tiny_net):
    """Iteration 2 of a run equals iteration 1 of a fresh run started from the state after iteration 1."""
    import copy

    torch.manual_seed(0)
    run = make_trainer(tiny_net, ["a"], ["b"], iterations=1)
    run.run()
    net_after_1 = copy.deepcopy(tiny_net)
    lower_state = copy.deepcopy(run.lower_optimizer.state_dict())
    upper_state = copy.deepcopy(run.upper_optimizer.state_dict())
    run.state.max_epochs = 2
    run.run()  # iteration 2, with whatever the first iteration left behind
    fresh = make_trainer(net_after_1, ["a"], ["b"], iterations=1)
    fresh.lower_optimizer.load_state_dict(lower_state)
    fresh.upper_optimizer.load_state_dict(upper_state)
    fresh.run()
    for a, b in zip(tiny_net.parameters(), net_after_1.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in tiny_net.lower_parameters()), "W's gradient outlived the upper step"

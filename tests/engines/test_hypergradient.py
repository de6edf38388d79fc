"""Hypergradient variants on a small random BLO-SAM in float64: finite differences against exact."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss

from bundle.engines.hypergradient import (
    ExactHypergradient,
    FiniteDifferenceHypergradient,
    FirstOrderHypergradient,
    LowerStep,
    build_hypergradient,
    lower_step_scale,
)


def _batch(seed: int, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 256, 256, generator=g, dtype=torch.float64)
    labels = torch.zeros(n, 1, 256, 256, dtype=torch.float64)
    labels[:, :, 50 + 10 * seed : 170, 70:200] = 1
    return images, labels


def _engine_after_lower_steps(net, optimizer: str, steps: int = 3):
    """An engine-like namespace whose last lower step is recorded, as the trainer leaves it."""
    net = net.double()
    lower = net.lower_parameters()
    opt = torch.optim.AdamW(lower, lr=5e-3) if optimizer == "adamw" else torch.optim.SGD(lower, lr=0.5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    x1, y1 = _batch(1)
    for _ in range(steps):  # a few steps: LoRA B != 0 and a real Adam state with bias correction
        before = [p.detach().clone() for p in lower]
        opt.zero_grad()
        loss_fn(net(x1), y1).backward()
        opt.step()
        grads = [p.grad.detach().clone() for p in lower]
    engine = SimpleNamespace(
        network=net,
        loss_function=loss_fn,
        inferer=SimpleInferer(),
        scaler=None,
        autocast=contextlib.nullcontext,
        lower_optimizer=opt,
        lower_step=LowerStep(x1, y1, before, grads),
    )
    return engine


def _hypergrad(variant, engine, x2, y2) -> torch.Tensor:
    variant(engine, x2, y2)
    return torch.cat([p.grad.flatten() for p in engine.network.upper_parameters()])


@pytest.mark.parametrize(("optimizer", "radius"), [("adamw", 1e-3), ("adamw", 0.01), ("sgd", 1e-5)])
def test_finite_differences_agree_with_exact(tiny_net, one_thread, optimizer, radius):
    # AdamW (the bundle's optimiser) at the default radius and at DARTS's eps = 0.01 / ||u||. SAM's
    # decoder MLPs use ReLU, so grad_phi L1 jumps where a unit changes sign, and a central
    # difference equals the mixed Hessian-vector product only if the perturbation crosses no kink:
    # SGD's lr 0.5 makes u large enough to cross some at 0.01 on this random network (cosine 0.85).
    engine = _engine_after_lower_steps(tiny_net, optimizer)
    x2, y2 = _batch(2)
    first = _hypergrad(FirstOrderHypergradient(), engine, x2, y2)
    exact = _hypergrad(ExactHypergradient(), engine, x2, y2)
    fd = _hypergrad(FiniteDifferenceHypergradient(radius=radius), engine, x2, y2)
    cosine = torch.nn.functional.cosine_similarity(fd, exact, dim=0).item()
    rel = ((fd - exact).norm() / exact.norm()).item()
    correction = ((exact - first).norm() / first.norm()).item()
    print(
        f"{optimizer}: cosine {cosine:.6f}, relative error {rel:.2e}, " f"second-order term {correction:.2e} of first"
    )
    assert cosine >= 0.99 and rel <= 5e-2
    assert correction > 1e-6, "the second-order term vanished: the test would not tell the variants apart"


def test_finite_differences_agree_with_exact_on_litemedsam_in_float32(one_thread):
    # the real backbone and the trainer's precision, at the default radius
    from bundle.networks import BLOSAM, EmbeddingCache

    torch.manual_seed(0)
    net = BLOSAM("litemedsam", embedding_cache=EmbeddingCache())
    size = net.input_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, 1, size, size)
    labels[0, :, 40:200, 60:180] = 1
    labels[1, :, 60:220, 30:150] = 1
    lower = net.lower_parameters()
    opt = torch.optim.AdamW(lower, lr=5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    for _ in range(5):
        before = [p.detach().clone() for p in lower]
        opt.zero_grad()
        loss_fn(net(images[:1]), labels[:1]).backward()
        opt.step()
    grads = [p.grad.detach().clone() for p in lower]
    engine = SimpleNamespace(network=net, loss_function=loss_fn, inferer=SimpleInferer(), scaler=None,
                             autocast=contextlib.nullcontext, lower_optimizer=opt,
                             lower_step=LowerStep(images[:1], labels[:1], before, grads))  # fmt: skip
    first = _hypergrad(FirstOrderHypergradient(), engine, images[1:], labels[1:]).double()
    exact = _hypergrad(ExactHypergradient(), engine, images[1:], labels[1:]).double()
    fd = _hypergrad(build_hypergradient("finite_difference"), engine, images[1:], labels[1:]).double()
    cosine = torch.nn.functional.cosine_similarity(fd, exact, dim=0).item()
    rel = ((fd - exact).norm() / exact.norm()).item()
    print(f"litemedsam float32: cosine {cosine:.6f}, relative error {rel:.2e}, "
          f"second-order term {((exact - first).norm() / first.norm()).item():.2e} of first")  # fmt: skip
    assert cosine >= 0.99 and rel <= 5e-2


def test_first_order_is_the_plain_gradient_and_leaves_w_alone(tiny_net):
    engine = _engine_after_lower_steps(tiny_net, "adamw", steps=1)
    for p in engine.network.lower_parameters():
        p.grad = None
    x2, y2 = _batch(2)
    got = _hypergrad(FirstOrderHypergradient(), engine, x2, y2)
    phi = engine.network.upper_parameters()
    expected = torch.autograd.grad(engine.loss_function(engine.network(x2), y2), phi)
    torch.testing.assert_close(got, torch.cat([g.flatten() for g in expected]))
    assert all(p.grad is None for p in engine.network.lower_parameters())


def test_finite_differences_restore_the_lower_weights(tiny_net):
    engine = _engine_after_lower_steps(tiny_net, "adamw", steps=1)
    weights = [p.detach().clone() for p in engine.network.lower_parameters()]
    _hypergrad(FiniteDifferenceHypergradient(), engine, *_batch(2))
    assert all(torch.equal(a, b) for a, b in zip(weights, engine.network.lower_parameters(), strict=True))


def test_step_scale_is_the_learning_rate_in_effect_for_sgd(tiny_net):
    engine = _engine_after_lower_steps(tiny_net, "sgd", steps=1)
    engine.lower_optimizer.param_groups[0]["lr"] = 0.125
    lower = engine.network.lower_parameters()
    scales = lower_step_scale(engine.lower_optimizer, lower, engine.lower_step.grads)
    assert all(torch.all(s == 0.125) for s in scales)


@pytest.mark.parametrize("name", ["finite_difference", "exact"])
def test_second_order_variants_run_in_the_trainer(make_trainer, tiny_net, one_thread, name):
    from bundle.networks import EmbeddingCache

    tiny_net.embedding_cache = EmbeddingCache()  # as configured: torch.func must not hash its tensors
    trainer = make_trainer(tiny_net, ["a"], ["b"], iterations=2)
    trainer.hypergradient = build_hypergradient(name)
    trainer.run()
    assert trainer.lower_step is not None
    assert torch.isfinite(torch.tensor(trainer.state.output["hypergrad_norm"]))
    with pytest.raises(ValueError, match="Unknown hypergradient"):
        build_hypergradient("second")


@pytest.mark.parametrize("steps", [1, 3])
def test_step_scale_is_the_derivative_of_the_real_adamw_step(tiny_net, steps):
    # D must be dW'/dg of torch's own AdamW step: perturb the gradient it used, step again from
    # the same state, and difference the results (the step is elementwise, so all at once).
    import copy

    engine = _engine_after_lower_steps(tiny_net, "adamw", steps=steps)
    opt, lower = engine.lower_optimizer, engine.network.lower_parameters()
    before, grads = engine.lower_step.params_before, engine.lower_step.grads
    scales = lower_step_scale(opt, lower, grads)
    state_before = copy.deepcopy(opt.state_dict())  # state after the step: undo it for the probe
    delta = 1e-7

    def step_with(sign: float) -> list[torch.Tensor]:
        probe = [torch.nn.Parameter(w.clone()) for w in before]
        probe_opt = torch.optim.AdamW(probe, lr=opt.param_groups[0]["lr"])
        state = copy.deepcopy(state_before)
        for i, (w, g) in enumerate(zip(probe, grads, strict=True)):  # roll the moments back one step
            st = state["state"][i]
            b1, b2 = opt.param_groups[0]["betas"]
            st["exp_avg"] = (st["exp_avg"] - (1 - b1) * g) / b1
            st["exp_avg_sq"] = ((st["exp_avg_sq"] - (1 - b2) * g * g) / b2).clamp_min(0)
            st["step"] = st["step"] - 1
            w.grad = g + sign * delta * g.abs().clamp_min(1e-3)
        probe_opt.load_state_dict(state)
        probe_opt.step()
        return [w.detach() for w in probe]

    plus, minus = step_with(1.0), step_with(-1.0)
    numeric = torch.cat(
        [
            -(a - b).flatten() / (2 * delta * g.abs().clamp_min(1e-3).flatten())
            for a, b, g in zip(plus, minus, grads, strict=True)
        ]
    )
    analytic = torch.cat([d.flatten() for d in scales])
    moving = torch.cat([(g != 0).flatten() for g in grads])  # zero-moment weights: D = 0 by design
    torch.testing.assert_close(analytic[moving], numeric[moving], rtol=1e-3, atol=1e-6)
    assert torch.all(analytic[~moving] == 0) if steps == 1 else True

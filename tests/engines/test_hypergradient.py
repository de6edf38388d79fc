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
    engine = SimpleNamespace(
        network=net,
        loss_function=loss_fn,
        inferer=SimpleInferer(),
        scaler=None,
        autocast=contextlib.nullcontext,
        lower_optimizer=opt,
        lower_step=LowerStep(x1, y1, before),
    )
    return engine


def _hypergrad(variant, engine, x2, y2) -> torch.Tensor:
    variant(engine, x2, y2)
    return torch.cat([p.grad.flatten() for p in engine.network.upper_parameters()])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_finite_differences_agree_with_exact(tiny_net, one_thread, optimizer):
    # SAM's decoder MLPs use ReLU, so grad_phi L1 jumps where a unit changes sign: a central
    # difference converges to the exact mixed Hessian-vector product only for perturbations that
    # cross no kink. DARTS's radius (0.01 / ||u||) crosses some on this random network (cosine
    # 0.2-0.9 here); at 1e-5 in float64 it crosses none and the two must agree.
    engine = _engine_after_lower_steps(tiny_net, optimizer)
    x2, y2 = _batch(2)
    first = _hypergrad(FirstOrderHypergradient(), engine, x2, y2)
    exact = _hypergrad(ExactHypergradient(), engine, x2, y2)
    fd = _hypergrad(FiniteDifferenceHypergradient(radius=1e-5), engine, x2, y2)
    cosine = torch.nn.functional.cosine_similarity(fd, exact, dim=0).item()
    rel = ((fd - exact).norm() / exact.norm()).item()
    correction = ((exact - first).norm() / first.norm()).item()
    print(
        f"{optimizer}: cosine {cosine:.6f}, relative error {rel:.2e}, "
        f"second-order term {correction:.2e} of first"
    )
    assert cosine >= 0.99 and rel <= 5e-2
    assert correction > 1e-6, "the second-order term vanished: the test would not tell the variants apart"


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
    scales = lower_step_scale(engine.lower_optimizer, engine.network.lower_parameters())
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

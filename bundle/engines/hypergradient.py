"""Hypergradients of the upper-level loss with respect to the prompt embedding phi.

A hypergradient is an object the trainer is given (not a branch inside the trainer): it computes
the upper loss on a D2 batch and leaves the hypergradient in ``p.grad`` of the upper parameters.

Second-order variants need the lower step just taken; the trainer records it as a
:class:`LowerStep` in ``engine.lower_step`` when ``needs_lower_step`` is set.

The lower step. The update W' = W - u(g), g = grad_W L1(W, phi), is the AdamW step the optimiser
actually took (its real moments, bias correction of step t and the learning rate in effect). Its
derivative in g is diagonal, and we use it in full, the second moment's dependence on g included:

    D = du/dg = lr_t * ((1 - b1) / (1 - b1^t) / (s + eps) - m_hat (1 - b2) g / ((1 - b2^t) s (s + eps)^2))

with m_hat, s = sqrt(v_hat) the bias-corrected moments after the step (for SGD, ``D = lr_t``).
Holding v_hat fixed instead (the usual "preconditioned SGD" virtual step) overstates the step's
sensitivity badly: at t = 1 Adam moves every weight by ~lr sign(g), so D ~ lr eps / g^2 ~ 0, while
the fixed-v_hat form gives lr / |g|. One case is set apart: where the second moment is still
exactly zero (a weight that has never received a gradient, such as LoRA's A while B = 0), D would
be lr / eps ~ 1e5, a number that reflects eps, not the problem; such zeros are structural (the
gradient is zero for every phi, so its mixed Hessian row is zero too) and we set D = 0 there, which
keeps the finite-difference direction on the weights that matter. AdamW's decoupled weight decay
does not depend on phi.
The hypergradient is then
``grad_phi L2(W', phi) - d2L1/(dphi dW) (D * grad_W' L2(W', phi))``; the finite-difference and the
exact variant compute the same quantity, which is what makes the first a check of the second.

Mixed precision. The first-order variant runs under the trainer's autocast with the GradScaler's
scaled loss, like the lower step. The second-order terms are computed in float32 (autocast off):
a central difference at radius 1e-3 changes activations by about 1e-3 relative, the size of
float16 / bfloat16 rounding, so in half precision it would measure rounding noise (and float16
gradients of an unscaled loss underflow). Every variant leaves ``scale * hypergradient`` in
``p.grad`` when a GradScaler is in use, so ``scaler.step`` unscales it and skips a non-finite step.

Several processes (``torchrun``). Each process holds its share of the D1 and D2 batches; the
hypergradient of the global batches is the average of the processes' ones once the quantities
that are not linear in the data are global: the lower step (its gradient is averaged before the
step) and the direction ``u`` (``grad_W' L2`` is averaged before ``u`` is formed). The exact
variant is not supported there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bundle.engines.distributed import average_across_ranks, is_distributed


@dataclass
class UpperStep:
    """What an upper-level step produced."""

    loss: Tensor
    pred: Tensor
    grad_norm: float


@dataclass
class LowerStep:
    """The lower-level step just taken: its batch, the lower weights before it and the (unscaled)
    gradient it used."""

    inputs: Tensor
    targets: Tensor
    params_before: list[Tensor]
    grads: list[Tensor]


def lower_step_scale(optimizer: torch.optim.Optimizer, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """``D = dW'/dg`` of the optimiser's last step, per element, at the gradient ``grads`` it used
    (see the module docstring)."""
    scales = []
    for p, g in zip(params, grads, strict=True):
        group = next(group for group in optimizer.param_groups if any(q is p for q in group["params"]))
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:  # SGD: the step is lr * g (+ momentum that does not depend on g)
            scales.append(torch.full_like(p, group["lr"]))
            continue
        if group.get("amsgrad", False):
            raise ValueError("The second-order hypergradients support Adam/AdamW without amsgrad.")
        beta1, beta2 = group["betas"]
        lr, eps, step = group["lr"], group["eps"], float(state["step"])
        m_hat = state["exp_avg"] / (1 - beta1**step)
        v_hat = state["exp_avg_sq"] / (1 - beta2**step)
        s = v_hat.sqrt()
        safe_s = torch.where(s > 0, s, torch.ones_like(s))
        d = lr * (
            (1 - beta1) / (1 - beta1**step) / (s + eps)
            - m_hat * (1 - beta2) * g.to(s.dtype) / ((1 - beta2**step) * safe_s * (s + eps) ** 2)
        )
        scales.append(torch.where(s > 0, d, torch.zeros_like(d)))
    return scales


def _set_grads(engine, params: list[Tensor], grads: list[Tensor]) -> float:
    """Average the (unscaled) hypergradient across processes, leave it in ``p.grad`` (times the
    GradScaler's scale, which ``scaler.step`` divides out) and return its norm."""
    grads = [g.detach().to(p.dtype).clone() for p, g in zip(params, grads, strict=True)]
    average_across_ranks(grads)
    scale = float(engine.scaler.get_scale()) if engine.scaler is not None else 1.0
    for p, g in zip(params, grads, strict=True):
        p.grad = g * scale if scale != 1.0 else g
    return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))


def _loss(engine, inputs: Tensor, targets: Tensor, full_precision: bool = False) -> tuple[Tensor, Tensor]:
    # full_precision: autocast off inside the trainer's autocast (second-order terms, see above)
    context = torch.autocast(inputs.device.type, enabled=False) if full_precision else engine.autocast()
    with context:
        pred = engine.inferer(inputs, engine.network)
        return engine.loss_function(pred, targets).mean(), pred


class FirstOrderHypergradient:
    """``grad_phi L2(W', phi)`` at the updated lower weights W', treating W'(phi) as constant.

    The gradient is taken with ``torch.autograd.grad`` for phi only, so no gradient is computed for
    (or left in) the lower-level parameters.
    """

    name = "first"
    needs_lower_step = False

    def __call__(self, engine, inputs: Tensor, targets: Tensor) -> UpperStep:
        params = list(engine.network.upper_parameters())
        loss, pred = _loss(engine, inputs, targets)
        scaled = engine.scaler.scale(loss) if engine.scaler is not None else loss
        grads = [g.detach() for g in torch.autograd.grad(scaled, params)]
        average_across_ranks(grads)  # scaled gradients average like unscaled ones (same scale everywhere)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
        if engine.scaler is not None:
            norm /= float(engine.scaler.get_scale())
        return UpperStep(loss=loss.detach(), pred=pred.detach(), grad_norm=norm)


class FiniteDifferenceHypergradient:
    """DARTS-style second order: the mixed Hessian-vector product by central differences.

    ``(grad_phi L1(W+, phi) - grad_phi L1(W-, phi)) / (2 eps)`` with ``W+- = W +- eps u``,
    ``u = D * grad_W' L2(W', phi)`` over all lower parameters (the final attention's LoRA
    included) and ``eps = radius / ||u||``. W is the weight before the lower step, D its step's
    derivative.

    The default radius is 1e-3, not DARTS's 0.01: SAM's decoder MLPs use ReLU, so grad_phi L1 jumps
    where a unit changes sign, and a central difference equals the mixed Hessian-vector product only
    if the perturbation crosses no kink. On LiteMedSAM after 5 AdamW steps the difference against
    the exact hypergradient is (relative error) 0.68 at 0.01 and 6e-4 at 1e-3 in float32 (7e-7 in
    float64); at 1e-4 float32 rounding starts to show (6e-3). ``tests/engines/test_hypergradient.py``.

    Computed in float32 whatever the trainer's autocast (see the module docstring), so with AMP
    it equals the hypergradient of an fp32 run at the same weights.
    """

    name = "finite_difference"
    needs_lower_step = True

    def __init__(self, radius: float = 1e-3) -> None:
        self.radius = radius

    def __call__(self, engine, inputs: Tensor, targets: Tensor) -> UpperStep:
        net, lower_step = engine.network, engine.lower_step
        lower, upper = list(net.lower_parameters()), list(net.upper_parameters())
        loss, pred = _loss(engine, inputs, targets, full_precision=True)
        grads = torch.autograd.grad(loss, lower + upper)
        v, first = [g.detach() for g in grads[: len(lower)]], grads[len(lower) :]
        average_across_ranks(v)  # u must be the global batch's direction, the same on every rank
        u = [d * g for d, g in zip(lower_step_scale(engine.lower_optimizer, lower, lower_step.grads), v, strict=True)]
        u_norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in u))
        hyper = list(first)
        if u_norm > 0 and math.isfinite(u_norm):  # else a non-finite hypergradient: the scaler skips the step
            eps = self.radius / u_norm
            updated = [p.detach().clone() for p in lower]
            sides = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, w, x in zip(lower, lower_step.params_before, u, strict=True):
                        p.copy_(w + sign * eps * x)
                side_loss, _ = _loss(engine, lower_step.inputs, lower_step.targets, full_precision=True)
                sides.append(torch.autograd.grad(side_loss, upper))
            with torch.no_grad():
                for p, w in zip(lower, updated, strict=True):
                    p.copy_(w)
            hyper = [f - (gp - gm) / (2 * eps) for f, gp, gm in zip(first, *sides, strict=True)]
        norm = _set_grads(engine, upper, hyper)
        return UpperStep(loss=loss.detach(), pred=pred.detach(), grad_norm=norm)


class ExactHypergradient:
    """The same hypergradient by automatic differentiation through the lower step.

    ``W'(phi) = W' - D * (grad_W L1(W, phi) - grad_W L1(W, phi_0))`` equals the actual W' at the
    current phi_0 and has the AdamW step's derivative in phi there (D is exact per element);
    ``torch.func.grad`` differentiates
    ``L2(W'(phi), phi)`` through it (a double backward through the decoder). For checking and for
    small models: it costs about two extra backward passes and their memory.
    """

    name = "exact"
    needs_lower_step = True

    def __call__(self, engine, inputs: Tensor, targets: Tensor) -> UpperStep:
        from torch.func import functional_call, grad

        if is_distributed():
            raise NotImplementedError(
                "the exact hypergradient runs in one process only (it is for checking and small models); "
                "use 'finite_difference' for second order with several processes."
            )
        net, lower_step = engine.network, engine.lower_step
        names = {id(p): n for n, p in net.named_parameters()}
        lower, upper = list(net.lower_parameters()), list(net.upper_parameters())
        lower_names, upper_names = [names[id(p)] for p in lower], [names[id(p)] for p in upper]
        scale = dict(zip(lower_names, lower_step_scale(engine.lower_optimizer, lower, lower_step.grads), strict=True))
        before = dict(zip(lower_names, lower_step.params_before, strict=True))
        after = {n: p.detach() for n, p in zip(lower_names, lower, strict=True)}
        phi0 = {n: p.detach() for n, p in zip(upper_names, upper, strict=True)}

        # the frozen encoder runs outside the transforms (its cache hashes tensor data)
        lower_embeddings, upper_embeddings = net.encode(lower_step.inputs), net.encode(inputs)

        def lower_loss(w: dict, phi: dict) -> Tensor:
            pred = functional_call(net, {**w, **phi}, (lower_embeddings,), {"encoded": True}, strict=False)
            return engine.loss_function(pred, lower_step.targets).mean()

        g0 = {n: t.detach() for n, t in grad(lower_loss)(before, phi0).items()}

        def upper_loss(phi: dict) -> Tensor:
            g = grad(lower_loss)(before, phi)
            w = {n: after[n] - scale[n] * (g[n] - g0[n]) for n in lower_names}
            pred = functional_call(net, {**w, **phi}, (upper_embeddings,), {"encoded": True}, strict=False)
            return engine.loss_function(pred, targets).mean()

        hyper = grad(upper_loss)(phi0)
        with torch.no_grad():
            loss, pred = _loss(engine, inputs, targets)
        norm = _set_grads(engine, upper, [hyper[n] for n in upper_names])
        return UpperStep(loss=loss.detach(), pred=pred.detach(), grad_norm=norm)


HYPERGRADIENTS = {
    "first": FirstOrderHypergradient,
    "finite_difference": FiniteDifferenceHypergradient,
    "exact": ExactHypergradient,
}


def build_hypergradient(name: str, fd_radius: float = 1e-3):
    """The hypergradient variant called ``name`` (``first``, ``finite_difference`` or ``exact``).

    ``fd_radius`` is the finite-difference radius (``eps = fd_radius / ||u||``; DARTS uses 0.01,
    too large for SAM's ReLU decoder: see
    :class:`FiniteDifferenceHypergradient`).
    """
    if name not in HYPERGRADIENTS:
        raise ValueError(f"Unknown hypergradient {name!r}; choose one of {sorted(HYPERGRADIENTS)}.")
    if name == "finite_difference":
        return FiniteDifferenceHypergradient(radius=fd_radius)
    return HYPERGRADIENTS[name]()

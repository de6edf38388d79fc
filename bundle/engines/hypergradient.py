"""Hypergradients of the upper-level loss with respect to the prompt embedding phi.

A hypergradient is an object the trainer is given (not a branch inside the trainer): it computes
the upper loss on a D2 batch and leaves the hypergradient in ``p.grad`` of the upper parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class UpperStep:
    """What an upper-level step produced."""

    loss: Tensor
    pred: Tensor
    grad_norm: float


class FirstOrderHypergradient:
    """``grad_phi L2(W', phi)`` at the updated lower weights W', treating W'(phi) as constant.

    The gradient is taken with ``torch.autograd.grad`` for phi only, so no gradient is computed for
    (or left in) the lower-level parameters.
    """

    name = "first"

    def __call__(self, engine, inputs: Tensor, targets: Tensor) -> UpperStep:
        params = list(engine.network.upper_parameters())
        with engine.autocast():
            pred = engine.inferer(inputs, engine.network)
            loss = engine.loss_function(pred, targets).mean()
        scaled = engine.scaler.scale(loss) if engine.scaler is not None else loss
        grads = torch.autograd.grad(scaled, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.detach()
        norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
        if engine.scaler is not None:
            norm /= float(engine.scaler.get_scale())
        return UpperStep(loss=loss.detach(), pred=pred.detach(), grad_norm=norm)


HYPERGRADIENTS = {"first": FirstOrderHypergradient}


def build_hypergradient(name: str):
    """The hypergradient variant called ``name``."""
    if name not in HYPERGRADIENTS:
        raise ValueError(f"Unknown hypergradient {name!r}; choose one of {sorted(HYPERGRADIENTS)}.")
    return HYPERGRADIENTS[name]()

"""The training method, one config key (``method``): what trains on which images, with which engine.

- ``blo-sam``: bi-level. The LoRA decoder (W) on D1, the learnt prompt (phi) on D2, alternating
  (:class:`~bundle.engines.BiLevelTrainer`).
- ``joint``: one level. W and phi together on all k images (SAMed-like;
  :class:`~bundle.engines.SingleLevelTrainer`), as many images per step as the two levels use.
- ``decoder-only``: one level, W alone on all k images; the prompt keeps its initial value.

The three share the network, the loss, the data and every handler, so the key changes only what the
functions below pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch.optim import Optimizer

from bundle.data.fewshot import all_labelled
from bundle.engines.bilevel import BiLevelTrainer
from bundle.engines.single_level import SingleLevelTrainer
from bundle.errors import BundleInputError

METHODS = ("blo-sam", "joint", "decoder-only")


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else a one-line error naming the choices."""
    if method not in METHODS:
        raise BundleInputError(f"--method {method!r} is not a training method; choose one of {', '.join(METHODS)}")
    return method


def is_bilevel(method: str) -> bool:
    """Whether ``method`` trains two levels (and so steps the upper optimiser and its schedule)."""
    return check_method(method) == "blo-sam"


def trained_groups(network: Any, method: str, lrs: dict[str, float | None], default_lr: float) -> list[dict]:
    """Parameter groups of the main (lower-level) optimiser: W for ``blo-sam`` and ``decoder-only``,
    W and phi for ``joint`` (each group at its own lr from ``learning_rates``)."""
    groups = network.optimizer_groups(lrs, default_lr)
    if check_method(method) == "joint":
        groups += network.optimizer_groups(lrs, default_lr, upper=True)
    return groups


def main_items(method: str, halves: tuple[Sequence[dict], Sequence[dict]]) -> list[dict]:
    """Items the main loader draws from: D1 for ``blo-sam``, every labelled item (D1 and D2) otherwise."""
    return list(halves[0]) if is_bilevel(method) else all_labelled(halves)


def main_batch_size(method: str, batch_size: int, halves: Sequence[Sequence[dict]]) -> int:
    """The main loader's global batch: ``batch_size`` capped by D1 for ``blo-sam``; for one level
    as many images as the two levels together see in one bi-level iteration."""
    lower = min(batch_size, len(halves[0]))
    return lower if is_bilevel(method) else lower + min(batch_size, len(halves[1]))


def build_trainer(
    method: str,
    lower_data_loader: Iterable,
    upper_data_loader: Iterable,
    lower_optimizer: Optimizer,
    upper_optimizer: Optimizer,
    hypergradient: Callable | None = None,
    **common: Any,
) -> BiLevelTrainer | SingleLevelTrainer:
    """The engine of ``method``: :class:`BiLevelTrainer` for ``blo-sam``, else a
    :class:`SingleLevelTrainer` on the main (lower) loader and optimiser; the upper ones and the
    hypergradient stay unused. Every other keyword argument (``device``, ``max_epochs``, ``network``,
    ``loss_function``, ``inferer``, ``train_handlers``, ``amp``, ...) goes to either engine as is."""
    if is_bilevel(method):
        return BiLevelTrainer(
            lower_data_loader=lower_data_loader,
            upper_data_loader=upper_data_loader,
            lower_optimizer=lower_optimizer,
            upper_optimizer=upper_optimizer,
            hypergradient=hypergradient,
            **common,
        )
    return SingleLevelTrainer(train_data_loader=lower_data_loader, optimizer=lower_optimizer, **common)

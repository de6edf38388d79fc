"""Training engines: the bi-level trainer and its hypergradient variants."""

from bundle.engines.bilevel import BiLevelEvents, BiLevelTrainer, loss_items
from bundle.engines.hypergradient import (
    ExactHypergradient,
    FiniteDifferenceHypergradient,
    FirstOrderHypergradient,
    build_hypergradient,
)

__all__ = [
    "BiLevelEvents",
    "BiLevelTrainer",
    "ExactHypergradient",
    "FiniteDifferenceHypergradient",
    "FirstOrderHypergradient",
    "build_hypergradient",
    "loss_items",
]

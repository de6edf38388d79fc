"""Training engines: the bi-level trainer and its hypergradient variants."""

from bundle.engines.batches import GroundTruthPromptBatch
from bundle.engines.bilevel import BiLevelEvents, BiLevelTrainer, loss_items
from bundle.engines.distributed import (
    destroy_distributed,
    distributed_device,
    init_distributed,
    is_main_process,
    rank,
    world_size,
)
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
    "GroundTruthPromptBatch",
    "build_hypergradient",
    "destroy_distributed",
    "distributed_device",
    "init_distributed",
    "is_main_process",
    "loss_items",
    "rank",
    "world_size",
]

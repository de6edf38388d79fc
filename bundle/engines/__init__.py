"""Training engines: the bi-level trainer and its hypergradient variants, the single-level trainer, and
the ``method`` key that picks between them."""

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
from bundle.engines.methods import (
    METHODS,
    build_trainer,
    check_method,
    is_bilevel,
    main_batch_size,
    main_items,
    trained_groups,
)
from bundle.engines.single_level import SingleLevelTrainer

__all__ = [
    "BiLevelEvents",
    "BiLevelTrainer",
    "ExactHypergradient",
    "FiniteDifferenceHypergradient",
    "FirstOrderHypergradient",
    "GroundTruthPromptBatch",
    "METHODS",
    "SingleLevelTrainer",
    "build_trainer",
    "check_method",
    "is_bilevel",
    "main_batch_size",
    "main_items",
    "trained_groups",
    "build_hypergradient",
    "destroy_distributed",
    "distributed_device",
    "init_distributed",
    "is_main_process",
    "loss_items",
    "rank",
    "world_size",
]

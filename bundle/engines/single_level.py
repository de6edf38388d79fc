"""The single-level trainer (``method`` ``joint`` or ``decoder-only``): MONAI's ``SupervisedTrainer``
made correct under ``torchrun`` the way :class:`~bundle.engines.BiLevelTrainer` is.

MONAI's trainer leaves data parallelism to a ``DistributedDataParallel`` wrapper around the network.
BLO-SAM's network is not wrapped (its frozen encoder and embedding cache live outside autograd, and
the bi-level engine averages gradients itself), so this subclass does the same two things DDP would:
rank 0's weights are broadcast at the start, and every trained parameter's gradient is averaged
across processes after the backward pass, before the optimiser steps; the reported loss is the
global batch's, as one process would report it. One process: exactly ``SupervisedTrainer``.
"""

from __future__ import annotations

from typing import Any

from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from bundle.engines.bilevel import DropEpochComplete
from bundle.engines.distributed import average_across_ranks, average_gradients, broadcast_module, is_distributed


class SingleLevelTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` (one optimiser, one loader) that averages gradients across ``torchrun``
    processes. Arguments as for :class:`monai.engines.SupervisedTrainer`; ``decollate`` defaults to
    ``False`` as in the bi-level trainer (the handlers read batched outputs)."""

    def __init__(self, *args: Any, decollate: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, decollate=decollate, **kwargs)
        self.logger.addFilter(DropEpochComplete())
        self.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._average_gradients)
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._average_loss)

    def run(self) -> None:  # type: ignore[override]
        broadcast_module(self.network)  # identical starting weights on every process, as DDP does
        super().run()

    def _average_gradients(self, _engine: SingleLevelTrainer) -> None:
        average_gradients([p for group in self.optimizer.param_groups for p in group["params"]])

    def _average_loss(self, _engine: SingleLevelTrainer) -> None:
        if is_distributed():
            loss = self.state.output[Keys.LOSS].detach().float().clone()
            average_across_ranks([loss])
            self.state.output[Keys.LOSS] = loss

"""Snapshot-averaged weights: the trained parameters averaged over the last part of a run.

With exactly k labelled images and a fast learning rate, the last iteration's weights carry the noise of the
last few batches. Averaging snapshots taken along the end of the run (as stochastic weight averaging does)
gives the k-only protocol a "final weights" choice that needs no validation images.

Why not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the whole module, SAM's frozen image encoder
included, to average a few thousand trained values; here only the trained parameters are kept, as running
means in place of copies. The network has no batch-norm statistics to recompute afterwards (SAM's decoder
uses layer norms), so ``update_bn`` has no counterpart here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from bundle.atomic import save_atomically
from bundle.engines.distributed import is_main_process
from bundle.handlers.resume import trained_parameters

logger = logging.getLogger(__name__)


class SnapshotAveraging:
    """Replace the trained parameters by their mean over snapshots of the last ``fraction`` of the iterations.

    A snapshot is taken after every ``interval``-th iteration counted back from the last one (the last
    iteration is always one), among the iterations after ``(1 - fraction) * max_epochs``; one iteration per
    epoch, as the trainers here run. When the last iteration completes, and before ``COMPLETED`` handlers
    such as the final checkpoint run, the trained parameters are set to the mean of the snapshots. With
    validation images the validated best model is unchanged: only the final weights are averaged.

    Its ``state_dict`` (the running means and their count) belongs in the resume checkpoint
    (:class:`bundle.handlers.ResumableTraining`'s ``stateful``), so a resumed run averages the same
    snapshots as an uninterrupted one.

    Args:
        network: the model; its parameters with ``requires_grad`` are averaged.
        fraction: the share of the run, counted from its end, whose snapshots are averaged, in [0, 1];
            0 switches averaging off (the last iteration's weights are kept).
        interval: iterations between snapshots (>= 1).
        last_weights_path: if given, the last iteration's weights are also written there (same format as
            the final checkpoint) before they are replaced by the average, to compare the two.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        fraction: float = 0.0,
        interval: int = 10,
        last_weights_path: str | os.PathLike | None = None,
    ) -> None:
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"snapshot averaging: fraction must be in [0, 1], got {fraction}")
        if int(interval) < 1:
            raise ValueError(f"snapshot averaging: interval must be at least 1, got {interval}")
        self.network = network
        self.fraction = float(fraction)
        self.interval = int(interval)
        self.last_weights_path = Path(last_weights_path) if last_weights_path else None
        self.means: dict[str, torch.Tensor] = {}
        self.count = 0

    def attach(self, engine: Engine) -> None:
        """Take snapshots and apply their mean at the end of iterations (nothing is attached when off)."""
        if self.fraction > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_iteration_completed)

    def is_snapshot(self, iteration: int, last: int) -> bool:
        """Whether the weights after ``iteration`` (1-based) of a run of ``last`` iterations are averaged."""
        first = last - int(round(self.fraction * last))  # snapshots come after this iteration
        return iteration > first and (last - iteration) % self.interval == 0

    @torch.no_grad()
    def take_snapshot(self) -> None:
        """Fold the current trained parameters into the running means."""
        self.count += 1
        for name, p in trained_parameters(self.network).items():
            value = p.detach().float()
            if name not in self.means:
                self.means[name] = value.clone()
            else:  # a resumed run's means were loaded on the CPU
                mean = self.means[name].to(value.device)
                self.means[name] = mean + (value - mean) / self.count

    @torch.no_grad()
    def apply(self) -> None:
        """Set the trained parameters to the running means (the last weights are saved first if asked)."""
        if not self.count:
            return
        if self.last_weights_path is not None and is_main_process():
            save_atomically(self.network.state_dict(), self.last_weights_path)
        for name, p in trained_parameters(self.network).items():
            p.copy_(self.means[name].to(p.dtype))
        logger.info(f"snapshot averaging: final weights are the mean of {self.count} snapshots")

    def _on_iteration_completed(self, engine: Engine) -> None:
        iteration, last = engine.state.epoch, engine.state.max_epochs
        if self.is_snapshot(iteration, last):
            self.take_snapshot()
        if iteration == last:
            self.apply()

    def state_dict(self) -> dict[str, Any]:
        """The running means and the number of snapshots in them."""
        return {"count": self.count, "means": {n: t.clone() for n, t in self.means.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume)."""
        self.count = int(state["count"])
        self.means = {n: t.clone() for n, t in state["means"].items()}

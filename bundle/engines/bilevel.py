"""The bi-level trainer: one lower-level step on D1, then one upper-level step on the next D2 batch.

Built like MONAI's ``SupervisedTrainer`` / ``AdversarialTrainer``: ``_iteration`` does the two
steps and fires MONAI's ``IterationEvents`` (so StatsHandler, TensorBoard, CheckpointSaver,
ValidationHandler and LrScheduleHandler work unchanged) plus :class:`BiLevelEvents`. Everything
else (logging, validation, checkpoints, schedules) is a handler in the config.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from ignite.engine import EventEnum, Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Transform
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from bundle.engines.distributed import average_across_ranks, average_gradients, broadcast_module
from bundle.engines.hypergradient import FirstOrderHypergradient, LowerStep


class DropEpochComplete(logging.Filter):
    # Ignite logs "Epoch[n] Complete" at INFO; with one iteration per epoch that is one line per
    # iteration, which buries the validation lines. StatsHandler and the progress bar report progress.
    def filter(self, record: logging.LogRecord) -> bool:
        return "] Complete. Time taken" not in record.getMessage()


class BiLevelEvents(EventEnum):
    """Fired after each level's parameter update."""

    LOWER_COMPLETED = "lower_completed"
    UPPER_COMPLETED = "upper_completed"


class BiLevelTrainer(Trainer):
    """Alternating lower (W on D1) and upper (phi on D2) updates of a network with
    ``lower_parameters()`` and ``upper_parameters()``.

    One engine iteration = one lower step on the D1 batch Ignite hands over + one upper step on
    the next batch of D2, drawn from its own iterator that cycles over D2 (so every D2 sample is
    seen once per pass and consecutive upper steps see different batches).

    Under ``torchrun`` (a process group initialised, see :mod:`bundle.engines.distributed`) each
    process gets its share of every global batch; rank 0's weights are broadcast at the start, both
    levels' gradients and the reported losses are averaged across processes, so every process takes
    the step one process takes on the global batch.

    Args:
        device: torch device.
        max_epochs: number of epochs; with ``epoch_length=1`` an epoch is one iteration.
        lower_data_loader: D1 batches (Ignite's iteration data).
        upper_data_loader: D2 batches.
        network: the BLO-SAM model.
        lower_optimizer: optimiser over ``network.lower_parameters()``.
        upper_optimizer: optimiser over ``network.upper_parameters()``.
        loss_function: ``loss(pred, label)``, e.g. ``DiceCELoss``.
        hypergradient: computes the upper gradient (default: first order).
        amp: mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU).
        Other arguments as in :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        lower_data_loader: Iterable,
        upper_data_loader: Iterable,
        network: torch.nn.Module,
        lower_optimizer: Optimizer,
        upper_optimizer: Optimizer,
        loss_function: Callable,
        hypergradient: Callable | None = None,
        epoch_length: int | None = 1,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        decollate: bool = False,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=lower_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=amp,
            event_names=[BiLevelEvents],
            decollate=decollate,
        )
        self.network = network
        self.lower_optimizer = lower_optimizer
        self.upper_optimizer = upper_optimizer
        self.loss_function = loss_function
        self.hypergradient = FirstOrderHypergradient() if hypergradient is None else hypergradient
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.upper_data_loader = upper_data_loader
        self._upper_iter: Iterator | None = None
        self.lower_step: LowerStep | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.logger.addFilter(DropEpochComplete())
        self.add_event_handler(Events.STARTED, self._log_variant)

    def _log_variant(self, _engine: BiLevelTrainer) -> None:
        name = getattr(self.hypergradient, "name", type(self.hypergradient).__name__)
        self.logger.info(f"bi-level training with the {name!r} hypergradient, amp={self.amp}")

    def run(self) -> None:  # type: ignore[override]
        self.scaler = self._make_scaler()
        broadcast_module(self.network)  # identical starting weights on every process, as DDP does
        super(Trainer, self).run()

    def _make_scaler(self) -> torch.amp.GradScaler | None:
        # a loss scaler only matters for float16 on CUDA; CPU autocast uses bfloat16
        dev = torch.device(self.state.device)
        return torch.amp.GradScaler("cuda") if self.amp and dev.type == "cuda" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this trainer (a no-op unless ``amp``)."""
        dev = torch.device(self.state.device)
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
        return torch.autocast(dev.type, dtype=dtype)

    def next_upper_batch(self) -> Any:
        """The next D2 batch; a finished pass over D2 starts a new (reshuffled) one."""
        if self._upper_iter is None:
            self._upper_iter = iter(self.upper_data_loader)
        try:
            return next(self._upper_iter)
        except StopIteration:
            self._upper_iter = iter(self.upper_data_loader)
            return next(self._upper_iter)

    def _prepare(self, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.prepare_batch(batchdata, self.state.device, self.non_blocking)
        return batch[0], batch[1]

    def _step(self, optimizer: Optimizer) -> None:
        # the scale is updated once per iteration (in _iteration), after both levels stepped: both
        # levels' gradients are scaled by the same factor, and a non-finite gradient in either
        # lowers it once, as GradScaler expects for several optimisers in one iteration
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def _iteration(self, engine: BiLevelTrainer, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine._prepare(batchdata)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.lower_optimizer.zero_grad(set_to_none=True)
        engine.upper_optimizer.zero_grad(set_to_none=True)

        # lower level: W <- W - lr * grad_W L1(W, phi) on the D1 batch
        needs_lower_step = getattr(engine.hypergradient, "needs_lower_step", False)
        if needs_lower_step:
            before = [p.detach().clone() for p in engine.network.lower_parameters()]
        with engine.autocast():
            engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(engine.state.output[Keys.PRED], targets).mean()
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        (engine.scaler.scale(loss) if engine.scaler is not None else loss).backward()
        average_gradients(list(engine.network.lower_parameters()))
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine._step(engine.lower_optimizer)
        if needs_lower_step:  # the step's gradient, unscaled (GradScaler.step unscales p.grad in place)
            grads = [
                torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                for p in engine.network.lower_parameters()
            ]
            engine.lower_step = LowerStep(inputs, targets, before, grads)
        else:
            engine.lower_step = None
        engine.fire_event(BiLevelEvents.LOWER_COMPLETED)

        # upper level: phi <- phi - lr * hypergradient on the next D2 batch
        engine.lower_optimizer.zero_grad(set_to_none=True)
        engine.upper_optimizer.zero_grad(set_to_none=True)
        upper_inputs, upper_targets = engine._prepare(engine.next_upper_batch())
        start = time.perf_counter()
        upper = engine.hypergradient(engine, upper_inputs, upper_targets)  # averaged across ranks
        engine._step(engine.upper_optimizer)
        if engine.scaler is not None:
            engine.scaler.update()
        upper_seconds = time.perf_counter() - start
        engine.fire_event(BiLevelEvents.UPPER_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        losses = torch.stack([loss.detach().float(), upper.loss.detach().float()])
        average_across_ranks([losses])  # report the global batches' losses, as one process would
        engine.state.output.update(
            {
                Keys.LOSS: loss.detach(),
                "lower_loss": losses[0].item(),
                "upper_loss": losses[1].item(),
                "hypergrad_norm": upper.grad_norm,
                "upper_seconds": upper_seconds,
            }
        )
        return engine.state.output


def loss_items(output: dict) -> dict[str, float]:
    """Both levels' losses, the hypergradient norm and the upper step's time from a trainer output,
    for StatsHandler / TensorBoard ``output_transform``; a single-level trainer's (MONAI's
    ``SupervisedTrainer``, the baselines) gives its one loss."""
    keys = ("lower_loss", "upper_loss", "hypergrad_norm", "upper_seconds")
    if "lower_loss" not in output:
        return {"loss": float(output[Keys.LOSS])}
    return {k: output[k] for k in keys}

"""Resumable bi-level training: one atomic checkpoint of everything the next iteration depends on.

Saved every ``interval`` iterations: both levels' trainable parameters, both optimisers, both lr
schedulers, the AMP GradScaler, the iteration, the D1/D2 samplers' positions, the random states of
the random transforms and of torch (CPU and CUDA) / numpy / python, and the model-selection state
(best validation Dice, its iteration, the saved-best bookkeeping), and the states of the objects passed as
``stateful`` (the running means of snapshot averaging). On start, a checkpoint of the
same run (same fingerprint: data split and settings) is restored, so stopping at iteration k, even
by SIGKILL, and running the same command again gives the weights an uninterrupted run gives. A
finished run deletes its checkpoint; a checkpoint of another run is ignored with a warning.

Independent of where the handler sits among the others: the state after iteration k is saved
when iteration k + 1 starts (``EPOCH_STARTED``, one iteration per epoch), i.e. after every handler
of iteration k (validation, epoch-level lr schedulers, ...) has run, and it is restored when the
first iteration starts, after every ``STARTED`` handler (e.g. a ``CheckpointLoader`` of initial
weights, which must not overwrite the resumed ones).

Under ``torchrun`` every process restores the same file (on a file system they share), the random
states are saved per rank (gathered to rank 0), and only rank 0 writes or deletes the file.

Ignite's ``Checkpoint`` covers objects with ``state_dict``; the random states of MONAI transforms
and the evaluator's best-metric fields have none, hence this handler.
"""

from __future__ import annotations

import ast
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, Randomizable

from bundle.atomic import save_atomically
from bundle.engines.distributed import (
    broadcast_object,
    gather_objects,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)

logger = logging.getLogger(__name__)

_FORMAT = 3  # 2: GradScaler, per-rank random states with CUDA's; 3: other handlers' states ("stateful")


def trained_parameters(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training updates (``requires_grad``), by name: what resuming restores and averaging means."""
    return {n: p for n, p in network.named_parameters() if p.requires_grad}


def _randomizables(transform: Compose) -> list[Randomizable]:
    found = []
    for t in transform.flatten().transforms:
        if isinstance(t, Randomizable):
            found.append(t)
            found += [v for v in vars(t).values() if isinstance(v, Randomizable)]
    return found


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}  # fmt: skip


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]


class ResumableTraining:
    """Checkpoint and restore a :class:`bundle.engines.BiLevelTrainer` run (anywhere in the handler list).

    Args:
        path: the checkpoint file (e.g. ``models/resume.pt``).
        interval: save every ``interval`` iterations.
        network: the model; its lower- and upper-level parameters are saved.
        optimizers: both levels' optimisers.
        lr_schedulers: both levels' schedulers.
        samplers: the D1 and D2 samplers (with ``state_dict``).
        transforms: the training preprocessing (its random transforms' states are saved).
        evaluator: the validation evaluator (best metric and its iteration).
        best_saver: the evaluator's ``CheckpointSaver`` keeping the best model.
        fingerprint: anything identifying the run; a checkpoint with another one is not resumed.
        resume: ``False`` starts afresh even if a checkpoint exists.
        summary_writer: the run's TensorBoard ``SummaryWriter``: after a resume from iteration k it
            gets a purge marker at k + 1, so TensorBoard hides what the interrupted attempt logged
            after k instead of showing those iterations twice.
        stateful: more objects with ``state_dict``/``load_state_dict`` whose state the next iterations
            depend on (e.g. :class:`bundle.handlers.SnapshotAveraging`'s running means).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        interval: int,
        network: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        lr_schedulers: Sequence[Any],
        samplers: Sequence[Any],
        transforms: Compose,
        evaluator: Engine | None = None,
        best_saver: Any = None,
        fingerprint: Any = None,
        resume: bool = True,
        summary_writer: Any = None,
        stateful: Sequence[Any] = (),
    ) -> None:
        self.path = Path(path)
        self.stateful = list(stateful)
        self.summary_writer = summary_writer
        self.interval = int(interval)
        self.network = network
        self.optimizers = list(optimizers)
        self.lr_schedulers = list(lr_schedulers)
        self.samplers = list(samplers)
        self.randomizables = _randomizables(transforms)
        self.evaluator = evaluator
        self.best_saver = best_saver
        self.fingerprint = repr(fingerprint)
        self.resume = resume
        self.resumed_from: int | None = None
        self._first_epoch = True
        # the evaluator's starting best metric (MONAI: -1, -1), set back when the best model is gone
        state = getattr(evaluator, "state", None)
        self._initial_best = (getattr(state, "best_metric", -1), getattr(state, "best_metric_epoch", -1))

    def attach(self, engine: Engine) -> None:
        """Restore at the first iteration's start, save at the start of every iteration after a
        multiple of ``interval``, delete the checkpoint when the run completes."""
        engine.add_event_handler(Events.STARTED, self._arm)
        engine.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        engine.add_event_handler(Events.COMPLETED, self.remove)

    def _arm(self, _engine: Engine) -> None:
        self._first_epoch = True

    def _on_epoch_started(self, engine: Engine) -> None:
        if self._first_epoch:  # every STARTED handler has run: restore now
            self._first_epoch = False
            self.restore(engine)
            return
        self._maybe_save(engine)

    def _random_state(self) -> dict[str, Any]:
        # this process's random states (they differ between ranks: each augments its own share)
        state = {
            "transforms": [_numpy_state_to_tensors(t.R.get_state()) for t in self.randomizables],
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_state_to_tensors(np.random.get_state()),
            "python_rng": repr(random.getstate()),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _set_random_state(self, state: dict[str, Any]) -> None:
        for obj, s in zip(self.randomizables, state["transforms"], strict=True):
            obj.R.set_state(_numpy_state_from_tensors(s))
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(_numpy_state_from_tensors(state["numpy_rng"]))
        random.setstate(ast.literal_eval(state["python_rng"]))
        cuda = state.get("cuda_rng")
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                logger.warning(f"resume: CUDA random states of {len(cuda)} devices, this host has "
                               f"{torch.cuda.device_count()}; not restored")  # fmt: skip

    def state_dict(self, engine: Engine, iteration: int | None = None) -> dict[str, Any]:
        """Everything needed to continue after ``iteration`` (default: the current one).

        With several processes every rank must call it (the random states are gathered).
        """
        done = engine.state.iteration if iteration is None else iteration
        scaler = getattr(engine, "scaler", None)
        state: dict[str, Any] = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint,
            "iteration": done,
            "epoch": done,  # one iteration per epoch
            "params": {n: p.detach().clone() for n, p in trained_parameters(self.network).items()},
            "optimizers": [o.state_dict() for o in self.optimizers],
            "lr_schedulers": [s.state_dict() for s in self.lr_schedulers],
            "samplers": [s.state_dict() for s in self.samplers],
            "scaler": scaler.state_dict() if scaler is not None else None,
            "random": gather_objects(self._random_state()),  # one entry per rank
            "stateful": [s.state_dict() for s in self.stateful],
        }
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        if self.best_saver is not None and self.best_saver._key_metric_checkpoint is not None:
            # MONAI's CheckpointSaver restores this list (load_state_dict) but has no getter for it
            state["best_saver"] = self.best_saver._key_metric_checkpoint.state_dict()
        return state

    def _maybe_save(self, engine: Engine) -> None:
        # called as iteration `done + 1` starts: everything of iteration `done` has happened
        done = engine.state.epoch - 1
        if done > 0 and done % self.interval == 0:
            state = self.state_dict(engine, done)  # on every rank: it gathers the random states
            if is_main_process():
                save_atomically(state, self.path)

    def _load(self) -> dict[str, Any] | None:
        # the checkpoint if it exists, is readable and belongs to this run
        if not (self.resume and self.path.is_file()):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file must not stop a fresh start
            logger.warning(f"cannot read resume checkpoint {self.path} ({err}); starting from iteration 0")
            return None
        if state.get("fingerprint") != self.fingerprint or state.get("format") != _FORMAT:
            logger.warning(f"resume checkpoint {self.path} is from another run (other data or settings); "
                           "starting from iteration 0 (it will be overwritten)")  # fmt: skip
            return None
        return state

    def restore(self, engine: Engine) -> None:
        """Load the checkpoint into the run if it exists and belongs to this run.

        With several processes rank 0 reads it and sends it to the others, so they need not share
        a file system and all take the same decision.
        """
        state = broadcast_object(self._load() if is_main_process() else None)
        if state is None:
            return
        with torch.no_grad():
            for name, p in trained_parameters(self.network).items():
                p.copy_(state["params"][name])
        for obj, s in zip(self.optimizers, state["optimizers"], strict=True):
            obj.load_state_dict(s)
        for obj, s in zip(self.lr_schedulers, state["lr_schedulers"], strict=True):
            obj.load_state_dict(s)
        for obj, s in zip(self.samplers, state["samplers"], strict=True):
            obj.load_state_dict(s)
        for obj, s in zip(self.stateful, state["stateful"], strict=True):
            obj.load_state_dict(s)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        processes, index = (world_size(), rank()) if is_distributed() else (1, 0)
        if len(state["random"]) == processes:
            self._set_random_state(state["random"][index])
        else:
            logger.warning(f"resume: random states of a run with {len(state['random'])} processes, this one has "
                           f"{processes}; augmentations will differ from an uninterrupted run")  # fmt: skip
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self.best_saver is not None and "best_saver" in state:
            self.best_saver.load_state_dict(state["best_saver"])
            checkpoint = self.best_saver._key_metric_checkpoint
            if self.evaluator is not None and state["best_saver"].get("_saved") and not checkpoint._saved:
                # AtomicCheckpointSaver forgot a best model whose file is gone: keeping its score would
                # label the next best model with the old, higher Dice (and keep better ones from counting)
                self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = self._initial_best
                logger.warning(f"resume: the best model of iteration {state.get('best_metric_epoch')} is missing; "
                               "its best metric is forgotten too")  # fmt: skip
        engine.state.iteration = state["iteration"]
        engine.state.epoch = state["epoch"] + 1  # restored as iteration `iteration + 1` starts
        self.resumed_from = state["iteration"]
        logger.info(f"resumed from {self.path} at iteration {self.resumed_from}")
        purge_tensorboard(self.summary_writer, self.resumed_from + 1)

    def remove(self, engine: Engine) -> None:
        """A finished run needs no resume point."""
        if engine.state.epoch >= engine.state.max_epochs and is_main_process():
            self.path.unlink(missing_ok=True)


def purge_tensorboard(writer: Any, step: int) -> None:
    """Make TensorBoard hide the events of ``writer``'s log folder logged at ``step`` or later by an
    earlier attempt (the marker ``SummaryWriter(purge_step=...)`` writes, added to a live writer)."""
    if writer is None or not hasattr(writer, "_get_file_writer"):
        return
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    file_writer = writer._get_file_writer()
    file_writer.add_event(Event(step=int(step), file_version="brain.Event:2"))
    file_writer.add_event(Event(step=int(step), session_log=SessionLog(status=SessionLog.START)))
    writer.flush()

"""A warning when a training run ends with a model that predicts nothing.

Too few iterations (or a learning rate too low) leave BLO-SAM's learnt prompt near its start and the
decoder answering "no object": the saved model then writes empty masks everywhere, and nothing in the
run said so (MONAI Label served such a model without a word). The last iterations' lower-level
predictions on the labelled images are what the model does on the images it knows best: if none of
them holds a foreground pixel while their labels do, the run says so when it ends.
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

logger = logging.getLogger(__name__)


class EmptyPredictionWarning:
    """Warn at the end of training when the last ``window`` iterations predicted no foreground at all
    on labelled images that have some.

    Args:
        window: the last iterations whose predictions are checked.
    """

    def __init__(self, window: int = 10) -> None:
        self.window = max(1, int(window))
        self.predicted = 0
        self.labelled = 0
        self.message: str | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _reset(self, engine: Engine) -> None:
        self.predicted = self.labelled = 0
        self.message = None

    @torch.no_grad()
    def _count(self, engine: Engine) -> None:
        if engine.state.iteration <= engine.state.epoch_length * engine.state.max_epochs - self.window:
            return
        output = engine.state.output
        if not isinstance(output, dict) or Keys.PRED not in output or Keys.LABEL not in output:
            return
        self.predicted += int((output[Keys.PRED].argmax(dim=1) > 0).sum())
        self.labelled += int((output[Keys.LABEL] > 0).sum())

    def _report(self, engine: Engine) -> None:
        if self.labelled == 0 or self.predicted > 0:
            return
        self.message = (
            f"the trained model predicts no foreground on its labelled images in the last {self.window} "
            f"iterations (of {engine.state.iteration}): its masks will be empty. Train longer (more iterations, "
            "e.g. --iterations 300, or MONAI Label's max_epochs) or check that the labels mark the structure"
        )
        logger.warning(self.message)
        print(f"warning: {self.message}", flush=True)

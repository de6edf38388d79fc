"""A progress bar over training iterations.

Ignite's ``ProgressBar`` draws one bar per epoch by default; the bi-level trainer runs one
iteration per epoch (``epoch_length=1``), so the bar is attached to epoch events instead and
closed when the whole run completes.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar


class IterationProgressBar(ProgressBar):
    """One tqdm bar from the first to the last iteration of a run (with the losses in it)."""

    def attach(self, engine: Engine, metric_names=None, output_transform=None, **kwargs) -> None:  # type: ignore[override]
        super().attach(
            engine,
            metric_names=metric_names,
            output_transform=output_transform,
            event_name=Events.EPOCH_COMPLETED,
            closing_event_name=Events.COMPLETED,
        )

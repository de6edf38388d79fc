"""Handlers used by the configs: overlay images and the end-of-training summary."""

from bundle.atomic import save_atomically
from bundle.handlers.overlay import OverlaySaver, overlay_image
from bundle.handlers.progress import IterationProgressBar
from bundle.handlers.resume import ResumableTraining
from bundle.handlers.summary import evaluation_summary, existing_checkpoint, training_summary

__all__ = [
    "ResumableTraining",
    "save_atomically",
    "IterationProgressBar",
    "OverlaySaver",
    "evaluation_summary",
    "existing_checkpoint",
    "overlay_image",
    "training_summary",
]

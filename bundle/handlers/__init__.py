"""Handlers used by the configs: overlay images, the end-of-training summary, atomic checkpoints, early checks."""

from bundle.atomic import save_atomically
from bundle.handlers.averaging import SnapshotAveraging
from bundle.handlers.checkpoint import AtomicCheckpointSaver, AtomicDiskSaver
from bundle.handlers.checks import (
    CheckedCheckpointLoader,
    check_checkpoint,
    check_command_line,
    check_device,
    check_inference,
    check_training,
    check_writable,
    checkpoint_class_count,
    existing_checkpoint,
)
from bundle.handlers.empty import EmptyPredictionWarning
from bundle.handlers.overlay import OverlaySaver, overlay_image
from bundle.handlers.progress import IterationProgressBar
from bundle.handlers.resume import ResumableTraining
from bundle.handlers.summary import evaluation_summary, training_summary

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckedCheckpointLoader",
    "EmptyPredictionWarning",
    "ResumableTraining",
    "SnapshotAveraging",
    "save_atomically",
    "IterationProgressBar",
    "OverlaySaver",
    "check_checkpoint",
    "check_command_line",
    "check_device",
    "check_inference",
    "checkpoint_class_count",
    "check_training",
    "check_writable",
    "evaluation_summary",
    "existing_checkpoint",
    "overlay_image",
    "training_summary",
]

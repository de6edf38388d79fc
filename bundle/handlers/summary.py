"""A one-line summary of a finished training run, printed by the ``training`` / ``finalize`` keys."""

from __future__ import annotations

import os

from monai.engines import Evaluator


def training_summary(evaluator: Evaluator, ckpt_dir: str) -> str:
    """Best validation Dice, the iteration it was reached at, and where the model was saved."""
    state = evaluator.state
    if state.best_metric_epoch < 0:
        final = "model.pt" if os.path.isfile(os.path.join(ckpt_dir, "model.pt")) else "model_final.pt"
        return (
            "training ended without validation (k labelled images only: the final weights are the model); "
            f"saved to {os.path.join(ckpt_dir, final)}"
        )
    path = os.path.join(ckpt_dir, "model.pt")
    return (
        f"best validation Dice {state.best_metric:.4f} at iteration {state.best_metric_epoch} "
        f"(last validation {state.metrics.get(evaluator.state.key_metric_name, float('nan')):.4f}); "
        f"model saved to {path} (last iteration's weights: model_final.pt)"
    )


def existing_checkpoint(path: str) -> str:
    """``path`` if it is a file, else a FileNotFoundError that says how to make one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint {path} not found. Train one first "
            "(`python -m monai.bundle run training --config_file configs/train.json`) or pass --ckpt_path."
        )
    return path


def evaluation_summary(evaluator: Evaluator, output_dir: str) -> str:
    """Mean Dice of an evaluation run and where its per-case table was written."""
    name = evaluator.state.key_metric_name
    cases = len(evaluator.state.metric_details.get(name, [])) if hasattr(evaluator.state, "metric_details") else 0
    return (
        f"{name}: {evaluator.state.metrics[name]:.4f} over {cases or 'all'} cases at original resolution; "
        f"per-case values in {os.path.join(output_dir, name + '_raw.csv')}, summary in "
        f"{os.path.join(output_dir, name + '_summary.csv')}"
    )

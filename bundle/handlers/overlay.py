"""Overlay PNGs of a few evaluated cases: the original image, ground truth and prediction.

A person judges a segmentation faster by looking than by reading a Dice. The overlay is drawn on
the original image file at its original resolution, with the ground truth outlined in green and
the prediction filled in red.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image, ImageFilter

from bundle.atomic import atomic_path
from bundle.data.readers import pil_converter


def _class_map(x: torch.Tensor) -> np.ndarray:
    """C x W x H one-hot (or 1 x W x H indices) -> H x W class indices (PIL row order)."""
    x = x.detach().cpu()
    idx = x.argmax(0) if x.shape[0] > 1 else x[0]
    return idx.numpy().astype(np.uint8).T


def overlay_image(image: Image.Image, label: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """RGB overlay: prediction filled red, ground-truth outline green."""
    base = image.convert("RGB")
    if base.size != (pred.shape[1], pred.shape[0]):
        base = base.resize((pred.shape[1], pred.shape[0]))
    rgb = np.asarray(base, dtype=np.float32)
    fill = pred > 0
    rgb[fill] = (1 - alpha) * rgb[fill] + alpha * np.array([255.0, 0.0, 0.0])
    gt = Image.fromarray(((label > 0) * 255).astype(np.uint8))
    edge = np.asarray(gt.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))) > 0
    rgb[edge] = np.array([0.0, 255.0, 0.0])
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


class OverlaySaver:
    """Save ``<stem>_overlay.png`` for the first ``num_cases`` cases an evaluator sees.

    Expects decollated engine outputs with ``pred`` and ``label`` on the original image grid
    (after ``Invertd``) and the image's source file in ``image.meta["filename_or_obj"]``.
    """

    def __init__(self, output_dir: str | os.PathLike, num_cases: int = 6) -> None:
        self.output_dir = Path(output_dir)
        self.num_cases = num_cases
        self.saved: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.saved.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for item in engine.state.output:
            if len(self.saved) >= self.num_cases:
                return
            source = Path(str(item["image"].meta["filename_or_obj"]))
            pred, label = _class_map(item["pred"]), _class_map(item["label"])
            try:
                image = pil_converter(Image.open(source))
            except Exception:  # non-PIL inputs (e.g. raw .IMG): show the mask on black
                image = Image.new("RGB", (pred.shape[1], pred.shape[0]))
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / f"{source.name.split('.')[0]}_overlay.png"
            with atomic_path(path) as tmp:
                overlay_image(image, label, pred).save(tmp, format="PNG")
            self.saved.append(path)

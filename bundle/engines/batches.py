"""``prepare_batch`` callables for MONAI engines."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from monai.transforms import Resize, SpatialPad, Transpose

from bundle.preprocessing import TO_ROWS_FIRST


class GroundTruthPromptBatch:
    """Hands the ground truth, resampled onto the model input grid, to the network as ``prompt_masks``.

    For the box-prompted zero-shot baseline (:class:`~bundle.networks.box_prompt.BoxPromptedSAM`):
    the evaluator's labels stay at the original resolution (Dice is measured there), while the
    network needs them where the image is: made upright (rows first), longest side resized to
    ``input_size`` (nearest), padded at the end, exactly as :mod:`bundle.preprocessing` does to the image.
    """

    def __init__(self, input_size: int, upright: bool = True) -> None:
        self.upright = Transpose(TO_ROWS_FIRST) if upright else (lambda x: x)
        self.resize = Resize(spatial_size=input_size, size_mode="longest", mode="nearest")
        self.pad = SpatialPad(spatial_size=(input_size, input_size), method="end")

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        plain = labels.as_tensor() if hasattr(labels, "as_tensor") else labels
        prompts = torch.stack([torch.as_tensor(self.pad(self.resize(self.upright(label.cpu())))) for label in plain])
        return images, labels, (), {"prompt_masks": prompts.to(images.device)}

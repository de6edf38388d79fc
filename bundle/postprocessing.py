"""Clean predicted masks the way each task's anatomy allows, with MONAI's own transforms.

A prompt-free decoder trained on a few images leaves enclosed holes and scattered false-positive
blobs; both cost Dice and, far more, HD95. Per preset (config keys ``postprocess_*``):

- ``fill_holes``: MONAI ``FillHoles`` (a lung or a polyp has no hole);
- ``keep_components``: MONAI ``KeepLargestConnectedComponent`` with that many components per class
  (2 for "lung": left and right);
- ``min_size``: MONAI ``RemoveSmallObjects``, the size a fraction of the image's pixels (so the
  same setting works at every resolution): polyps, teeth.

Applied to the class-index map (1 x spatial) at the original resolution, after ``Invertd`` and the
argmax, in evaluation, inference, volumes and the MONAI Label path alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform, RemoveSmallObjects


class CleanMaskd(MapTransform):
    """Fill holes, keep the largest components and drop small objects of a class-index map.

    Args:
        keys: keys of 1 x spatial class-index maps.
        num_classes: foreground classes C (labels 1..C are cleaned).
        fill_holes: fill enclosed holes of each class.
        keep_components: keep this many largest components per class (``None``: all).
        min_size: drop components smaller than this fraction of the image's pixels (0: none).
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        fill_holes: bool = False,
        keep_components: int | None = None,
        min_size: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        labels = list(range(1, int(num_classes) + 1))
        self.fill = FillHoles(applied_labels=labels) if fill_holes else None
        self.keep = (
            KeepLargestConnectedComponent(applied_labels=labels, is_onehot=False, num_components=int(keep_components))
            if keep_components
            else None
        )
        self.min_size = float(min_size)
        if not 0.0 <= self.min_size < 1.0:
            raise ValueError(f"postprocess_min_size is a fraction of the image (0 <= x < 1), got {min_size}")

    @property
    def active(self) -> bool:
        """Whether this cleans anything."""
        return bool(self.fill or self.keep or self.min_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.active:
            return d
        for key in self.key_iterator(d):
            d[key] = self.clean(d[key])
        return d

    def clean(self, labels: torch.Tensor) -> torch.Tensor:
        """The cleaned 1 x spatial class-index map."""
        if labels.shape[0] != 1:
            raise ValueError(f"CleanMaskd expects a 1 x spatial class-index map, got {tuple(labels.shape)}")
        out = labels
        if self.min_size:
            pixels = int(np.prod(labels.shape[1:]))
            # RemoveSmallObjects works per label value when independent_channels is False
            out = RemoveSmallObjects(min_size=max(1, round(self.min_size * pixels)), independent_channels=False)(out)
        if self.keep is not None:
            out = self.keep(out)
        if self.fill is not None:
            out = self.fill(out)
        return out


class Argmaxd(MapTransform):
    """Class indices (1 x spatial, the input's dtype and meta) from C x spatial scores: what MONAI's
    ``AsDiscreted(argmax=True)`` returns, ties included (the first class).

    Why not ``AsDiscreted``: it calls ``torch.argmax`` over the channel dimension, which this CPU build
    of torch runs far slower than ``torch.max(dim=0).indices``, the same indices (measured, one thread:
    2 x 512 x 512 scores 85 ms against 2.8 ms; a 2 x 512 x 512 x 100 volume 12.8 s against well under
    a second). A correction in MONAI Label must answer in a fraction of a second.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = d[key]
            plain = scores.as_tensor() if isinstance(scores, MetaTensor) else torch.as_tensor(scores)
            indices = plain.max(dim=0, keepdim=True).indices.to(plain.dtype)
            if isinstance(scores, MetaTensor):
                indices = MetaTensor(indices, meta=scores.meta, applied_operations=scores.applied_operations)
            d[key] = indices
        return d

"""Dictionary transforms that MONAI does not have, used between loading and resizing.

The rest of the data path is plain MONAI (``LoadImaged``, ``EnsureChannelFirstd``, ``Resized``
with ``size_mode="longest"``, ``SpatialPadd(method="end")``, ``Invertd``); see ``configs/train.json``.
Neither transform here changes the spatial grid, so the invertible spatial chain is untouched.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.networks.backbones import SAM_PIXEL_MEAN, SAM_PIXEL_STD, backbone_spec


class EnsureThreeChannelsd(MapTransform):
    """Make a channel-first image RGB-shaped: grey is repeated, an alpha channel is dropped.

    SAM encoders take 3 channels; radiographs are grey and some PNGs carry alpha.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            channels = img.shape[0]
            if channels in (1, 2):  # grey, grey + alpha
                d[key] = img[:1].repeat(3, *([1] * (img.ndim - 1)))
            elif channels == 4:  # RGBA
                d[key] = img[:3]
            elif channels != 3:
                raise ValueError(f"Expected an image with 1 to 4 channels, got shape {tuple(img.shape)}.")
        return d


class SamIntensityd(MapTransform):
    """The intensity normalisation a backbone was trained with.

    - ``minmax`` (LiteMedSAM): per-image min-max to [0, 1], as MedSAM's own preprocessing.
    - ``sam`` (SAM ViT): ``(x - mean) / std`` with SAM's ImageNet statistics on a 0..255 scale;
      images whose range is not 8-bit (16-bit PNG, CT) are first min-max scaled to 0..255.

    Args:
        keys: image keys.
        backbone: registry name of the backbone (``litemedsam``, ``vit_b``, ...).
    """

    def __init__(self, keys: KeysCollection, backbone: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = backbone_spec(backbone).normalization

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key].float()
            lo, hi = img.min(), img.max()
            if self.mode == "minmax":
                d[key] = (img - lo) / torch.clamp(hi - lo, min=1e-8)
                continue
            if lo < 0 or hi > 255:
                img = (img - lo) / torch.clamp(hi - lo, min=1e-8) * 255.0
            shape = (-1,) + (1,) * (img.ndim - 1)
            mean = torch.tensor(SAM_PIXEL_MEAN[: img.shape[0]]).reshape(shape)
            std = torch.tensor(SAM_PIXEL_STD[: img.shape[0]]).reshape(shape)
            d[key] = (img - mean) / std
        return d

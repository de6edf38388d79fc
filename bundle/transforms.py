"""Dictionary transforms that MONAI does not have, used between loading and resizing.

The rest of the data path is plain MONAI (``LoadImaged``, ``EnsureChannelFirstd``, ``Resized``
with ``size_mode="longest"``, ``SpatialPadd(method="end")``, ``Invertd``); see ``configs/train.json``.
Neither transform here changes the spatial grid, so the invertible spatial chain is untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

from bundle.errors import BundleInputError
from bundle.networks.backbones import SAM_PIXEL_MEAN, SAM_PIXEL_STD, backbone_spec

logger = logging.getLogger(__name__)
NONFINITE_POLICIES = ("error", "zero", "min")


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
            d[key] = sam_intensity(d[key], self.mode)
        return d


def sam_intensity(image: torch.Tensor, mode: str) -> torch.Tensor:
    """The normalisation of :class:`SamIntensityd` on one C x spatial image (``minmax`` or ``sam``)."""
    img = image.float()
    lo, hi = img.min(), img.max()
    if mode == "minmax":
        return (img - lo) / torch.clamp(hi - lo, min=1e-8)
    if lo < 0 or hi > 255:
        img = (img - lo) / torch.clamp(hi - lo, min=1e-8) * 255.0
    shape = (-1,) + (1,) * (img.ndim - 1)
    # on the image's device: the slice-wise volume inferer normalises slices already on the GPU
    mean = torch.tensor(SAM_PIXEL_MEAN[: img.shape[0]], device=img.device).reshape(shape)
    std = torch.tensor(SAM_PIXEL_STD[: img.shape[0]], device=img.device).reshape(shape)
    return (img - mean) / std


def _source(img: torch.Tensor) -> str:
    meta = img.meta if isinstance(img, MetaTensor) else {}
    return str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, "<image>"))


class FiniteIntensityd(MapTransform):
    """Report and replace NaN and inf values; report images whose values are all equal.

    One NaN makes every intensity normalisation (min-max, percentiles) NaN, and the whole prediction
    with it, silently. So they are counted, reported with the file name, and replaced by ``policy``:
    ``min`` the image's finite minimum (background in CT, MR and photographs), ``zero``, or ``error``
    (a :class:`BundleInputError`, which inference turns into a skipped input). Integer images cannot
    hold them and pass untouched. A constant image (e.g. all zero) is reported too: it has no
    structure to segment (``SliceWiseInferer`` predicts its slices empty).

    Args:
        keys: image keys.
        policy: ``error`` | ``zero`` | ``min`` (the ``nonfinite`` option of the configs).
    """

    def __init__(self, keys: KeysCollection, policy: str = "min", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if policy not in NONFINITE_POLICIES:
            raise BundleInputError(f"--nonfinite {policy}: not a policy; use one of {', '.join(NONFINITE_POLICIES)}")
        self.policy = policy

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            # reductions only: a reshaped or compared copy of a large image would cost its size again
            values = img.as_tensor() if isinstance(img, MetaTensor) else img
            if torch.is_floating_point(values) and not bool(torch.isfinite(values).all()):
                finite = torch.isfinite(values)
                d[key] = img = self._replace(img, finite, int(finite.numel() - finite.sum()))
                values = img.as_tensor() if isinstance(img, MetaTensor) else img
            if values.numel() and bool(values.amin() == values.amax()):
                logger.warning(f"{_source(img)}: every voxel is {float(values.amin()):g} (a constant image); "
                               "its mask will be empty")  # fmt: skip
        return d

    def _replace(self, img: torch.Tensor, finite: torch.Tensor, bad: int) -> torch.Tensor:
        source = _source(img)
        if self.policy == "error":
            raise BundleInputError(f"{source}: {bad} NaN or infinite voxels; fix the file or pass --nonfinite min")
        value = 0.0
        if self.policy == "min" and bool(finite.any()):
            value = float(img[finite].min())
        logger.warning(f"{source}: {bad} NaN or infinite voxels replaced by {value:g} (--nonfinite {self.policy})")
        out = img.clone()  # keeps the meta (the file name, the affine)
        out[~finite] = value
        return out

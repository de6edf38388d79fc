"""Training augmentation that respects anatomy, drawn from a finite, seeded bank of views per image.

Presets (config key ``augmentation``), all MONAI transforms on the resized, unpadded image and label
(arrays C x Y x X, rows first, see :mod:`bundle.preprocessing`):

- ``none``: no augmentation;
- ``flips``: left-right and up-down flips (the bundle's behaviour before anatomy-aware presets);
- ``radiograph``: chest X-ray, dental panoramics: no up-down flip (an upside-down chest never
  occurs), left-right flips, small rotation/scale/shift and gamma contrast;
- ``radiograph_lateral``: the same without left-right flips, for tasks whose classes are lateral
  (left lung vs right lung: a flip would swap the labels' meaning);
- ``endoscopy``: flips on both axes, 90-degree rotations (a colonoscope has no "up"), colour
  jitter (per-channel intensity scaling) and contrast;
- ``endoscopy_zoom``: ``endoscopy`` plus an affine with free in-plane rotation and a wide zoom
  (0.7-1.3), for polyps seen from near and far. On Kvasir-SEG 4-shot development images it gained
  nothing over ``endoscopy`` (docs/results/fewshot/dev/kvasir_4shot_pool/commands.md), so no preset uses it;
- ``endoscopy_zoomlarge``: ``endoscopy`` plus a zoom-out (0.35-0.8, p 0.8) of the images whose object covers more
  than 15 % of the frame (:class:`RandZoomOutLarged`), so a support set of large polyps also shows them small.
  The Kvasir-SEG preset: on development images +0.8 Dice over ``endoscopy`` on the usual draws, +3.6 Dice and
  -24 px HD95 on a support set of four large polyps.

The encoder is frozen, so an image's embedding is a pure function of the pixels the encoder sees.
Random augmentation at every step would need an encoder pass per step. Instead each training image
gets a **bank** of ``bank_size`` views (view 0 is the image itself, view j > 0 the augmentation
drawn with a seed derived from the run seed, the image id and j). Each view is built once (cached
by MONAI's ``CacheDataset``, which caches every transform that is not ``Randomizable``) and encoded
once (the embedding cache keys it by content), so after the first pass training is encoder-free.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandZoomd,
)

IMAGE, LABEL = "image", "label"
VIEW = "view"  # datalist key: index of the view in the image's bank
ROWS, COLS = 0, 1  # spatial axes of a rows-first 2D image: up-down, left-right

PRESETS = ("none", "flips", "radiograph", "radiograph_lateral", "endoscopy", "endoscopy_zoom", "endoscopy_zoomlarge")
ENDOSCOPY = ("endoscopy", "endoscopy_zoom", "endoscopy_zoomlarge")


def _affine(keys: Sequence[str], degrees: float = 10.0, scale: float = 0.1) -> RandAffined:
    # default small: a few degrees, +-10 % scale, +-5 % shift of a 256 input; zeros outside (as the padding)
    return RandAffined(
        keys=keys,
        prob=0.8,
        rotate_range=np.deg2rad(degrees),
        scale_range=scale,
        translate_range=12,
        mode=["bilinear", "nearest"],
        padding_mode="zeros",
    )


class RandZoomOutLarged(RandZoomd):
    """MONAI's ``RandZoomd`` (zoom-out, image size kept, zero padding), applied only to items whose label
    foreground covers more than ``min_fraction`` of the frame; smaller objects pass through MONAI's own
    "not applied" path (converted to tensors, transform trace pushed, so the chain stays invertible).

    Our own subclass because no MONAI transform conditions on the object's size: shrinking an already
    small polyp further would teach the decoder objects smaller than any it should find. The share is read
    from the label as it arrives: in a lazy chain, only after transforms that keep the area (flips, quarter turns).

    Args:
        keys: image and label keys; ``LABEL`` is resampled nearest, the others by area.
        min_fraction: the foreground share of the frame above which an item is zoomed.
        prob, min_zoom, max_zoom: as in ``RandZoomd``, with 0 < min_zoom <= max_zoom <= 1 (a zoom-out only).
    """

    def __init__(
        self,
        keys: Sequence[str],
        min_fraction: float = 0.15,
        prob: float = 0.8,
        min_zoom: float = 0.35,
        max_zoom: float = 0.8,
    ) -> None:
        if not 0 < min_zoom <= max_zoom <= 1:
            raise ValueError(f"a zoom-out needs 0 < min_zoom <= max_zoom <= 1, got {min_zoom} and {max_zoom}")
        super().__init__(
            keys=keys,
            prob=prob,
            min_zoom=min_zoom,
            max_zoom=max_zoom,
            mode=["nearest" if key == LABEL else "area" for key in keys],
            padding_mode="constant",
            keep_size=True,
        )
        self.min_fraction = float(min_fraction)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        large = float((torch.as_tensor(data[LABEL]) > 0).float().mean()) > self.min_fraction
        prob = self.prob
        self.prob = prob if large else 0.0  # below the share: RandZoomd's "not applied" path
        try:
            return super().__call__(data, lazy=lazy)
        finally:
            self.prob = prob


def augmentation_transforms(name: str, flip_prob: float = 0.5) -> list[MapTransform]:
    """The random transforms of preset ``name`` for ``image`` and ``label``.

    Args:
        name: one of :data:`PRESETS`.
        flip_prob: probability of each flip.

    Raises:
        ValueError: unknown preset (the message lists the known ones).
    """
    keys = [IMAGE, LABEL]
    if name == "none":
        return []
    if name == "flips":
        return [
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=ROWS),
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=COLS),
        ]
    contrast = RandAdjustContrastd(keys=IMAGE, prob=0.5, gamma=(0.75, 1.33))
    if name in ("radiograph", "radiograph_lateral"):
        flips = [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=COLS)] if name == "radiograph" else []
        return flips + [_affine(keys), contrast]
    if name in ENDOSCOPY:
        # with the 90-degree rotations, +-45 degrees reaches every angle
        zoom = [_affine(keys, degrees=45.0, scale=0.3)] if name == "endoscopy_zoom" else []
        zoom_out = [RandZoomOutLarged(keys)] if name == "endoscopy_zoomlarge" else []
        return [
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=ROWS),
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=COLS),
            RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(ROWS, COLS)),
            *zoom,
            RandScaleIntensityd(keys=IMAGE, prob=0.8, factors=0.15, channel_wise=True),
            contrast,
            *zoom_out,
        ]
    raise ValueError(f"unknown augmentation {name!r}: choose one of {', '.join(PRESETS)}")


def bank_datalist(items: Sequence[dict], bank_size: int) -> list[dict]:
    """Each item repeated once per view of its bank (``view`` = 0 .. bank_size - 1).

    ``bank_size`` 0 means no bank: the items as they are, augmented afresh at every step.
    """
    if bank_size < 0:
        raise ValueError(f"augmentation_bank must be >= 0, got {bank_size}")
    if bank_size == 0:
        return [dict(item) for item in items]
    return [{**item, VIEW: view} for item in items for view in range(bank_size)]


class AugmentationBankd(MapTransform):
    """Apply view ``data["view"]`` of an item's bank: view 0 unchanged, view j > 0 the random
    ``transforms`` drawn with the seed ``(seed, crc32(id), j)``, so a view is the same in every pass,
    every process and every resumed run.

    Deliberately not ``Randomizable``: MONAI's ``CacheDataset`` then caches the views.

    Args:
        transforms: the random transforms (e.g. :func:`augmentation_transforms`).
        seed: the run's seed.
    """

    def __init__(self, transforms: Sequence[MapTransform], seed: int = 0) -> None:
        super().__init__(keys=[IMAGE, LABEL], allow_missing_keys=True)
        self.augment = Compose(list(transforms))
        self.seed = int(seed)

    def view_seed(self, item_id: Any, view: int) -> int:
        """The seed of view ``view`` of item ``item_id``."""
        entropy = [self.seed, zlib.crc32(str(item_id).encode()), int(view)]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        view = int(d.get(VIEW, 0))
        if view == 0 or not self.augment.transforms:
            return d
        self.augment.set_random_state(seed=self.view_seed(d.get("id", d.get(IMAGE)), view))
        return dict(self.augment(d))


def training_augmentation(name: str, bank_size: int, seed: int = 0, flip_prob: float = 0.5) -> list[MapTransform]:
    """The augmentation step of the training chain: a bank of ``bank_size`` views per image, or
    (``bank_size`` 0) the random transforms themselves, drawn afresh at every step (each new view
    then costs an encoder pass: only sensible for the four views of ``flips``)."""
    transforms = augmentation_transforms(name, flip_prob=flip_prob)
    if bank_size == 0:
        return transforms
    return [AugmentationBankd(transforms, seed=seed)]

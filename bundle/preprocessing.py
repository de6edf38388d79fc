"""The one definition of the 2D data path from file to model input, shared by every config.

Training, validation, evaluation, inference and the exported task bundles all build their transforms
here, so the geometry and intensities the network sees cannot drift apart between them:

1. ``load``: read the image (and its mask, onto the image grid), replace NaN/inf values (reported),
   shrink an image larger than ``LARGE_SIDE`` to the model input at once (bounded memory, see
   :class:`ShrinkLarged`), turn MONAI's (x, y) array into row-major (y, x), make three channels,
   normalise intensities as the backbone was trained;
2. ``fit``: resize the longest side to the model input (anti-aliased for images, nearest for labels);
3. (training only) augmentation, see :mod:`bundle.augmentation`;
4. ``pad``: pad bottom/right to the square model input.

Every spatial step is a MONAI invertible transform, so ``Invertd`` maps predictions back to the
original file's grid and orientation.

Why the transpose: MONAI's 2D readers (``PILReader``, ``ITKReader``, ``PydicomReader``) return
arrays indexed (x, y), i.e. the picture transposed. SAM-family encoders were trained on upright
images (rows first), so the image is transposed to (y, x) before it reaches the network and the
prediction transposed back by ``Invertd``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    InvertibleTransform,
    MapTransform,
    Resize,
    Resized,
    SpatialPadd,
    Transposed,
)
from monai.utils import TraceKeys

from bundle.data.masks import LoadMaskd
from bundle.data.readers import LoadAnyImaged
from bundle.networks.backbones import default_input_size
from bundle.transforms import EnsureThreeChannelsd, FiniteIntensityd, SamIntensityd

IMAGE, LABEL = "image", "label"
TO_ROWS_FIRST = (0, 2, 1)  # C x X x Y -> C x Y x X (channel-first 2D arrays from MONAI's readers)
LARGE_SIDE = 4096  # images with a longer side are shrunk as soon as they are read (ShrinkLarged)


class ShrinkLarged(MapTransform, InvertibleTransform):
    """Resize an image whose longest side exceeds ``max_side`` to longest side ``size`` right after reading.

    The usual path makes three float channels and normalises at full size before resizing: an 8000 x 8000
    PNG then needs about 11 GB. Shrinking first (while the image has its own channels) keeps memory near
    that of the decoded file. MONAI's ``Resized`` does the work, with ``area`` (a box filter, anti-aliased
    by construction and without the full-size Gaussian smoothing of ``anti_aliasing=True``) for images,
    ``nearest`` for labels. Smaller images pass untouched and unrecorded, so their numbers stay exactly
    those of the usual path. ``Invertd`` maps a prediction back to the original size, bilinearly.

    Args:
        keys: the image key first, then labels on its grid.
        size: the longest side after shrinking (the model input).
        max_side: images with a longer side are shrunk.
    """

    def __init__(self, keys: KeysCollection, size: int, max_side: int = LARGE_SIDE) -> None:
        super().__init__(keys)
        self.max_side = int(max_side)
        modes = ["area"] + ["nearest"] * (len(self.keys) - 1)
        self.resized = Resized(self.keys, spatial_size=int(size), size_mode="longest", mode=modes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if max(d[self.keys[0]].shape[1:]) <= self.max_side:
            return d
        return self.resized(d)

    def _is_ours(self, op: Mapping) -> bool:
        if op.get(TraceKeys.ID) == id(self.resized.resizer):
            return True
        # workers started by "spawn" hold copies of the transforms (other ids): recognise the record
        return op.get(TraceKeys.CLASS_NAME) == "Resize" and max(op.get(TraceKeys.ORIG_SIZE, (0,))) > self.max_side

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            ops = getattr(d[key], "applied_operations", None)
            if not ops or not self._is_ours(ops[-1]):
                continue  # not shrunk
            op = dict(d[key].applied_operations.pop())
            if op[TraceKeys.EXTRA_INFO]["mode"] == "area":  # area upsampling is nearest: map back smoothly
                op[TraceKeys.EXTRA_INFO] = {**op[TraceKeys.EXTRA_INFO], "mode": "bilinear"}
            d[key] = self.resized.resizer.inverse_transform(d[key], op)
        return d


def load_transforms(
    backbone: str,
    with_label: bool = False,
    label_follows_image: bool = True,
    upright: bool = True,
    mask_threshold: float | None = 127,
    mask_resample: bool = False,
    mask_value_map: Mapping[int | str, int] | None = None,
    nonfinite: str = "min",
    input_size: int | None = None,
) -> list[MapTransform]:
    """Read, make upright, three channels, backbone intensities (the label on the image grid).

    Args:
        backbone: backbone registry name (picks the intensity normalisation).
        with_label: also load ``label`` (mask file or files) onto the image grid.
        label_follows_image: the label is transposed (and later resized) with the image, as in
            training; ``False`` keeps it on the file's grid, where inverted predictions are scored.
        upright: transpose MONAI's (x, y) arrays to rows first; ``False`` only to reproduce results of
            bundle versions before 0.2, which showed the encoder transposed images.
        mask_threshold: binarisation threshold of the masks (``None`` with ``mask_value_map``).
        mask_resample: resize masks of another size but the same aspect ratio onto the image grid.
        mask_value_map: mask value -> class, for label-map masks.
        nonfinite: what replaces NaN/inf values: ``min`` (the finite minimum), ``zero``, or ``error``.
        input_size: the model input, to which images larger than ``LARGE_SIDE`` are shrunk at once
            (default: the backbone's native size).
    """
    keys = [IMAGE, LABEL] if with_label and label_follows_image else [IMAGE]
    transforms: list[MapTransform] = [
        LoadAnyImaged(keys=IMAGE),
        # on the array as read (contiguous): its checks then need no full-size copy
        FiniteIntensityd(keys=IMAGE, policy=nonfinite),
        EnsureChannelFirstd(keys=IMAGE),
    ]
    if with_label:
        transforms.append(
            LoadMaskd(
                keys=LABEL,
                ref_key=IMAGE,
                threshold=None if mask_value_map else mask_threshold,
                value_map=mask_value_map,
                resample=mask_resample,
            )
        )
    transforms.append(ShrinkLarged(keys=keys, size=input_size or default_input_size(backbone)))
    if upright:
        transforms.append(Transposed(keys=keys, indices=TO_ROWS_FIRST))
    transforms += [EnsureThreeChannelsd(keys=IMAGE), SamIntensityd(keys=IMAGE, backbone=backbone)]
    return transforms


# How an image is resized onto the model input, wherever that happens (2D transforms here, each
# slice of a volume in ``bundle.inferers.SliceWiseInferer``): MONAI's Gaussian anti-aliasing, bilinear.
IMAGE_RESIZE = {"size_mode": "longest", "mode": "bilinear", "anti_aliasing": True}


def image_resize(input_size: int) -> Resize:
    """The array transform that resizes a C x H x W image's longest side to ``input_size``."""
    return Resize(spatial_size=input_size, **IMAGE_RESIZE)


def fit_transforms(input_size: int, with_label: bool = False) -> list[MapTransform]:
    """Resize the longest side to ``input_size``: bilinear, anti-aliased image; nearest label."""
    if with_label:
        return [
            Resized(
                keys=[IMAGE, LABEL],
                spatial_size=input_size,
                size_mode=IMAGE_RESIZE["size_mode"],
                mode=[IMAGE_RESIZE["mode"], "nearest"],
                anti_aliasing=[IMAGE_RESIZE["anti_aliasing"], False],
            )
        ]
    return [Resized(keys=IMAGE, spatial_size=input_size, **IMAGE_RESIZE)]


def pad_transforms(input_size: int, with_label: bool = False) -> list[MapTransform]:
    """Pad bottom/right to ``input_size`` x ``input_size`` (as SAM and MedSAM do) and make tensors."""
    keys: Sequence[str] = [IMAGE, LABEL] if with_label else [IMAGE]
    return [SpatialPadd(keys=keys, spatial_size=(input_size, input_size), method="end"), EnsureTyped(keys=keys)]


def model_input_transforms(
    backbone: str, input_size: int, with_label: bool = False, resize_label: bool = False, **options
) -> list[MapTransform]:
    """The whole evaluation/inference path: load, fit, pad (the label, if any, kept at its own grid
    unless ``resize_label``, so metrics are measured at the original resolution); ``options`` go to
    :func:`load_transforms`."""
    options.setdefault("input_size", input_size)
    transforms = load_transforms(backbone, with_label=with_label, label_follows_image=resize_label, **options)
    transforms += fit_transforms(input_size, with_label=with_label and resize_label)
    transforms += pad_transforms(input_size, with_label=with_label and resize_label)
    if with_label and not resize_label:
        transforms.append(EnsureTyped(keys=LABEL))
    return transforms

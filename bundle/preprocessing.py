"""The one definition of the 2D data path from file to model input, shared by every config.

Training, validation, evaluation, inference and the exported task bundles all build their transforms
here, so the geometry and intensities the network sees cannot drift apart between them:

1. ``load``: read the image (and its mask, onto the image grid), turn MONAI's (x, y) array into
   row-major (y, x), make three channels, normalise intensities as the backbone was trained;
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

from collections.abc import Mapping, Sequence

from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Resized,
    SpatialPadd,
    Transposed,
)

from bundle.data.masks import LoadMaskd
from bundle.data.readers import LoadAnyImaged
from bundle.transforms import EnsureThreeChannelsd, SamIntensityd

IMAGE, LABEL = "image", "label"
TO_ROWS_FIRST = (0, 2, 1)  # C x X x Y -> C x Y x X (channel-first 2D arrays from MONAI's readers)


def load_transforms(
    backbone: str,
    with_label: bool = False,
    label_follows_image: bool = True,
    upright: bool = True,
    mask_threshold: float | None = 127,
    mask_resample: bool = False,
    mask_value_map: Mapping[int | str, int] | None = None,
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
    """
    keys = [IMAGE, LABEL] if with_label and label_follows_image else [IMAGE]
    transforms: list[MapTransform] = [LoadAnyImaged(keys=IMAGE), EnsureChannelFirstd(keys=IMAGE)]
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
    if upright:
        transforms.append(Transposed(keys=keys, indices=TO_ROWS_FIRST))
    transforms += [
        EnsureThreeChannelsd(keys=IMAGE),
        SamIntensityd(keys=IMAGE, backbone=backbone),
    ]
    return transforms


def fit_transforms(input_size: int, with_label: bool = False) -> list[MapTransform]:
    """Resize the longest side to ``input_size``: bilinear, anti-aliased image; nearest label."""
    if with_label:
        return [
            Resized(
                keys=[IMAGE, LABEL],
                spatial_size=input_size,
                size_mode="longest",
                mode=["bilinear", "nearest"],
                anti_aliasing=[True, False],
            )
        ]
    return [Resized(keys=IMAGE, spatial_size=input_size, size_mode="longest", mode="bilinear", anti_aliasing=True)]


def pad_transforms(input_size: int, with_label: bool = False) -> list[MapTransform]:
    """Pad bottom/right to ``input_size`` x ``input_size`` (as SAM and MedSAM do) and make tensors."""
    keys: Sequence[str] = [IMAGE, LABEL] if with_label else [IMAGE]
    return [
        SpatialPadd(keys=keys, spatial_size=(input_size, input_size), method="end"),
        EnsureTyped(keys=keys),
    ]


def model_input_transforms(
    backbone: str,
    input_size: int,
    with_label: bool = False,
    resize_label: bool = False,
    **options,
) -> list[MapTransform]:
    """The whole evaluation/inference path: load, fit, pad (the label, if any, kept at its own grid
    unless ``resize_label``, so metrics are measured at the original resolution); ``options`` go to
    :func:`load_transforms`."""
    transforms = load_transforms(backbone, with_label=with_label, label_follows_image=resize_label, **options)
    transforms += fit_transforms(input_size, with_label=with_label and resize_label)
    transforms += pad_transforms(input_size, with_label=with_label and resize_label)
    if with_label and not resize_label:
        transforms.append(EnsureTyped(keys=LABEL))
    return transforms

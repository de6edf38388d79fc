"""``LoadMaskd``: load the mask file(s) of one case onto its image grid as a class-index map."""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform

from bundle.data.readers import read_image
from bundle.errors import BundleInputError

# Lossy formats: their small values are compression noise, never labels, so they are always thresholded.
LOSSY_SUFFIXES = (".jpg", ".jpeg")
ASPECT_TOLERANCE = 0.01  # masks may be resampled only when their aspect ratio matches within 1 %


class LoadMaskd(MapTransform):
    """Load a case's mask file(s) as class indices on the grid of an already loaded image.

    Several files for one key (e.g. JSRT left lung + right lung) are merged into one label map by taking
    the largest class over files. Files are read with the same readers as images; a multi-channel mask
    (Kvasir-SEG's RGB JPEG masks) is reduced to grey by the maximum over channels, so a structure drawn in
    any single colour still counts.

    In threshold mode a lossless mask whose values all lie in 0..C (C = ``num_classes``, at least
    ``foreground_class``) is read as a label map rather than binarised: a 0/1 mask (what this bundle's
    inference writes) gives ``foreground_class`` where it is 1 (thresholding at 127 would make it
    empty), a 0..C mask gives its values as classes. Other masks, and JPEG masks always, are binarised
    at ``threshold``. Run it right after loading the image: the output copies the image's
    meta data (affine, file name) but not its applied operations, and adds ``mask_filenames`` (the mask
    files joined by ``"; "``, a string so batches collate).

    Args:
        keys: keys holding a mask path or a list of mask paths.
        ref_key: key of the loaded, channel-first image whose grid the mask must match.
        threshold: pixel > threshold becomes ``foreground_class`` (use 127 for JPEG masks, never 0:
            JPEG noise around 0 would become foreground).
        foreground_class: class given to pixels above ``threshold`` (and to the 1s of a 0/1 mask).
        num_classes: C, the number of foreground classes; ``None``: ``foreground_class``.
        value_map: mask value -> class index; other values become 0. String keys (from JSON) are accepted.
        resample: when the mask grid differs from the image grid, resize the mask with nearest neighbour
            (only if the aspect ratios agree within 1 %); when False, a differing grid is an error.
        allow_missing_keys: skip keys that are absent.

    Raises:
        ValueError: not exactly one of ``threshold``/``value_map``.
        BundleInputError: at call time, an unreadable mask or a grid mismatch (the message names the mask
            and image files).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        threshold: float | None = None,
        foreground_class: int = 1,
        value_map: Mapping[int | str, int] | None = None,
        resample: bool = False,
        allow_missing_keys: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if (threshold is None) == (value_map is None):
            raise ValueError("LoadMaskd: give exactly one of threshold (binary masks) or value_map (label maps)")
        self.ref_key = ref_key
        self.threshold = threshold
        self.foreground_class = int(foreground_class)
        self.value_map = None if value_map is None else {int(k): int(v) for k, v in value_map.items()}
        self.resample = resample
        self.num_classes = max(int(num_classes or 0), self.foreground_class)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_key]
        for key in self.key_iterator(d):
            d[key] = self._load(d[key], image)
        return d

    def _load(self, paths: str | os.PathLike | Sequence[str | os.PathLike], image: torch.Tensor) -> MetaTensor:
        files = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        if not files:
            raise BundleInputError(f"LoadMaskd: no mask file given for image {_image_name(image)}")
        grid = tuple(image.shape[1:])
        label: torch.Tensor | None = None
        for name in files:
            classes = self._to_classes(read_image(name), lossy=name.lower().endswith(LOSSY_SUFFIXES))
            if tuple(classes.shape[1:]) != grid:
                classes = self._fit_to_grid(classes, grid, name, image)
            label = classes if label is None else torch.maximum(label, classes)
        assert label is not None
        meta = copy.deepcopy(dict(image.meta)) if isinstance(image, MetaTensor) else {}
        meta["mask_filenames"] = "; ".join(files)
        meta["original_channel_dim"] = 0  # already channel-first: EnsureChannelFirstd must leave it alone
        out = MetaTensor(label, meta=meta)
        if isinstance(image, MetaTensor):
            out.affine = image.affine.clone()
        return out

    def _to_classes(self, mask: torch.Tensor, lossy: bool = False) -> torch.Tensor:
        """Reduce channels and map values to classes: (C, *spatial) -> (1, *spatial) int64."""
        plain = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
        grey = plain.amax(dim=0, keepdim=True)
        if self.threshold is not None:
            if not lossy and is_label_map(grey, self.num_classes):
                if int(grey.max()) <= 1:
                    return grey.long() * self.foreground_class
                return grey.long()
            return (grey > self.threshold).long() * self.foreground_class
        out = torch.zeros(grey.shape, dtype=torch.long)
        for value, cls in (self.value_map or {}).items():
            out[grey == value] = cls
        return out

    def _fit_to_grid(
        self, classes: torch.Tensor, grid: tuple[int, ...], name: str, image: torch.Tensor
    ) -> torch.Tensor:
        shape = tuple(classes.shape[1:])
        where = f"mask {name} has shape {shape}, image {_image_name(image)} has shape {grid}"
        if len(shape) != len(grid):
            raise BundleInputError(f"LoadMaskd: {where}: different numbers of spatial dimensions")
        if not self.resample:
            raise BundleInputError(
                f"LoadMaskd: {where}. Set resample=True if the masks are a resampled version of the image, "
                "as JSRT's SCR masks are."
            )
        ratios = np.asarray(shape, dtype=float) / np.asarray(grid, dtype=float)
        if ratios.max() / ratios.min() - 1.0 > ASPECT_TOLERANCE:
            raise BundleInputError(
                f"LoadMaskd: {where}: aspect ratios differ by more than {ASPECT_TOLERANCE:.0%}, "
                "so the mask is not a resampled copy of this image; check that the files belong together."
            )
        # "nearest-exact" samples pixel centres; plain "nearest" shifts the mask by up to half a pixel.
        resized = torch.nn.functional.interpolate(classes[None].float(), size=grid, mode="nearest-exact")
        return resized[0].round().long()


def is_label_map(values: torch.Tensor, num_classes: int) -> bool:
    """Whether every value is an integer class index in 0..``num_classes``."""
    if values.numel() == 0:
        return True
    if values.is_floating_point() and not torch.equal(values, values.round()):
        return False
    return bool(values.min() >= 0 and values.max() <= num_classes)


def check_training_labels(
    items: Sequence[Mapping[str, Any]],
    threshold: float | None = 127,
    value_map: Mapping[int | str, int] | None = None,
    num_classes: int | None = None,
    key: str = "label",
) -> None:
    """Stop a training whose labels are all empty: it would learn to predict background everywhere.

    The masks are read as :class:`LoadMaskd` reads them (same threshold / label-map rule).

    Args:
        items: the training data list items (D1 and D2).
        threshold, value_map, num_classes: as for :class:`LoadMaskd`.
        key: the items' mask key.

    Raises:
        BundleInputError: no mask has a foreground pixel (the message names the files and the threshold).
    """
    loader = LoadMaskd(key, threshold=threshold, value_map=value_map, num_classes=num_classes)
    files: list[str] = []
    for item in items:
        paths = item[key]
        for name in [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]:
            files.append(name)
            classes = loader._to_classes(read_image(name), lossy=name.lower().endswith(LOSSY_SUFFIXES))
            if bool((classes > 0).any()):
                return
    if not files:
        return
    shown = ", ".join(files[:4]) + (f" ... ({len(files)} in all)" if len(files) > 4 else "")
    rule = f"value_map {dict(value_map)}" if value_map else f"--mask_threshold {threshold}"
    raise BundleInputError(
        f"every training mask is empty ({shown}): no pixel becomes foreground with {rule}; "
        "check the mask files, --mask_threshold or the mask folder"
    )


def _image_name(image: Any) -> str:
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj")
    return str(Path(name)) if name else "<image without file name>"

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

ASPECT_TOLERANCE = 0.01  # masks may be resampled only when their aspect ratio matches within 1 %


class LoadMaskd(MapTransform):
    """Load a case's mask file(s) as class indices on the grid of an already loaded image.

    Several files for one key (e.g. JSRT left lung + right lung) are merged into one label map by taking
    the largest class over files. Files are read with the same readers as images; a multi-channel mask
    (Kvasir-SEG's RGB JPEG masks) is reduced to grey by the maximum over channels, so a structure drawn in
    any single colour still counts. Run it right after loading the image: the output copies the image's
    meta data (affine, file name) but not its applied operations, and adds ``mask_filenames`` (the mask
    files joined by ``"; "``, a string so batches collate).

    Args:
        keys: keys holding a mask path or a list of mask paths.
        ref_key: key of the loaded, channel-first image whose grid the mask must match.
        threshold: pixel > threshold becomes ``foreground_class`` (use 127 for JPEG masks, never 0:
            JPEG noise around 0 would become foreground).
        foreground_class: class given to pixels above ``threshold``.
        value_map: mask value -> class index; other values become 0. String keys (from JSON) are accepted.
        resample: when the mask grid differs from the image grid, resize the mask with nearest neighbour
            (only if the aspect ratios agree within 1 %); when False, a differing grid is an error.
        allow_missing_keys: skip keys that are absent.

    Raises:
        ValueError: not exactly one of ``threshold``/``value_map``; at call time, an unreadable mask or a
            grid mismatch (the message names the mask and image files).
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
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if (threshold is None) == (value_map is None):
            raise ValueError(
                "LoadMaskd: give exactly one of threshold (binary masks) or value_map (label maps)"
            )
        self.ref_key = ref_key
        self.threshold = threshold
        self.foreground_class = int(foreground_class)
        self.value_map = None if value_map is None else {int(k): int(v) for k, v in value_map.items()}
        self.resample = resample

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_key]
        for key in self.key_iterator(d):
            d[key] = self._load(d[key], image)
        return d

    def _load(
        self, paths: str | os.PathLike | Sequence[str | os.PathLike], image: torch.Tensor
    ) -> MetaTensor:
        files = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        if not files:
            raise ValueError(f"LoadMaskd: no mask file given for image {_image_name(image)}")
        grid = tuple(image.shape[1:])
        label: torch.Tensor | None = None
        for name in files:
            classes = self._to_classes(read_image(name))
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

    def _to_classes(self, mask: torch.Tensor) -> torch.Tensor:
        """Reduce channels and map values to classes: (C, *spatial) -> (1, *spatial) int64."""
        plain = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
        grey = plain.amax(dim=0, keepdim=True)
        if self.threshold is not None:
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
            raise ValueError(f"LoadMaskd: {where}: different numbers of spatial dimensions")
        if not self.resample:
            raise ValueError(
                f"LoadMaskd: {where}. Set resample=True if the masks are a resampled version of the image, "
                "as JSRT's SCR masks are."
            )
        ratios = np.asarray(shape, dtype=float) / np.asarray(grid, dtype=float)
        if ratios.max() / ratios.min() - 1.0 > ASPECT_TOLERANCE:
            raise ValueError(
                f"LoadMaskd: {where}: aspect ratios differ by more than {ASPECT_TOLERANCE:.0%}, "
                "so the mask is not a resampled copy of this image; check that the files belong together."
            )
        # "nearest-exact" samples pixel centres; plain "nearest" shifts the mask by up to half a pixel.
        resized = torch.nn.functional.interpolate(classes[None].float(), size=grid, mode="nearest-exact")
        return resized[0].round().long()


def _image_name(image: Any) -> str:
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj")
    return str(Path(name)) if name else "<image without file name>"

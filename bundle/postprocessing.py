"""Clean predicted masks the way each task's anatomy allows, with MONAI's own transforms.

A prompt-free decoder trained on a few images leaves enclosed holes and scattered false-positive
blobs; both cost Dice and, far more, HD95. Per preset (config keys ``postprocess_*``):

- ``fill_holes``: MONAI ``FillHoles`` (a lung or a polyp has no hole);
- ``keep_components``: MONAI ``KeepLargestConnectedComponent`` with that many components per class
  (2 for "lung": left and right);
- ``min_size``: MONAI ``RemoveSmallObjects``, the size a fraction of the image's pixels (so the
  same setting works at every resolution): polyps, teeth;
- ``min_relative_size``: drop components smaller than a fraction of the same class's largest one
  (polyps: the stray token-sized blobs a few-shot decoder leaves beside a found polyp, while a small
  polyp that is the only finding stays).

Applied to the class-index map (1 x spatial) at the original resolution, after ``Invertd`` and the
argmax, in evaluation, inference, volumes and the MONAI Label path alike.

One step needs the class probabilities, so it runs before the argmax (evaluation, inference and the
MONAI Label auto-segmentation of images; not volumes):

- ``confidence_margin``: :class:`DropUnsureComponentsd` gives up a component the network is markedly
  less sure of than the class's surest one (polyps: confident false positives at the edge of the
  endoscope's view are mottled, a found polyp is not).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform, RemoveSmallObjects
from scipy import ndimage


def _plain(x: torch.Tensor) -> torch.Tensor:
    """The tensor without MONAI's metadata (a MetaTensor's data, or ``x`` as a tensor)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` with ``x``'s metadata and applied operations when ``x`` is a MetaTensor, else ``out``."""
    return MetaTensor(out, meta=x.meta, applied_operations=x.applied_operations) if isinstance(x, MetaTensor) else out


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` at full connectivity (as ``KeepLargestConnectedComponent``'s default)."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))


def _image_fraction(min_size: float) -> float:
    """``postprocess_min_size`` checked: a fraction of the image's pixels."""
    if not 0.0 <= float(min_size) < 1.0:
        raise ValueError(f"postprocess_min_size is a fraction of the image (0 <= x < 1), got {min_size}")
    return float(min_size)


class CleanMaskd(MapTransform):
    """Fill holes, keep the largest components and drop small objects of a class-index map.

    Args:
        keys: keys of 1 x spatial class-index maps.
        num_classes: foreground classes C (labels 1..C are cleaned).
        fill_holes: fill enclosed holes of each class.
        keep_components: keep this many largest components per class (``None``: all).
        min_size: drop components smaller than this fraction of the image's pixels (0: none).
        min_relative_size: drop components smaller than this fraction of the class's largest component
            (0: none).
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        fill_holes: bool = False,
        keep_components: int | None = None,
        min_size: float = 0.0,
        min_relative_size: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.labels = labels = list(range(1, int(num_classes) + 1))
        self.fill = FillHoles(applied_labels=labels) if fill_holes else None
        self.keep = (
            KeepLargestConnectedComponent(applied_labels=labels, is_onehot=False, num_components=int(keep_components))
            if keep_components
            else None
        )
        self.min_size = _image_fraction(min_size)
        self.min_relative_size = float(min_relative_size)
        if not 0.0 <= self.min_relative_size <= 1.0:
            raise ValueError(
                f"postprocess_min_relative_size is a fraction of the largest component (0 <= x <= 1), "
                f"got {min_relative_size}"
            )

    @property
    def active(self) -> bool:
        """Whether this cleans anything."""
        return bool(self.fill or self.keep or self.min_size or self.min_relative_size)

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
        if self.min_relative_size:
            out = self.drop_relatively_small(out)
        if self.keep is not None:
            out = self.keep(out)
        if self.fill is not None:
            out = self.fill(out)
        return out

    def drop_relatively_small(self, labels: torch.Tensor) -> torch.Tensor:
        """Set to background the components of each class smaller than ``min_relative_size`` of that
        class's largest component.

        Written here because MONAI has no such transform: ``RemoveSmallObjects`` takes an absolute size
        and ``KeepLargestConnectedComponent`` a count. Components are labelled with scipy's
        ``ndimage.label`` at full connectivity, as ``KeepLargestConnectedComponent`` does by default.
        """
        plain = _plain(labels)
        values = plain[0].cpu().numpy()
        keep = np.ones(values.shape, bool)
        for c in self.labels:
            parts, count = _components(values == c)
            if count < 2:
                continue
            sizes = np.bincount(parts.ravel())[1:]
            small = np.flatnonzero(sizes < self.min_relative_size * sizes.max()) + 1
            keep &= ~np.isin(parts, small)
        if keep.all():
            return labels
        cleaned = plain.clone()
        cleaned[0][torch.from_numpy(~keep).to(cleaned.device)] = 0
        return _like(cleaned, labels)


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
            plain = _plain(d[key])
            d[key] = _like(plain.max(dim=0, keepdim=True).indices.to(plain.dtype), d[key])
        return d


class DropUnsureComponentsd(MapTransform):
    """Give up the components of a class that the network is markedly less sure of than its surest one.

    On C x spatial class probabilities (after the softmax, before the argmax): the connected components
    of each foreground class's argmax region are scored by their mean probability of that class. A
    component whose mean is more than ``margin`` below the best one's has that class's probability set to
    0 there, so the argmax gives it to the next most likely class (background for a one-class task).
    Only components of at least ``min_size`` of the image's pixels can be the best one: smaller ones are
    removed by the clean-up anyway, and a tiny sure blob must not veto the real finding.

    Written here because MONAI's component transforms (``KeepLargestConnectedComponent``,
    ``RemoveSmallObjects``) rank components by size, never by the network's confidence. Components are
    labelled with scipy's ``ndimage.label`` at full connectivity, as in :class:`CleanMaskd`.

    Args:
        keys: keys of C x spatial class probabilities, background first.
        margin: how far (in probability) below the surest component's mean a component may fall;
            0 switches the step off.
        min_size: the smallest component, as a fraction of the image's pixels, that can be the surest.
    """

    def __init__(
        self, keys: KeysCollection, margin: float = 0.0, min_size: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.margin, self.min_size = float(margin), _image_fraction(min_size)
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"postprocess_confidence_margin is a probability (0 <= x <= 1), got {margin}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.margin:
            return d
        for key in self.key_iterator(d):
            d[key] = self.drop(d[key])
        return d

    def drop(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` with each class's unsure components given to the next most likely class."""
        plain = _plain(probs)
        values = plain.detach().float().cpu().numpy()
        winners = values.argmax(0)  # ties to the first class, as Argmaxd
        floor = max(1, round(self.min_size * winners.size))
        out = None
        for c in range(1, values.shape[0]):
            parts, count = _components(winners == c)
            if count < 2:
                continue
            index = np.arange(1, count + 1)
            means = np.asarray(ndimage.mean(values[c], parts, index))
            sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
            if not (sizes >= floor).any():
                continue
            unsure = index[means < means[sizes >= floor].max() - self.margin]
            if unsure.size:
                out = plain.clone() if out is None else out
                out[c][torch.from_numpy(np.isin(parts, unsure)).to(out.device)] = 0
        return probs if out is None else _like(out, probs)


class SizeConstraintd(MapTransform):
    """Transductive size constraint (after FSEFT): keep each class's predicted volume within
    ``margin`` of a prior volume taken from the k support volumes.

    FSEFT adds a penalty on the predicted organ size to a test-time objective. With the network fixed,
    the smallest change to the logits that moves a class's argmax volume into
    ``[prior * (1 - margin), prior * (1 + margin)]`` is one offset ``b`` added to that class's logit:
    a voxel is the class when its margin over the best other class exceeds ``-b``, so the offset that
    gives exactly ``n`` voxels is read off the sorted margins (no search). Classes inside their
    interval, and empty ones, are left alone; classes are adjusted one after the other.

    Args:
        keys: keys of K x spatial logits (background first), on a grid whose affine gives the spacing.
        prior_ml: each foreground class's prior volume in mL, in class order; ``None`` disables.
        margin: the allowed relative deviation from the prior.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prior_ml: Mapping[str, float] | list[float] | None,
        margin: float = 0.2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        values = list(prior_ml.values()) if isinstance(prior_ml, Mapping) else prior_ml
        self.prior = None if values is None else [float(v) for v in values]
        if not 0.0 <= float(margin) < 1.0:
            raise ValueError(f"size_margin is a fraction (0 <= margin < 1), got {margin}")
        self.margin = float(margin)
        self.adjusted: list[dict] = []  # what the last call changed, per class (for reports and tests)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.prior is None:
            return d
        for key in self.key_iterator(d):
            d[key] = self.constrain(d[key])
        return d

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with each class's offset applied."""
        if logits.shape[0] - 1 != len(self.prior):
            raise ValueError(f"size prior has {len(self.prior)} classes, the prediction {logits.shape[0] - 1}")
        affine = np.asarray(logits.affine if isinstance(logits, MetaTensor) else np.eye(4), dtype=float)
        voxel_ml = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0))) / 1000.0
        plain = _plain(logits).float().clone()
        flat = plain.reshape(plain.shape[0], -1)
        self.adjusted = []
        for c, prior in enumerate(self.prior, start=1):
            others = torch.cat([flat[:c], flat[c + 1 :]]).max(dim=0).values
            gap = flat[c] - others  # > 0: the voxel is class c
            count = int((gap > 0).sum())
            lo, hi = prior * (1 - self.margin) / voxel_ml, prior * (1 + self.margin) / voxel_ml
            record = {"class": c, "before_ml": count * voxel_ml, "prior_ml": prior, "offset": 0.0}
            if count and not lo <= count <= hi:
                n = int(round(hi if count > hi else lo))
                n = min(max(n, 1), gap.numel())
                top = torch.topk(gap, min(n + 1, gap.numel())).values  # the n-th and (n+1)-th largest margins
                offset = -float(top[n - 1] + top[n]) / 2 if n < gap.numel() else -float(top[n - 1]) + 1e-3
                flat[c] += offset
                record.update(offset=offset, after_ml=int((flat[c] - others > 0).sum()) * voxel_ml)
            self.adjusted.append(record)
        return _like(flat.reshape(plain.shape).to(logits.dtype), logits)

"""Interactive correction: the task's fine-tuned network, its learnt prompt plus a user's box or clicks.

MONAI Label (3D Slicer's "SmartEdit / Deepgrow" section) sends a request with ``foreground`` and
``background`` clicks (``[[i, j, k], ...]``), a box ``roi`` (``[i0, i1, j0, j1, k0, k1]``) and, for a
model declared 2D, the ``slice`` the user works on, all as voxel indices of the image file as MONAI's
readers return it. :class:`UserPromptd` stores them in the image's meta (MONAI Label's bundle task
calls the config's ``inferer`` with the image tensor alone), and :class:`PromptedInferer` maps them onto
the model input and decodes with the learnt prompt and SAM's point and box tokens (a box replaces the
learnt sparse tokens and bounds the object: see :class:`PromptedInferer`).

- A 2D image goes through the usual data path (``configs/inference.json``): the prediction is mapped
  back by ``Invertd``.
- A volume is read as in ``configs/volumes.json``; only the prompted slice is segmented (the slice
  geometry of :class:`bundle.inferers.SliceWiseInferer`), the other slices are background, and Slicer,
  told the model is 2D, takes that one slice into the segment.

The output is two channels, background and the prompted class (the request's ``label`` when it names a
class, else the first class), so the mask is binary, as MONAI Label's deepgrow models return. An image
already seen costs a decoder pass: the network's embedding cache is shared with the auto-segmentation
model in the same process (:func:`bundle.networks.shared_embedding_cache`).
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Compose, InvertibleTransform, MapTransform
from torch import Tensor

from bundle.errors import BundleInputError
from bundle.inferers import SliceWiseInferer, fit_longest_side

PROMPT_KEY = "user_prompt"  # image meta: N x 4 rows (i, j, k, kind) in the file's voxel indices
SLICE_KEY = "user_prompt_slice"  # image meta: the slice of a volume the prompt is on (-1: not given)
CLASS_KEY = "user_prompt_class"  # image meta: the prompted class, 1-based
# kinds: SAM's point labels (1 foreground, 0 background) and the box's two corners
BACKGROUND, FOREGROUND, BOX_MIN, BOX_MAX = 0, 1, 2, 3
NOT_PROMPTED = -1e4  # logit of the slices of a volume that are not segmented


def _name(data: Mapping, key: str) -> str:
    image = data.get(key)
    meta = getattr(image, "meta", {}) or {}
    return str(meta.get("filename_or_obj", data.get("image_path", "the image")))


class UserPromptd(MapTransform):
    """Store a request's clicks and box in the image's meta, checked against the image's size.

    Args:
        keys: the image key (channel first, as read: 2D ``C x I x J`` or 3D ``C x I x J x K``).
        class_names: the task's classes; a request's ``label`` naming one of them is the prompted class.
    """

    def __init__(self, keys: KeysCollection, class_names: Sequence[str] = ()) -> None:
        super().__init__(keys)
        self.class_names = [str(c).lower() for c in class_names]

    def __call__(self, data: Mapping[Hashable, Tensor]) -> dict[Hashable, Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, MetaTensor):
                raise TypeError(f"UserPromptd: {key} must be a MetaTensor, got {type(image).__name__}")
            shape = [int(s) for s in np.asarray(image.meta.get("spatial_shape", image.shape[1:])).reshape(-1)]
            rows = self._rows(d, shape, _name(d, key))
            if image.ndim == 4:  # a volume: the file's voxel indices onto the reoriented array (volumes.json)
                rows = _reoriented(rows, image)
                shape = [int(s) for s in image.shape[1:]]
            slice_index = d.get("slice")
            image.meta[PROMPT_KEY] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
            image.meta[SLICE_KEY] = -1 if slice_index is None else int(slice_index)
            label = str(d.get("label", "")).lower()
            image.meta[CLASS_KEY] = self.class_names.index(label) + 1 if label in self.class_names else 1
        return d

    @staticmethod
    def _rows(d: Mapping, shape: list[int], name: str) -> list[list[float]]:
        rows = []
        for kind, key in ((FOREGROUND, "foreground"), (BACKGROUND, "background")):
            for point in d.get(key) or []:
                if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
                    raise BundleInputError(f"{name}: {key} point {point!r} is not [i, j] or [i, j, k]")
                rows.append([*map(float, point), 0.0][:3] + [float(kind)])
        roi = d.get("roi") or []
        if roi:
            if len(roi) not in (4, 6):
                raise BundleInputError(f"{name}: roi {roi!r} is not [i0, i1, j0, j1] or [i0, i1, j0, j1, k0, k1]")
            pairs = [sorted(map(float, roi[a : a + 2])) for a in range(0, len(roi), 2)] + [[0.0, 0.0]]
            rows.append([pairs[0][0], pairs[1][0], pairs[2][0], float(BOX_MIN)])
            rows.append([pairs[0][1], pairs[1][1], pairs[2][1], float(BOX_MAX)])
        for row in rows:
            outside = [a for a in range(min(2, len(shape))) if not 0 <= row[a] <= shape[a] - 1]
            if outside:
                raise BundleInputError(
                    f"{name}: prompt point {[int(v) for v in row[:3]]} lies outside the image of size "
                    f"{' x '.join(map(str, shape))}"
                )
        return rows


def _reoriented(rows: list[list[float]], image: MetaTensor) -> list[list[float]]:
    """Prompt rows in the file's voxel indices -> indices of the array after ``Orientationd``
    (``inverse(affine) @ original_affine``; the identity when the file was already in that orientation)."""
    original = image.meta.get("original_affine")
    if original is None or not rows:
        return rows
    to_array = np.linalg.inv(np.asarray(image.affine, dtype=float)) @ np.asarray(original, dtype=float)
    out = []
    for row in rows:
        ijk = to_array @ np.array([*row[:3], 1.0])
        out.append([*(float(v) for v in np.rint(ijk[:3])), row[3]])
    corners = [i for i, row in enumerate(out) if row[3] in (BOX_MIN, BOX_MAX)]
    if len(corners) == 2:  # a flipped axis swaps the box's corners: min and max again
        a, b = (np.array(out[i][:3]) for i in corners)
        out[corners[0]][:3], out[corners[1]][:3] = np.minimum(a, b).tolist(), np.maximum(a, b).tolist()
    return out


def _prompt(inputs: Tensor) -> tuple[Tensor, int, int, list[int]]:
    meta = inputs.meta if isinstance(inputs, MetaTensor) else {}
    rows = torch.as_tensor(meta.get(PROMPT_KEY, torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
    slice_index = int(np.asarray(meta.get(SLICE_KEY, -1)).reshape(-1)[0])
    target = int(np.asarray(meta.get(CLASS_KEY, 1)).reshape(-1)[0])
    shape = [int(s) for s in np.asarray(meta.get("spatial_shape", inputs.shape[2:])).reshape(-1)]
    return rows, slice_index, target, shape


def sam_prompt(rows: Tensor, scale: float, rows_first: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """SAM's ``(point coords 1 x N x 2, point labels 1 x N, box 1 x 4)`` on the model input from prompt
    rows in file indices (:data:`PROMPT_KEY`), resized by ``scale``; ``rows_first``: the file's first
    axis is the model input's rows (y), else its columns (x, what an upright 2D image has)."""
    xy = rows[:, [1, 0]] if rows_first else rows[:, [0, 1]]
    kinds = rows[:, 3]
    clicks = kinds <= FOREGROUND
    points = labels = box = None
    if bool(clicks.any()):
        points = ((xy[clicks] + 0.5) * scale - 0.5).unsqueeze(0)  # pixel centres map onto pixel centres
        labels = kinds[clicks].unsqueeze(0)
    corners = [xy[kinds == k] for k in (BOX_MIN, BOX_MAX)]
    if all(len(c) for c in corners):  # inclusive pixel bounds: the box's outer edges, resized
        box = torch.cat([corners[0][-1] * scale, (corners[1][-1] + 1) * scale - 1]).unsqueeze(0)
    return points, labels, box


def _flip_rows(rows: Tensor, extent: int) -> Tensor:
    """Prompt rows with their second index (the upright axial plane's row) mirrored in ``0..extent - 1``;
    the box's corners swap that index, so its first corner stays the smaller."""
    rows = rows.clone()
    rows[:, 1] = extent - 1 - rows[:, 1]
    low, high = rows[:, 3] == BOX_MIN, rows[:, 3] == BOX_MAX
    if bool(low.any()) and bool(high.any()):
        first, last = rows[high, 1][-1].clone(), rows[low, 1][-1].clone()
        rows[low, 1], rows[high, 1] = first, last
    return rows


class PromptedInferer(Inferer):
    """Logits ``B x 2 x ...`` (background, the prompted class) from the network's learnt prompt plus the
    user's clicks and box stored by :class:`UserPromptd` (none: the learnt prompt alone, as auto-segmentation).

    How a box meets the learnt prompt was chosen by measurement (``scripts/interactive_correction.py``, on the
    worst test cases of trained JSRT and Kvasir-SEG tasks; ``docs/monailabel.md``, section 6b). The learnt
    sparse tokens start as a whole-image box, and a user's box added after them barely moved the decoder
    (Kvasir-SEG: Dice 0.12 -> 0.32), while the user's box in their place, with the learnt dense prompt kept,
    gave 0.95; a box also says the object lies inside it, so the class is cleared outside the box. Clicks
    are added after the learnt tokens.

    Args:
        input_size: the network's square input side.
        upright: the 2D data path made images rows first (``configs/inference.json``'s ``upright``).
        box: ``replace``: a user's box takes the place of the learnt sparse tokens (the learnt dense prompt
            stays); ``add``: it follows them; ``clip``: the learnt prompt alone, the box only clears the
            class outside it (for a structure of several parts in one box, such as two lungs).
        clip_to_box: no object outside a user's box (always so with ``clip``).
        backbone: the backbone whose normalisation a volume's slice gets (``configs/volumes.json``
            leaves volumes at 0..255 and normalises per slice).
        context, flip_vertical: a volume's slice taken as training took it (``--slice_context``,
            ``--slice_flip_vertical``); the user's clicks and box follow the flip.
    """

    def __init__(
        self,
        input_size: int,
        upright: bool = True,
        box: str = "replace",
        clip_to_box: bool = True,
        backbone: str | None = None,
        context: int = 0,
        flip_vertical: bool | str = False,
    ) -> None:
        super().__init__()
        # a volume's prompted slice is taken and normalised as SliceWiseInferer takes every slice
        self.slices = SliceWiseInferer(input_size, backbone=backbone, context=context, flip_vertical=flip_vertical)
        if box not in ("replace", "add", "clip"):
            raise ValueError(f"interactive_box must be 'replace', 'add' or 'clip', got {box!r}")
        self.input_size = int(input_size)
        self.upright = bool(upright)
        self.box = box
        self.clip_to_box = bool(clip_to_box)

    def __call__(self, inputs: Tensor, network: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        net = getattr(network, "module", network)  # DataParallel / DDP
        rows, slice_index, target, shape = _prompt(inputs)
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if plain.ndim == 5:
            logits = self._volume(net, plain, rows, slice_index, target)
        else:  # a preprocessed 2D image: resized on its longest side from the file's shape, then padded
            scale = self.input_size / max(shape[:2])
            logits = self._decode(net, plain, rows, scale, rows_first=not self.upright, target=target)
        if isinstance(inputs, MetaTensor):  # Invertd and the writer read the input's meta
            return MetaTensor(logits).copy_meta_from(inputs, copy_attr=False)
        return logits

    def _decode(self, net, images: Tensor, rows: Tensor, scale: float, rows_first: bool, target: int) -> Tensor:
        embeddings = net.encode(images)
        sparse, dense = net.learnt_prompt(images.shape[0], embeddings.dtype)
        points, labels, box = sam_prompt(rows.to(embeddings.device), scale, rows_first)
        box_tokens = None if self.box == "clip" else box  # "clip": the box only bounds the object
        if points is not None or box_tokens is not None:
            user, _ = net.prompt_encoder(
                points=None if points is None else (points.to(embeddings.dtype), labels.to(embeddings.dtype)),
                boxes=None if box_tokens is None else box_tokens.to(embeddings.dtype),
                masks=None,
            )
            if box is not None and self.box == "replace":
                sparse = sparse[:, :0]
            sparse = torch.cat([sparse, user.to(embeddings.dtype).expand(sparse.shape[0], -1, -1)], dim=1)
        logits = net.decode(embeddings, sparse, dense)
        if not 1 <= target < logits.shape[1]:
            raise ValueError(f"prompted class {target} is not one of the network's {logits.shape[1] - 1} classes")
        logits = logits[:, [0, target]]
        if box is not None and (self.clip_to_box or self.box == "clip"):  # the box's pixels, inclusive
            x0, y0 = (max(int(v), 0) for v in torch.floor(box[0, :2]).tolist())
            x1, y1 = (int(v) for v in torch.ceil(box[0, 2:]).tolist())
            inside = torch.zeros(logits.shape[-2:], dtype=torch.bool, device=logits.device)
            inside[y0 : y1 + 1, x0 : x1 + 1] = True
            logits = logits.clone()
            logits[:, 1].masked_fill_(~inside, NOT_PROMPTED)
        return logits

    def _volume(self, net, volume: Tensor, rows: Tensor, slice_index: int, target: int) -> Tensor:
        depth = volume.shape[-1]
        if slice_index < 0:  # no slice given: the last click's, else the box's first
            slice_index = int(rows[-1, 2]) if len(rows) else depth // 2
        if not 0 <= slice_index < depth:
            raise BundleInputError(f"slice {slice_index} is outside the volume's {depth} slices")
        on_slice = rows[(rows[:, 2] == slice_index) | (rows[:, 3] >= BOX_MIN)]
        if self.slices.slicer.flip_vertical:  # the slice reaches the network upside down: so do the prompts
            on_slice = _flip_rows(on_slice, volume.shape[-2])
        # the axial plane upright (SliceWiseInferer): rows are the array's second axis, columns its first
        image = torch.stack([self.slices.slice_input(v, slice_index) for v in volume])
        height, width = image.shape[-2:]
        x, (h, w) = fit_longest_side(image, self.input_size)
        scale = self.input_size / max(height, width)
        logits = self._decode(net, x, on_slice, scale, rows_first=False, target=target)[..., :h, :w]
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        out = logits.new_zeros((volume.shape[0], 2, *volume.shape[2:]))
        out[:, 1] = NOT_PROMPTED
        for b in range(volume.shape[0]):
            out[b, ..., slice_index] = self.slices.slicer.from_upright(logits[b])
        return out


class CachedPreprocessd(MapTransform, InvertibleTransform):
    """The data path of an image, kept for the images seen last, so a correction on an image already seen
    skips reading and resizing it (for a 2048 x 2048 radiograph, most of a request's time).

    Keyed by the file's path, size and modification time, so an edited file is read again. Each call
    returns a copy (later transforms write into the image's meta). ``inverse`` is the wrapped chain's.
    Memory is bounded by ``max_bytes``; an item larger than a quarter of it (a whole CT volume) is not kept.

    Args:
        transform: the chain from file path to model input (``input_transforms``).
        max_bytes: memory for the kept images (0: no cache).
        keys: the image key (a file path).
    """

    def __init__(self, transform: Callable | Sequence[Callable], max_bytes: int = 256 * 2**20,
                 keys: KeysCollection = "image") -> None:  # fmt: skip
        MapTransform.__init__(self, keys)
        self.transform = transform if isinstance(transform, Compose) else Compose(list(transform))
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[dict, int]] = OrderedDict()

    def _key(self, data: Mapping) -> tuple | None:
        path = data.get(self.first_key(data))
        if self.max_bytes <= 0 or not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
            return None
        stat = os.stat(path)
        return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        key = self._key(data)
        if key is not None and key in self._items:
            self._items.move_to_end(key)
            cached = self._items[key][0]
        else:
            out = self.transform(dict(data))
            cached = {k: out[k] for k in self.keys}
            size = sum(v.element_size() * v.nelement() for v in cached.values() if isinstance(v, torch.Tensor))
            if key is not None and size <= self.max_bytes // 4:
                self._items[key] = (copy.deepcopy(cached), size)
                while sum(s for _, s in self._items.values()) > self.max_bytes:
                    self._items.popitem(last=False)
            return {**dict(data), **out}
        return {**dict(data), **copy.deepcopy(cached)}

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return self.transform.inverse(data)

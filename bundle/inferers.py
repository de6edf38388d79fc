"""Slice-by-slice inference of the 2D BLO-SAM model on 3D volumes.

The network is trained on 2D images resized on their longest side and padded (``configs/train.json``).
For a volume (CT, MR) each slice gets that same geometry here, inside the inferer, and its logits
are mapped back (crop the padding, resize to the slice size) before stacking: the result lies on the
volume's own grid, so no ``Invertd`` is needed and the saved NIfTI keeps the input's affine.
MONAI's ``SliceInferer`` runs 2D networks on slices too, but by sliding a fixed window rather than
resizing the slice, which is not how SAM-family models were trained.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import Tensor

from bundle.errors import BundleInputError
from bundle.networks.backbones import backbone_spec
from bundle.networks.box_prompt import NO_OBJECT_LOGIT, box_union_logits, component_boxes
from bundle.postprocessing import CleanMaskd, DropUnsureComponentsd
from bundle.transforms import sam_intensity

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from bundle.networks.token_bank import TokenBank

# Bytes per voxel that volume inference needs beyond the output logits (4 bytes per class and voxel):
# the label map, its int64 argmax and the clean-up's copies (measured by
# scripts/benchmark_volume_memory.py, docs/results/benchmark_volume_memory.md).
POSTPROCESS_BYTES_PER_VOXEL = 16


def fit_longest_side(images: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """Resize N x C x H x W images so the longest side is ``size``, pad bottom/right to size x size,
    exactly as :mod:`bundle.preprocessing` does to 2D images (MONAI's ``Resize``, Gaussian
    anti-aliasing), so a volume's slices reach the network as the training images did.

    Returns:
        The padded batch and the resized (h, w) before padding.
    """
    from bundle.preprocessing import image_resize  # the resize of the 2D data path, not a copy of it

    resize = image_resize(size)
    plain = images.as_tensor() if isinstance(images, MetaTensor) else images
    resized = torch.stack([torch.as_tensor(resize(image)) for image in plain])
    h, w = resized.shape[-2:]
    return F.pad(resized, (0, size - w, 0, size - h)), (h, w)


def available_memory() -> int | None:
    """Bytes this process can still allocate: the kernel's ``MemAvailable``, capped by the cgroup's
    memory limit (a container or ``systemd-run -p MemoryMax``) when one is set; ``None`` if unknown."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        maximum = (cgroup / "memory.max").read_text().strip()
        if maximum != "max":
            limits.append(int(maximum) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_volume_memory(inputs: Tensor, classes: int) -> None:
    """Refuse a volume whose prediction would not fit in memory, naming the file, before allocating it.

    Without this, a volume too large for the machine is ended by the kernel's out-of-memory killer,
    which prints nothing and loses the run.
    """
    voxels = inputs.shape[0] * math.prod(inputs.shape[2:])
    needed = voxels * (4 * classes + POSTPROCESS_BYTES_PER_VOXEL)
    available = available_memory()
    if available is None or needed <= available:
        return
    meta = inputs.meta if isinstance(inputs, MetaTensor) else {}
    name = meta.get("filename_or_obj", "the volume")
    name = name[0] if isinstance(name, (list, tuple)) else name
    shape = " x ".join(str(s) for s in inputs.shape[2:])
    raise BundleInputError(
        f"{name}: a {shape} volume needs about {needed / 2**30:.1f} GiB for its prediction, "
        f"{available / 2**30:.1f} GiB is available; crop or resample it, or use a machine with more memory"
    )


def empty_if_constant(images: Tensor, logits: Tensor) -> Tensor:
    """Background for every image of ``images`` (N x C x H x W) whose values are all equal.

    A constant slice (air above the head, a zero-padded slab, an all-zero volume) has no structure
    to segment, yet the network still answers something on it: the percentile scaling of
    ``configs/volumes.json`` maps a constant volume to one value (MONAI's ``ScaleIntensityRange``
    divides by zero: ``b_min`` everywhere), and a flat input gives a prompt-driven blob on every
    slice. Background has the constant logit 0 (:class:`bundle.networks.BLOSAM`), so the other
    classes are set far below it.
    """
    flat = images.flatten(1)
    constant = (flat == flat[:, :1]).all(dim=1)
    if not bool(constant.any()):
        return logits
    logits = logits.clone()
    logits[constant, 0] = 0.0
    logits[constant, 1:] = -1e4
    return logits


class SliceWiseInferer(Inferer):
    """Run a 2D network on every slice of B x C x X x Y x Z volumes along one axis.

    Each slice is taken as training took it (:class:`bundle.data.volumes.VolumeSlicer`: upright,
    8-bit grey levels, optionally with its neighbours as channels), normalised per slice as the
    backbone expects, resized and padded like a 2D image; its logits are mapped back onto the
    volume's grid. Constant slices are predicted empty (:func:`empty_if_constant`).

    Args:
        input_size: the network's square input side.
        slices_per_batch: slices sent to the network at once.
        progress: show a progress bar over slices.
        axis: the sliced axis (``axial`` = the last, ``coronal``, ``sagittal``, or 0..2).
        context: 1 for 2.5D inputs (the neighbouring slices as channels).
        flip_vertical: planes upside down, as training took them (``--slice_flip_vertical``).
        backbone: normalise each slice as this backbone expects; ``None`` when the volume already is.
        token_bank: a :class:`bundle.networks.token_bank.TokenBank` of the support volumes' tokens
            (``--token_prior``): its nearest-neighbour votes are fused with the network's class probabilities.
        token_vote_weight: how: ``None`` multiplies them, a weight w in 0..1 takes w x votes + (1 - w) x the
            network's probabilities (:func:`bundle.networks.token_bank.fuse_votes`).
    """

    def __init__(
        self,
        input_size: int,
        slices_per_batch: int = 8,
        progress: bool = False,
        axis: str | int = "axial",
        context: int = 0,
        backbone: str | None = None,
        flip_vertical: bool | str = False,
        token_bank: TokenBank | None = None,
        token_vote_weight: float | None = None,
    ) -> None:
        super().__init__()
        from bundle.data.volumes import VolumeSlicer, slice_axis

        self.input_size = int(input_size)
        self.slices_per_batch = slices_per_batch
        self.progress = progress
        self.slicer = VolumeSlicer(slice_axis(axis), int(context), flip_vertical)
        self.normalization = None if backbone is None else backbone_spec(backbone).normalization
        self.token_bank = token_bank
        self.token_vote_weight = None if token_vote_weight is None else float(token_vote_weight)

    def slice_input(self, volume: Tensor, index: int) -> Tensor:
        """Slice ``index`` of one C x X x Y x Z volume as the network takes it: 3 x rows x columns."""
        if self.normalization is None:
            image = self.slicer.plane(volume[: 3 if self.slicer.context else 1], index).float()
        else:
            image = sam_intensity(self.slicer.image(volume, index), self.normalization)
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image

    def token_positions(self, shown: Tensor, fitted: tuple[int, int], grid: tuple[int, int]) -> Tensor:
        """grid rows x grid columns x 2: the body-box positions of the tokens of one slice as shown to the
        network (``shown``: 3 x rows x columns, fitted to ``fitted`` of the input square); the slice itself is
        its centre channel (:func:`bundle.networks.token_bank.body_positions`)."""
        from bundle.networks.token_bank import body_positions

        return body_positions(shown[shown.shape[0] // 2], fitted, tuple(grid), self.input_size)

    def with_votes(
        self, logits: Tensor, embeddings: Tensor, shown: Tensor, x_size: int, size: tuple[int, int]
    ) -> Tensor:
        """``logits`` (N x K x rows x columns) fused with the token bank's votes for the slices' ``embeddings``
        (N x D x h x w, of the slices ``shown`` N x 3 x rows x columns fitted to the network's ``x_size`` square,
        in its top-left ``size``): the votes take the logits' path back to the slice."""
        from bundle.networks.token_bank import fuse_votes

        positions = None
        if self.token_bank.uses_positions:
            positions = torch.stack([self.token_positions(s, size, embeddings.shape[-2:]) for s in shown])
        votes = self.token_bank.votes(embeddings, positions)
        votes = F.interpolate(votes, size=(x_size, x_size), mode="bilinear", align_corners=False)
        votes = votes[..., : size[0], : size[1]]
        votes = F.interpolate(votes, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return fuse_votes(logits, votes / votes.sum(dim=1, keepdim=True).clamp_min(1e-6), self.token_vote_weight)

    def usable_bank(self, network: Callable[..., Tensor]) -> TokenBank | None:
        """The token bank, checked against the network's classes. A bank of another class count (one left
        beside a checkpoint that another training replaced) fails naming its file, or, read under
        ``--token_prior auto``, is dropped with a warning so the network segments alone."""
        bank, classes = self.token_bank, getattr(network, "num_classes", None)
        if bank is None or classes is None or bank.num_classes == int(classes) + 1:
            return bank
        problem = (f"{bank.source or 'the token bank'}: its votes are for {bank.num_classes - 1} structures, the "
                   f"network segments {int(classes)} (a bank left from another training?)")  # fmt: skip
        if not bank.optional:
            raise BundleInputError(f"{problem}; retrain on the volumes, pass --token_prior_file <file>, or "
                                   "--token_prior false")  # fmt: skip
        logger.warning(f"--token_prior auto: {problem}; segmenting without the token prior")
        self.token_bank = None
        return None

    def __call__(self, inputs: Tensor, network: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"SliceWiseInferer expects B x C x H x W x D volumes, got {tuple(inputs.shape)}.")
        self.usable_bank(network)
        batch = inputs.shape[0]
        volume = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs  # slicing batched meta fails
        # Memory stays bounded by the output itself: slices are read from the volume one batch at a
        # time (no permuted copy of the whole volume) and their logits written into one preallocated
        # B x K x X x Y x Z tensor (no list of chunks, no concatenated copy);
        # scripts/benchmark_volume_memory.py measures the peak per voxel.
        index = [(b, d) for b in range(batch) for d in range(self.slicer.count(volume[0]))]
        chunks = range(0, len(index), self.slices_per_batch)
        if self.progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="slices", unit="batch")
        out: Tensor | None = None
        for start in chunks:
            part = index[start : start + self.slices_per_batch]
            chunk = torch.stack([self.slice_input(volume[b], d) for b, d in part])  # N x 3 x rows x columns
            height, width = chunk.shape[-2:]
            x, (h, w) = fit_longest_side(chunk, self.input_size)
            if self.token_bank is None:
                logits = network(x, *args, **kwargs)
            else:  # one encoder pass serves the decoder and the votes (no cache needed)
                embeddings = network.encode(x)
                logits = network(embeddings, *args, encoded=True, **kwargs)
            logits = F.interpolate(logits[..., :h, :w], size=(height, width), mode="bilinear", align_corners=False)
            if self.token_bank is not None:
                logits = self.with_votes(logits, embeddings, chunk, x.shape[-1], (h, w))
            logits = empty_if_constant(chunk, logits)
            if out is None:
                check_volume_memory(inputs, logits.shape[1])
                out = logits.new_empty((batch, logits.shape[1], *volume.shape[2:]))
            for (b, d), slice_logits in zip(part, logits, strict=True):
                out[b].select(1 + self.slicer.axis, d).copy_(self.slicer.from_upright(slice_logits))
        assert out is not None  # depth >= 1
        if isinstance(inputs, MetaTensor):  # the prediction lies on the input's grid: same meta
            out = MetaTensor(out, meta=inputs.meta, applied_operations=inputs.applied_operations)
            out.is_batch = inputs.is_batch
        return out


class FlipTTAInferer(Inferer):
    """Test-time augmentation by flips: the mean of the class probabilities over the input and its
    flipped copies (each prediction flipped back), returned as log-probabilities, so the softmax of
    the post-processing gives that mean.

    Each flip costs one more encoder pass per image. Only use flips the task's anatomy allows
    (left-right for chest X-ray, not up-down). MONAI's ``TestTimeAugmentation`` draws random
    transforms and inverts them through the data pipeline; these fixed flips need neither.

    Args:
        flips: the flips, each a list of spatial axes of the B x C x H x W input (0: rows, up-down;
            1: columns, left-right); ``[]`` predicts once, as ``SimpleInferer``.
    """

    def __init__(self, flips: list[list[int]] | None = None) -> None:
        super().__init__()
        self.flips = [sorted(int(a) + 2 for a in flip) for flip in (flips or [])]
        if any(a not in (2, 3) for flip in self.flips for a in flip):
            raise ValueError(f"tta_flips: spatial axes are 0 (rows) and 1 (columns), got {flips}")

    def __call__(self, inputs: Tensor, network: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        if not self.flips:
            return network(inputs, *args, **kwargs)
        probs = torch.softmax(network(inputs, *args, **kwargs).float(), dim=1)
        for dims in self.flips:
            # spatial prompts given beside the image (the box bound's ground-truth masks) follow the flip
            f_args = [self._flip_like(a, inputs, dims) for a in args]
            f_kwargs = {k: self._flip_like(v, inputs, dims) for k, v in kwargs.items()}
            flipped = network(torch.flip(inputs, dims), *f_args, **f_kwargs)
            probs = probs + torch.flip(torch.softmax(flipped.float(), dim=1), dims)
        return torch.log((probs / (len(self.flips) + 1)).clamp_min(1e-8))

    @staticmethod
    def _flip_like(value: Any, inputs: Tensor, dims: list[int]) -> Any:
        """``value`` flipped along ``dims`` if it is a B x C x H x W map on the input's grid, else as is."""
        if isinstance(value, Tensor) and value.ndim == inputs.ndim and value.shape[2:] == inputs.shape[2:]:
            return torch.flip(value, dims)
        return value


class BoxRefineInferer(Inferer):
    """A prompt-free pass (with :class:`FlipTTAInferer`'s flips), then a second pass prompted with one box per
    found component (by the released backbone or the trained network), whose masks replace the first pass's.

    A decoder fine-tuned on a few images often finds only part of an object (a large polyp in two or three
    fragments, or its brightest half): its HD95 is then set by the object's far edge. SAM-family decoders
    were trained to segment the whole object inside a box, so the box of each found component asks for all
    of it. The boxes come from the components that the preset's clean-up would keep (the
    ``confidence_margin``, ``min_size`` and ``min_relative_size`` of ``configs/train.json``, applied here on
    the model's grid, where ``min_size`` counts the padded square's pixels). A class whose first pass is
    empty there stays empty. The second pass reuses the image embedding (the network's embedding cache; the
    encoder is frozen, so the released backbone's embedding is the same): one decoder pass per box, no
    encoder pass. MONAI has no such two-pass inferer; SAM's own ``SamPredictor`` takes a box but no first
    pass.

    Who answers the boxes (``refine_boxes``):

    - ``"pretrained"``: the released backbone (``refiner``), as the box-prompted zero-shot bound
      (:class:`~bundle.networks.box_prompt.BoxPromptedSAM`): SAM's single-mask output per box, the union
      over a class's boxes;
    - ``"trained"``: the trained network itself, as a user's box in MONAI Label's interactive model
      (``interactive_box`` ``replace``: the box in place of the learnt sparse tokens, the learnt dense prompt
      kept), the class's own head. On a Kvasir-SEG development model this lost 6-10 Dice points
      (``docs/results/fewshot/dev/kvasir_4shot_pool/commands.md``).

    Args:
        flips: the first pass's test-time flips (``tta_flips``).
        refine: ``"pretrained"`` or ``"trained"`` (above); ``False`` or ``None``: no box pass, exactly
            :class:`FlipTTAInferer`.
        refiner: the released backbone as a :class:`~bundle.networks.BLOSAM` (needed for ``"pretrained"``).
        margin: ``postprocess_confidence_margin`` of the clean-up that picks the components.
        min_size: ``postprocess_min_size`` of that clean-up.
        min_relative_size: ``postprocess_min_relative_size`` of that clean-up.
        expand: each box grows by this fraction of its width and height (half on each side).
        min_area: components smaller than this (model-grid pixels) get no box.
    """

    def __init__(
        self,
        flips: list[list[int]] | None = None,
        refine: str | bool | None = None,
        refiner: Callable[..., Tensor] | None = None,
        margin: float = 0.0,
        min_size: float = 0.0,
        min_relative_size: float = 0.0,
        expand: float = 0.0,
        min_area: int = 16,
    ) -> None:
        super().__init__()
        self.first = FlipTTAInferer(flips)
        self.refine = {False: None, None: None, "false": None, True: "trained"}.get(refine, refine)
        if self.refine not in (None, "trained", "pretrained"):
            raise ValueError(f"refine_boxes: use false, 'trained' or 'pretrained', got {refine!r}")
        if self.refine == "pretrained" and refiner is None:
            raise ValueError("refine_boxes 'pretrained' needs the released backbone as refiner (refine_network)")
        self.refiner = refiner
        self.drop = DropUnsureComponentsd("pred", margin, min_size)
        self.min_size, self.min_relative_size = min_size, min_relative_size
        if not 0.0 <= float(expand) <= 1.0:
            raise ValueError(f"refine_box_expand is a fraction of the box (0 <= x <= 1), got {expand}")
        self.expand, self.min_area = float(expand), int(min_area)

    def __call__(self, inputs: Tensor, network: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        first = self.first(inputs, network, *args, **kwargs)
        if not self.refine or args or kwargs:  # a network prompted from outside (the box bound) is left alone
            return first
        net = getattr(network, "module", network)  # DistributedDataParallel
        if not all(hasattr(net, a) for a in ("encode", "decode", "prompt_encoder")):
            raise TypeError(f"refine_boxes needs a BLO-SAM network (encode, decode, prompt_encoder), got {type(net)}")
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        clean = CleanMaskd("pred", first.shape[1] - 1, False, None, self.min_size, self.min_relative_size)
        out = first.clone()
        with torch.no_grad():
            embeddings = net.encode(plain)
            for b, (embedding, logits) in enumerate(zip(embeddings, first, strict=True)):
                probs = torch.softmax(logits.float(), dim=0)
                classes = clean.clean(self.drop.drop(probs).argmax(0, keepdim=True))[0]
                out[b, 0] = 0.0  # background: a constant 0 logit, as the network's own
                for c in range(1, first.shape[1]):
                    boxes = self.boxes(classes == c)
                    if not boxes:
                        out[b, c] = NO_OBJECT_LOGIT
                        continue
                    out[b, c] = self.answer(net, embedding, boxes, c).to(out.dtype)
        return out

    def answer(self, net: Callable[..., Tensor], embedding: Tensor, boxes: list[list[float]], c: int) -> Tensor:
        """Class ``c``'s logits on the model grid for its ``boxes``: the union (maximum) over the boxes."""
        if self.refine == "pretrained":  # the released decoder, as the zero-shot bound: SAM's single-mask token
            return box_union_logits(getattr(self.refiner, "module", self.refiner), embedding, boxes)
        box = torch.tensor(boxes, dtype=embedding.dtype, device=embedding.device)
        repeated = embedding.unsqueeze(0).expand(len(boxes), -1, -1, -1)
        sparse, _ = net.prompt_encoder(points=None, boxes=box, masks=None)
        dense = net.learnt_prompt(len(boxes), embedding.dtype)[1]
        per_box = net.decode(repeated, sparse.to(embedding.dtype), dense.expand(len(boxes), -1, -1, -1))
        return per_box[:, c].amax(dim=0)  # the class's own head

    def boxes(self, mask: Tensor) -> list[list[float]]:
        """``[x0, y0, x1, y1]`` boxes of ``mask``'s components, grown by ``expand`` and kept on the grid."""
        height, width = mask.shape[-2:]
        grown = []
        for x0, y0, x1, y1 in component_boxes(mask, self.min_area):
            dx, dy = (x1 - x0 + 1) * self.expand / 2, (y1 - y0 + 1) * self.expand / 2
            grown.append([max(0.0, x0 - dx), max(0.0, y0 - dy), min(width - 1.0, x1 + dx), min(height - 1.0, y1 + dy)])
        return grown

"""Zero-shot baseline: the pretrained backbone prompted with boxes taken from the ground truth.

A prompt-free method is compared with this upper bound (and with the no-prompt floor, which is an
untrained :class:`~bundle.networks.BLOSAM`). Each connected component of each class in the ground
truth becomes one box; SAM's single-mask output is predicted per box and the union (maximum
logit) over a class's boxes is that class's logit. LiteMedSAM was trained exactly so: one box per
object, single-mask output.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from bundle.networks.blo_sam import BLOSAM

NO_OBJECT_LOGIT = -20.0  # logit of a class with no box (below the constant 0 background logit)


def component_boxes(mask: np.ndarray | Tensor, min_area: int = 16) -> list[list[int]]:
    """``[x0, y0, x1, y1]`` boxes (inclusive pixel bounds, x along the last axis) of the connected
    components of a 2D binary mask, ignoring components smaller than ``min_area`` pixels."""
    array = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask) > 0
    labels, count = ndimage.label(array)
    if count == 0:
        return []
    areas = ndimage.sum_labels(array, labels, index=np.arange(1, count + 1))
    boxes = []
    for area, slices in zip(areas, ndimage.find_objects(labels), strict=True):
        if area >= min_area:
            rows, cols = slices
            boxes.append([cols.start, rows.start, cols.stop - 1, rows.stop - 1])
    return boxes


def box_union_logits(network: BLOSAM, embedding: Tensor, boxes: list[list[float]]) -> Tensor:
    """S x S logits of ``network`` prompted with each of ``boxes`` on one image ``embedding`` (256 x h x w):
    SAM's single-mask output per box, the union (maximum) over the boxes."""
    box = torch.tensor(boxes, dtype=embedding.dtype, device=embedding.device)
    sparse, dense = network.prompt_encoder(points=None, boxes=box, masks=None)
    repeated = embedding.unsqueeze(0).expand(len(boxes), -1, -1, -1)
    return network.decode(repeated, sparse.to(embedding.dtype), dense.to(embedding.dtype))[:, 1].amax(dim=0)


class BoxPromptedSAM(nn.Module):
    """``forward(images B x 3 x S x S, prompt_masks B x 1 x S x S) -> logits B x (C+1) x S x S``.

    Args:
        network: a BLO-SAM network whose backbone is used as released (its LoRA and learnt prompt
            are not used when untrained: LoRA starts as the identity).
        min_area: components smaller than this (in model-input pixels) get no box.
    """

    def __init__(self, network: BLOSAM, min_area: int = 16) -> None:
        super().__init__()
        self.network = network
        self.min_area = min_area

    @torch.no_grad()
    def forward(self, images: Tensor, prompt_masks: Tensor) -> Tensor:
        net = self.network
        embeddings = net.encode(images)
        logits = []
        for embedding, mask in zip(embeddings, prompt_masks, strict=True):
            channels = [embedding.new_zeros(images.shape[-2:])]  # background: constant 0
            for c in range(1, net.num_classes + 1):
                boxes = component_boxes(mask[0] == c, self.min_area)
                if not boxes:
                    channels.append(embedding.new_full(images.shape[-2:], NO_OBJECT_LOGIT))
                    continue
                channels.append(box_union_logits(net, embedding, boxes))
            logits.append(torch.stack(channels))
        return torch.stack(logits)

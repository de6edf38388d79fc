"""The zero-shot baseline: boxes from ground-truth components, box-prompted SAM, prompt batches."""

from __future__ import annotations

import numpy as np
import torch

from bundle.engines import GroundTruthPromptBatch
from bundle.networks.box_prompt import NO_OBJECT_LOGIT, BoxPromptedSAM, component_boxes


def test_component_boxes_are_inclusive_xyxy_and_skip_specks():
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:15, 10:30] = 1  # rows 5..14 (y), columns 10..29 (x)
    mask[20:35, 40:45] = 1
    mask[0, 0] = 1  # one-pixel speck
    assert sorted(component_boxes(mask, min_area=4)) == [[10, 5, 29, 14], [40, 20, 44, 34]]
    assert len(component_boxes(mask, min_area=1)) == 3
    assert component_boxes(np.zeros((5, 5))) == []


def test_box_prompted_sam_segments_each_class_from_its_boxes(tiny_net):
    net = BoxPromptedSAM(tiny_net.eval())
    size = tiny_net.input_size
    images = torch.rand(2, 3, size, size)
    prompts = torch.zeros(2, 1, size, size)
    prompts[0, 0, 20:80, 30:120] = 1
    prompts[0, 0, 150:200, 150:220] = 1  # two components: two boxes, one union
    logits = net(images, prompts)
    assert logits.shape == (2, 2, size, size)
    assert torch.all(logits[:, 0] == 0)  # constant background, as in BLOSAM
    assert torch.all(logits[1, 1] == NO_OBJECT_LOGIT)  # no ground truth: no box, nothing predicted
    assert torch.isfinite(logits[0, 1]).all() and not torch.all(logits[0, 1] == NO_OBJECT_LOGIT)
    # the union is the maximum of the single-box predictions
    emb = tiny_net.encode(images[:1])
    singles = []
    for box in ([30, 20, 119, 79], [150, 150, 219, 199]):
        sparse, dense = tiny_net.prompt_encoder(points=None, boxes=torch.tensor([box], dtype=torch.float32), masks=None)
        singles.append(tiny_net.decode(emb, sparse, dense)[0, 1])
    torch.testing.assert_close(logits[0, 1], torch.maximum(*singles), rtol=1e-4, atol=1e-4)


def test_ground_truth_prompt_batch_puts_the_label_on_the_model_grid():
    image = torch.rand(1, 3, 64, 64)
    label = torch.zeros(1, 1, 200, 100)  # original resolution, MONAI's reader layout (x, y): 200 wide, 100 tall
    label[0, 0, 100:200, :50] = 1  # right half of the picture, top half
    images, labels, args, kwargs = GroundTruthPromptBatch(64)({"image": image, "label": label})
    assert labels.shape == (1, 1, 200, 100) and args == ()
    prompt = kwargs["prompt_masks"]
    assert prompt.shape == (1, 1, 64, 64)
    # upright (rows first) like the image; longest side 200 -> 64 (scale 0.32): rows 0..49 -> 0..15,
    # columns 100..199 -> 32..63; padding at the end (rows 32..63)
    assert prompt[0, 0, :16, 32:64].min() == 1 and prompt[0, 0, :, :32].max() == 0 and prompt[0, 0, 32:].max() == 0

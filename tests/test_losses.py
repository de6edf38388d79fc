"""The present-class Dice + cross-entropy loss used for volume slices."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from bundle.losses import PresentClassDiceCELoss


def _target(classes: list[int]) -> torch.Tensor:
    """A 1 x 1 x 8 x 8 label map holding background and the given classes in separate squares."""
    target = torch.zeros(1, 1, 8, 8)
    for i, c in enumerate(classes):
        target[0, 0, 4 * (i // 2) : 4 * (i // 2) + 2, 4 * (i % 2) : 4 * (i % 2) + 2] = c
    return target


def test_equals_monai_dice_ce_when_every_class_is_present():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.cat([_target([1, 2]), _target([2, 1])])
    ours = PresentClassDiceCELoss(lambda_dice=0.8, lambda_ce=0.2)(logits, target)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)(logits, target)
    assert torch.allclose(ours, monai, atol=1e-6)


def test_an_absent_class_gets_no_dice_penalty_but_keeps_cross_entropy():
    """Sample 0 has no class 2: predicting some class 2 there costs MONAI's Dice term nearly 1 for that
    channel, ours nothing beyond cross-entropy; sample 1 (class 2 present) is scored as usual."""
    target = torch.cat([_target([1]), _target([1, 2])])
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = 2.0
    logits[0, 2, 0, 7] = 5.0  # one voxel of class 2 where there is none
    dice_only = PresentClassDiceCELoss(lambda_dice=1.0, lambda_ce=0.0)
    loss = dice_only(logits, target)
    logits_clean = logits.clone()
    logits_clean[0, 2, 0, 7] = 0.0
    monai = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.0)
    # MONAI counts the absent (sample 0, class 2) pair; ours does not, so the stray voxel barely moves ours
    assert abs(loss - dice_only(logits_clean, target)) < 0.02
    assert monai(logits, target) > loss
    ce_only = PresentClassDiceCELoss(lambda_dice=0.0, lambda_ce=1.0)
    assert ce_only(logits, target) > ce_only(logits_clean, target)  # cross-entropy still sees it
    expected = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    assert torch.allclose(ce_only(logits, target), expected)


def test_without_background_and_bad_weights():
    target = _target([1])
    logits = torch.randn(1, 2, 8, 8)
    no_background = PresentClassDiceCELoss(lambda_ce=0.0, include_background=False)(logits, target)
    soft = torch.softmax(logits, 1)[0, 1]
    truth = (target[0, 0] == 1).float()
    dice = 1 - (2 * (soft * truth).sum() + 1e-5) / (soft.sum() + truth.sum() + 1e-5)
    assert torch.allclose(no_background, dice, atol=1e-6)
    empty = PresentClassDiceCELoss(lambda_ce=0.0, include_background=False)(logits, torch.zeros(1, 1, 8, 8))
    assert empty == 0  # nothing present: no Dice term at all
    with pytest.raises(ValueError, match="loss weights"):
        PresentClassDiceCELoss(lambda_dice=-1.0)


def test_present_only_false_is_monai_dice_ce():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8), torch.cat([_target([1]), _target([1, 2])])
    ours = PresentClassDiceCELoss(lambda_dice=0.8, lambda_ce=0.2, present_only=False)(logits, target)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)(logits, target)
    assert torch.allclose(ours, monai, atol=1e-6)

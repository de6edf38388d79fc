"""Training losses beyond MONAI's: Dice + cross-entropy with the Dice term counted only where a class is present.

Slices of a volume are not like the 2D tasks' images: most slices hold only some of the classes (a kidney
appears in a third of the abdominal slices that show the liver). MONAI's ``DiceCELoss`` scores every class
on every sample; for a class absent from a slice its soft Dice is ``smooth / (sum(p) + smooth)``, so every
voxel predicted there costs nearly the full Dice loss and the small organs learn to vanish. MONAI's
``DiceLoss`` has no switch to skip empty target channels (``DiceMetric`` has ``ignore_empty``), hence this
small wrapper: the Dice term of a (sample, class) pair counts only when the class is in that sample's target,
and cross-entropy, over every voxel, still teaches where a class is not.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from monai.networks import one_hot


class PresentClassDiceCELoss(torch.nn.Module):
    """``lambda_dice`` x mean soft Dice over the (sample, class) pairs whose target holds the class
    + ``lambda_ce`` x cross-entropy. Inputs as ``DiceCELoss(to_onehot_y=True, softmax=True)``:
    logits ``(B, C, ...)`` and a label map ``(B, 1, ...)``.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        include_background: whether channel 0 takes part in the Dice term.
        present_only: False counts every (sample, class) pair, as ``DiceCELoss`` does (the switch for an
            ablation).
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = True,
        present_only: bool = True,
    ) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"loss weights must be >= 0, got lambda_dice={lambda_dice}, lambda_ce={lambda_ce}")
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce
        self.first = 0 if include_background else 1
        self.present_only = present_only
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, reduction="none")
        self.cross_entropy = torch.nn.CrossEntropyLoss()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(input, target).reshape(input.shape[0], input.shape[1])[:, self.first :]
        present = one_hot(target, input.shape[1]).flatten(2).amax(2)[:, self.first :] > 0
        if not self.present_only:
            present = torch.ones_like(present)
        dice_term = (dice * present).sum() / present.sum().clamp_min(1)
        ce = self.cross_entropy(input, target[:, 0].long())
        return self.lambda_dice * dice_term + self.lambda_ce * ce

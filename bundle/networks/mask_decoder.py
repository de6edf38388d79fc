"""SAM's mask decoder with the two changes prompt-free semantic segmentation needs.

1. ``segment_anything.modeling.MaskDecoder.predict_masks`` repeats the image embedding once per
   prompt (``repeat_interleave``), assuming one image and many prompts. BLO-SAM has one prompt per
   image, so a batch of B images would become B*B. Here the repeat only happens when the batch
   sizes differ.
2. One output per foreground class: the first ``num_outputs`` mask tokens are used (token 0 is
   SAM's single-mask output), and only their hypernetwork heads run (the others would never
   receive a gradient, so they are neither trained nor counted). SAM has 4 mask tokens; more
   outputs are made by copying token/head 0.

The parameters and their names are exactly those of the upstream class, so SAM checkpoints load
with ``strict=True``.
"""

from __future__ import annotations

import copy

import torch
from segment_anything.modeling import MaskDecoder
from torch import Tensor, nn


class SemanticMaskDecoder(MaskDecoder):
    """A :class:`segment_anything.modeling.MaskDecoder` returning ``num_outputs`` class logits."""

    num_outputs: int = 1

    def set_num_outputs(self, num_outputs: int) -> None:
        """Use ``num_outputs`` mask tokens (adding copies of token 0 and its head if SAM has too few)."""
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}.")
        extra = num_outputs - self.num_mask_tokens
        if extra > 0:
            old = self.mask_tokens.weight.data
            self.mask_tokens = nn.Embedding(num_outputs, old.shape[1])
            self.mask_tokens.weight.data.copy_(torch.cat([old, old[:1].repeat(extra, 1)]))
            for _ in range(extra):
                self.output_hypernetworks_mlps.append(copy.deepcopy(self.output_hypernetworks_mlps[0]))
            self.num_mask_tokens = num_outputs
        self.num_outputs = num_outputs

    def used_heads(self) -> nn.ModuleList:
        """The hypernetwork heads that produce the outputs (the only ones that get gradients)."""
        return self.output_hypernetworks_mlps[: self.num_outputs]

    def predict_logits(
        self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt: Tensor, dense_prompt: Tensor
    ) -> Tensor:
        """Low-resolution logits.

        Args:
            image_embeddings: B x C x h x w.
            image_pe: 1 x C x h x w positional encoding.
            sparse_prompt: B x N_prompt x C (N_prompt may be 0).
            dense_prompt: B x C x h x w (or broadcastable).

        Returns:
            B x num_outputs x 4h x 4w logits.
        """
        batch = sparse_prompt.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt], dim=1)
        src = image_embeddings
        if src.shape[0] != batch:  # upstream behaviour: one image, several prompts
            src = torch.repeat_interleave(src, batch // src.shape[0], dim=0)
        src = src + dense_prompt
        pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)  # hs: B x N_tokens x C, src: B x hw x C
        mask_tokens_out = hs[:, 1 : 1 + self.num_outputs, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # B x C/8 x 4h x 4w
        hyper_in = torch.stack([head(mask_tokens_out[:, i, :]) for i, head in enumerate(self.used_heads())], 1)
        b, c, h, w = upscaled.shape
        return (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)

"""LoRA wrappers: initial identity, merge, and name-based injection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bundle.networks.lora import LoRALinear, apply_lora, lora_modules


def test_lora_starts_as_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    lora = LoRALinear(base, rank=2, alpha=4)
    x = torch.randn(5, 8)
    assert torch.equal(lora(x), base(x))  # B = 0 at start
    nn.init.normal_(lora.lora_b.weight)
    merged = nn.functional.linear(x, lora.merged_weight(), base.bias)
    torch.testing.assert_close(lora(x), merged)
    assert not base.weight.requires_grad and lora.lora_a.weight.requires_grad


def test_apply_lora_wraps_q_and_v_by_name_only():
    block = nn.Module()
    block.attn = nn.Module()
    block.attn.q_proj, block.attn.k_proj, block.attn.v_proj = (nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    names = apply_lora(block, rank=2)
    assert names == ["attn.q_proj", "attn.v_proj"]
    assert isinstance(block.attn.k_proj, nn.Linear) and len(lora_modules(block)) == 2


def test_apply_lora_without_targets_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)))

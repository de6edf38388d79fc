"""Low-rank adapters (LoRA) for the ``nn.Linear`` projections of SAM's mask decoder.

Written here rather than taken from ``peft`` because ``peft`` targets Hugging Face models and would
add a heavy dependency for about thirty lines; the design follows ``peft``'s ``LoraLayer``: the
base layer is kept frozen inside the wrapper, ``lora_b`` starts at zero so the wrapped model
initially computes exactly what the pretrained one did.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class LoRALinear(nn.Module):
    """``y = base(x) + scaling * B(A(x))`` with a frozen ``base`` and a trainable rank-``r`` update.

    Args:
        base: the pretrained linear layer; its parameters are frozen.
        rank: rank ``r`` of the update.
        alpha: LoRA scaling numerator; ``scaling = alpha / rank`` (``alpha=None`` means ``rank``).
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scaling = (rank if alpha is None else alpha) / rank
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x)) * self.scaling

    def merged_weight(self) -> Tensor:
        """The single weight matrix equal to base + scaled update (for export in SAM's own format)."""
        return self.base.weight + (self.lora_b.weight @ self.lora_a.weight) * self.scaling


def apply_lora(
    module: nn.Module, rank: int = 4, alpha: float | None = None, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> list[str]:
    """Replace every ``nn.Linear`` child whose attribute name is in ``targets`` by a :class:`LoRALinear`.

    Modules are found by name, never by editing the upstream classes, so any SAM-family decoder works.

    Returns:
        the qualified names of the wrapped layers (relative to ``module``).
    """
    wrapped: list[str] = []
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, rank=rank, alpha=alpha))
                wrapped.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not wrapped:
        raise ValueError(f"apply_lora found no nn.Linear named {targets} in {type(module).__name__}.")
    return wrapped


def lora_modules(module: nn.Module) -> list[LoRALinear]:
    """All LoRA wrappers inside ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, LoRALinear)]

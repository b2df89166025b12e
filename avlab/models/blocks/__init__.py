"""Building blocks shared by several tasks' models (attention, heads, activations)."""

from __future__ import annotations

from torch import nn

from avlab.models.blocks.activations import make_activation
from avlab.models.blocks.attention import (
    BidirectionalCrossAttention,
    CrossModalAttention,
    JointCrossAttention,
    SelfAttention,
)
from avlab.models.blocks.heads import MLPHead

__all__ = [
    "BidirectionalCrossAttention",
    "CrossModalAttention",
    "JointCrossAttention",
    "MLPHead",
    "SelfAttention",
    "count_trainable_parameters",
    "make_activation",
]


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad`` (shared tensors counted once)."""
    # Module.parameters() already de-duplicates shared tensors, so tied weights count once.
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

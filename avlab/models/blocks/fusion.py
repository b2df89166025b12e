"""Early and late audio-visual fusion helpers (Attend-Fusion Fig. 2(c–h), Fig. 3).

* **Early fusion** joins the modalities before the main network: feature concatenation of the
  inputs (:func:`early_fusion`), or — for attention models — a sequence with one token per
  modality (:func:`stack_tokens`) that a self-attention layer mixes from its first layer on.
* **Late fusion** runs one branch per modality and joins their outputs
  (:class:`LateFusion`, concatenation along the feature axis).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LateFusion", "early_fusion", "stack_tokens"]


def early_fusion(*features: Tensor) -> Tensor:
    """Concatenate per-modality feature vectors ``[B, d_i]`` into ``[B, Σ d_i]``."""
    return torch.cat(features, dim=-1)


def stack_tokens(*features: Tensor) -> Tensor:
    """Stack per-modality vectors ``[B, d]`` (same width) into a token sequence ``[B, n, d]``."""
    return torch.stack(features, dim=1)


class LateFusion(nn.Module):
    """Apply one branch per modality and concatenate their outputs.

    Args:
        branches: the per-modality networks, in the order their inputs are passed to
            :meth:`forward`.
    """

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        if not branches:
            raise ValueError("LateFusion needs at least one branch")
        self.branches = nn.ModuleList(branches)

    def forward(self, *inputs: Tensor) -> Tensor:
        """``branch_i(inputs[i])`` for each modality, concatenated along the last axis."""
        if len(inputs) != len(self.branches):
            raise ValueError(f"LateFusion: {len(self.branches)} branches but {len(inputs)} inputs")
        return torch.cat([b(x) for b, x in zip(self.branches, inputs)], dim=-1)

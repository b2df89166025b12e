"""Context gating, eqs. (2)–(3) of Attend-Fusion (after Miech et al. 2017; Ong et al. 2018).

* :class:`ContextGating` — eq. (2) as a re-weighting: ``g = σ(W_g x + b_g)``, ``y = g ⊙ x``.
* :class:`GatedResidualBlock` — eq. (3): ``y = g ⊙ F(x) + (1 − g) ⊙ x``, the gate choosing per
  feature between the residual mapping and the identity.
* :func:`gated_logits` — class-level gating of a classifier's probabilities, ``σ(g) ⊙ σ(z)``,
  returned as logits so that training can keep using BCE-with-logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avlab.models.blocks.residual import fc_layer

__all__ = ["ContextGating", "GatedResidualBlock", "gated_logits"]


class ContextGating(nn.Module):
    """``y = σ(W_g c + b_g) ⊙ x`` (eq. 2), where the context ``c`` defaults to ``x`` itself.

    Args:
        dim: width of ``x`` (and of the gate).
        context_dim: width of the context the gate is computed from (default ``dim``).
    """

    def __init__(self, dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.gate = nn.Linear(context_dim or dim, dim)  # W_g, b_g

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Gate ``x`` by ``σ(W_g · context + b_g)``."""
        return torch.sigmoid(self.gate(x if context is None else context)) * x


class GatedResidualBlock(nn.Module):
    """``g = σ(W_g x + b_g)`` (eq. 2); ``y = g ⊙ F(x) + (1 − g) ⊙ x`` (eq. 3).

    ``F`` is ``depth`` × (``Linear(dim, dim) → ReLU → Dropout``). With ``depth=1`` the block has
    the size of two FC layers (one for ``F``, one for the gate), which is what makes the paper's
    FCRGN Early (175M) the same size as FCRN Early.
    """

    def __init__(self, dim: int, depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"GatedResidualBlock: depth must be ≥ 1, found {depth}")
        self.dim = dim
        self.residual = nn.Sequential(*(fc_layer(dim, dim, dropout) for _ in range(depth)))
        self.gate = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., dim] → [..., dim]``."""
        g = torch.sigmoid(self.gate(x))  # eq. (2)
        return g * self.residual(x) + (1 - g) * x  # eq. (3)


def gated_logits(logits: Tensor, gate_logits: Tensor) -> Tensor:
    """Logits of ``σ(gate_logits) · σ(logits)``, computed stably in log space.

    ``log p = logσ(g) + logσ(z)``; ``logit(p) = log p − log(1 − p)`` with ``log(1 − e^{log p})``
    evaluated by the usual two-branch ``log1mexp`` so that neither branch loses precision.
    """
    log_p = F.logsigmoid(gate_logits) + F.logsigmoid(logits)
    log_1mp = torch.where(
        log_p > -0.6931471805599453, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p))
    )
    return log_p - log_1mp

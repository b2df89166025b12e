"""Residual fully connected block, eq. (1) of Attend-Fusion (after He et al. 2016; Ong et al. 2018).

``y = F(x, {W_i}) + x`` where the residual mapping ``F`` is ``depth`` fully connected layers of
the input's width, each ``Linear → ReLU → Dropout``. The skip connection adds no parameters,
which is why the paper's FC and FC-Residual late-fusion models have the same size (341M).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ResidualBlock", "fc_layer"]


def fc_layer(in_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear → ReLU → Dropout``: the hidden layer used throughout the YouTube-8M models."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``y = F(x) + x`` (eq. 1), ``F`` = ``depth`` × (``Linear(dim, dim) → ReLU → Dropout``).

    Args:
        dim: feature width (input = output, so the identity skip needs no projection).
        depth: number of FC layers in the residual mapping ``F`` (He et al. use 2).
        dropout: dropout after each FC layer of ``F``.
    """

    def __init__(self, dim: int, depth: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"ResidualBlock: depth must be ≥ 1, found {depth}")
        self.dim = dim
        self.residual = nn.Sequential(*(fc_layer(dim, dim, dropout) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        """``[..., dim] → [..., dim]``."""
        return self.residual(x) + x  # eq. (1)

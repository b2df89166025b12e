"""Attention models with FC fusion layers (Fig. 3a–c, §3.2.1–3.2.2), "2K" wide.

=============================== =============================================================
FC Attention                    per modality ``in → d`` + self-attention; concat; FC ``2d→2d``;
                                ``2d → C``
Residual Attention Early        tokens ``[a→d, v→d]``; 2 × (joint self-attention over both
                                tokens + residual block); mean over tokens; ``d → C``
Residual Attention Late         as FC Attention with the fused FC layer made residual (eq. 1)
=============================== =============================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avlab.models.blocks.residual import ResidualBlock, fc_layer
from avlab.models.yt8m.base import AttentionModel, classifier_head

__all__ = ["FCAttention", "ResidualAttentionEarlyFusion", "ResidualAttentionLateFusion"]


class FCAttention(AttentionModel):
    """FC Attention Network (Fig. 3a, §3.2.1).

    Self-attention per modality (eqs. 4–5); concat; FC ``2d → 2d``; ``2d → C``.
    """

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 2048,
        dropout: float = 0.4,
        num_heads: int = 8,
        ffn_dim: int | None = None,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, hidden, dropout, num_heads, ffn_dim)
        self.self_v, self.self_a = self.attention_block(), self.attention_block()
        self.fc = fc_layer(2 * hidden, 2 * hidden, dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self.tokens(rgb, audio)
        fused = torch.cat([self.self_v(v), self.self_a(a)], dim=-1).squeeze(1)  # eqs. (4)–(5) per modality
        return self.head(self.fc(fused))


class ResidualAttentionEarlyFusion(AttentionModel):
    """Residual Attention Early Fusion (Fig. 3b, §3.2.2).

    Both modalities enter one token sequence ``[v, a]`` (early fusion); ``num_layers`` × (joint
    self-attention over the two tokens — here the attention weights are non-trivial — followed
    by a residual FC block, eq. 1); mean over tokens; ``d → C``.
    """

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 2048,
        dropout: float = 0.4,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        num_layers: int = 2,
        residual_depth: int = 2,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, hidden, dropout, num_heads, ffn_dim)
        self.attn = nn.ModuleList(self.attention_block() for _ in range(num_layers))
        self.res = nn.ModuleList(ResidualBlock(hidden, residual_depth, dropout) for _ in range(num_layers))
        self.head = classifier_head(hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self.tokens(rgb, audio)
        x = torch.cat([v, a], dim=1)  # [B, 2, d]: early fusion as a two-token sequence
        for attn, res in zip(self.attn, self.res):
            x = res(attn(x))
        return self.head(x.mean(dim=1))


class ResidualAttentionLateFusion(AttentionModel):
    """Residual Attention Late Fusion (Fig. 3c).

    As :class:`FCAttention`, with the fused FC layer made residual (eq. 1).
    """

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 2048,
        dropout: float = 0.4,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        residual_depth: int = 1,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, hidden, dropout, num_heads, ffn_dim)
        self.self_v, self.self_a = self.attention_block(), self.attention_block()
        self.res = ResidualBlock(2 * hidden, residual_depth, dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self.tokens(rgb, audio)
        fused = torch.cat([self.self_v(v), self.self_a(a)], dim=-1).squeeze(1)
        return self.head(self.res(fused))

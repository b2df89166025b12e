"""Models with cross-modal attention (Fig. 3e–g, §3.2.4–3.2.6, eqs. 6–9), "2K" wide.

=============================== =============================================================
Audio-Visual Attention          self-attention per modality, then cross-modal attention
                                ``X_{v|a}``, ``X_{a|v}`` (eqs. 6–9); the four features
                                ``[X_a, X_v, X_{v|a}, X_{a|v}]`` joined as tokens, averaged; ``d → C``
Self and Cross Modal Attention  self → cross-modal → self attention per stream; concat; ``2d → C``
Self-Attended Cross-Modal FCRN  self → cross-modal attention; concat; 3 residual blocks (eq. 1)
                                of width ``2d``; ``2d → C``
=============================== =============================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avlab.models.blocks.residual import ResidualBlock
from avlab.models.yt8m.base import AttentionModel, classifier_head

__all__ = ["AudioVisualAttention", "SelfAttendedCrossModalFCRN", "SelfCrossModalAttention"]


class AudioVisualAttention(AttentionModel):
    """Audio-Visual Attention Network (Fig. 3e, §3.2.4).

    ``X_a, X_v`` = self-attended projections; ``X_{v|a}`` = cross-attention with queries from
    ``X_a`` and keys/values from ``X_v`` (eqs. 6–7); ``X_{a|v}`` with queries from ``X_v`` and
    keys/values from ``X_a`` (eqs. 8–9). The four are concatenated as a token sequence and
    averaged, then ``d → C``.
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
        self.cross_v_given_a, self.cross_a_given_v = (
            self.attention_block(cross=True),
            self.attention_block(cross=True),
        )
        self.head = classifier_head(hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self.tokens(rgb, audio)
        x_v, x_a = self.self_v(v), self.self_a(a)
        x_v_a = self.cross_v_given_a(x_a, x_v)  # eqs. (6)–(7): Q from audio, K/V from visual
        x_a_v = self.cross_a_given_v(x_v, x_a)  # eqs. (8)–(9): Q from visual, K/V from audio
        tokens = torch.cat([x_a, x_v, x_v_a, x_a_v], dim=1)  # [B, 4, d]
        return self.head(tokens.mean(dim=1))


class SelfCrossModalAttention(AttentionModel):
    """Self and Cross Modal Attention Network (Fig. 3f, §3.2.5).

    Self → cross-modal (eqs. 6–9) → self attention per stream; concat; ``2d → C``.
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
        self.cross_v_given_a, self.cross_a_given_v = (
            self.attention_block(cross=True),
            self.attention_block(cross=True),
        )
        self.post_v, self.post_a = self.attention_block(), self.attention_block()
        self.head = classifier_head(2 * hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self.tokens(rgb, audio)
        x_v, x_a = self.self_v(v), self.self_a(a)
        x_v_a = self.post_v(self.cross_v_given_a(x_a, x_v))  # refine X_{v|a} by self-attention
        x_a_v = self.post_a(self.cross_a_given_v(x_v, x_a))  # refine X_{a|v}
        return self.head(torch.cat([x_v_a, x_a_v], dim=-1).squeeze(1))


class SelfAttendedCrossModalFCRN(AttentionModel):
    """Self-Attended Cross-Modal FCRN (Fig. 3g, §3.2.6).

    Self → cross-modal attention; concat; residual FC blocks (eq. 1); ``2d → C``.
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
        num_residual: int = 3,
        residual_depth: int = 1,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, hidden, dropout, num_heads, ffn_dim)
        self.self_v, self.self_a = self.attention_block(), self.attention_block()
        self.cross_v_given_a, self.cross_a_given_v = (
            self.attention_block(cross=True),
            self.attention_block(cross=True),
        )
        self.res = nn.Sequential(
            *(ResidualBlock(2 * hidden, residual_depth, dropout) for _ in range(num_residual))
        )
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self.tokens(rgb, audio)
        x_v, x_a = self.self_v(v), self.self_a(a)  # self-attended features feed the cross-modal attention
        fused = torch.cat([self.cross_v_given_a(x_a, x_v), self.cross_a_given_v(x_v, x_a)], dim=-1).squeeze(1)
        return self.head(self.res(fused))

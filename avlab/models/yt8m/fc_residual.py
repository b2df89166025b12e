"""Residual and gated-residual FC baselines of Attend-Fusion (Fig. 2e–h, eqs. 1–3), "8K" wide.

=============================== =============================================================
FC Residual Early               ``[a; v] → H``, residual block (eq. 1, 2 FC), ``H → C``
FC Residual Late                per modality ``in → H`` + residual block (eq. 1, 2 FC); ``2H → C``
FC Residual Gated Early         ``[a; v] → H``, gated residual block (eqs. 2–3), ``H → C``
FC Residual Gated Late          per modality ``in → H`` + gated residual block; concat; ``2H → C``
                                with a class-level context gate computed from the fused vector
=============================== =============================================================

The residual and gated blocks are the shared ones of :mod:`avlab.models.blocks.residual` and
:mod:`avlab.models.blocks.gating`.
"""

from __future__ import annotations

from torch import Tensor, nn

from avlab.models.blocks.fusion import LateFusion, early_fusion
from avlab.models.blocks.gating import GatedResidualBlock, gated_logits
from avlab.models.blocks.residual import ResidualBlock, fc_layer
from avlab.models.yt8m.base import YT8MModel

__all__ = [
    "FCResidualEarlyFusion",
    "FCResidualGatedEarlyFusion",
    "FCResidualGatedLateFusion",
    "FCResidualLateFusion",
]


class FCResidualEarlyFusion(YT8MModel):
    """FC Residual Early Fusion (Fig. 2e): ``[rgb; audio] → H``, residual block (eq. 1), ``H → C``."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
        residual_depth: int = 2,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.body = nn.Sequential(
            fc_layer(visual_dim + audio_dim, hidden, dropout), ResidualBlock(hidden, residual_depth, dropout)
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.body(early_fusion(rgb, audio)))


class FCResidualLateFusion(YT8MModel):
    """FC Residual Late Fusion (Fig. 2f): per modality ``in → H`` + residual block (eq. 1); ``2H → C``."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
        residual_depth: int = 2,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)

        def branch(in_dim: int) -> nn.Module:
            return nn.Sequential(
                fc_layer(in_dim, hidden, dropout), ResidualBlock(hidden, residual_depth, dropout)
            )

        self.fusion = LateFusion(branch(visual_dim), branch(audio_dim))
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.fusion(rgb, audio))


class FCResidualGatedEarlyFusion(YT8MModel):
    """FC Residual Gated Early Fusion (Fig. 2g).

    ``[rgb; audio] → H``, gated residual block (eqs. 2–3), ``H → C``.
    """

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.body = nn.Sequential(
            fc_layer(visual_dim + audio_dim, hidden, dropout), GatedResidualBlock(hidden, 1, dropout)
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.body(early_fusion(rgb, audio)))


class FCResidualGatedLateFusion(YT8MModel):
    """FC Residual Gated Late Fusion (Fig. 2h).

    Per modality ``in → H`` + gated residual block (eqs. 2–3); concat ``2H``; classifier
    ``2H → C`` whose probabilities are gated per class by ``σ(W_g [h_v; h_a] + b_g)`` (context
    gating on the output, as in Miech et al.'s video-level models). The paper does not describe
    the gate; this one is avlab's guess, chosen because it reproduces the paper's 416M (it adds
    one ``2H → C`` layer to FC Late Fusion's 341M, where one ``H × H`` gate would give 405M); set
    ``class_gate=False`` for the plain variant (the size of FC Late Fusion).
    """

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
        class_gate: bool = True,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)

        def branch(in_dim: int) -> nn.Module:
            return nn.Sequential(fc_layer(in_dim, hidden, dropout), GatedResidualBlock(hidden, 1, dropout))

        self.fusion = LateFusion(branch(visual_dim), branch(audio_dim))
        self.head = nn.Linear(2 * hidden, num_classes)
        self.class_gate = nn.Linear(2 * hidden, num_classes) if class_gate else None

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        fused = self.fusion(rgb, audio)
        logits = self.head(fused)
        if self.class_gate is None:
            return logits
        # σ(W_g f + b_g) ⊙ σ(z): eq. (2) applied at the class level
        return gated_logits(logits, self.class_gate(fused))

"""FC baselines of Attend-Fusion (Fig. 2a–d): stacks of fully connected layers, "8K" wide.

=============================== =============================================================
FC Audio / FC Visual            ``in → H → H → C`` (3 FC layers)
FC Early Fusion                 ``[a; v] → H → H → C``
FC Late Fusion                  per modality ``in → H → H → H``, concat ``2H → C``
=============================== =============================================================

``H`` = ``hidden`` (the paper's "8K"; 8000 reproduces its parameter counts).
"""

from __future__ import annotations

from torch import Tensor, nn

from avlab.models.blocks.fusion import LateFusion, early_fusion
from avlab.models.yt8m.base import YT8MModel, mlp

__all__ = ["FCAudio", "FCEarlyFusion", "FCLateFusion", "FCVisual"]


class FCAudio(YT8MModel):
    """FC Audio (Fig. 2a): ``audio → H → H → C``; ignores the visual input."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.body = mlp(audio_dim, hidden, 2, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.body(audio))


class FCVisual(YT8MModel):
    """FC Visual (Fig. 2b): ``rgb → H → H → C``; ignores the audio input."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.body = mlp(visual_dim, hidden, 2, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.body(rgb))


class FCEarlyFusion(YT8MModel):
    """FC Early Fusion (Fig. 2c): ``[rgb; audio] → H → H → C``."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.body = mlp(visual_dim + audio_dim, hidden, 2, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.body(early_fusion(rgb, audio)))


class FCLateFusion(YT8MModel):
    """FC Late Fusion (Fig. 2d): per modality ``in → H → H → H``; concat; ``2H → C``."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.fusion = LateFusion(mlp(visual_dim, hidden, 3, dropout), mlp(audio_dim, hidden, 3, dropout))
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        return self.head(self.fusion(rgb, audio))

"""Attend-Fusion (Fig. 3d, §3.2.3), the paper's proposed model, and its ablations (Table 3).

Per modality: FC ``in → d`` and a self-attention layer (eqs. 4–5); late fusion by concatenation;
classifier ``(n·d) → C``. The ablations drop one modality (audio only / visual only) or the
attention layers (no attention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from avlab.models.yt8m.base import AttentionModel, classifier_head

__all__ = ["AttendFusion"]


class AttendFusion(AttentionModel):
    """Attend-Fusion (Fig. 3d, §3.2.3) and its ablations (Table 3).

    Per modality: FC ``in → d`` and a self-attention block (eqs. 4–5); late fusion by
    concatenation; classifier ``(n·d) → C``.

    Args:
        modalities: ``("visual", "audio")`` (default), or one of them for the audio-only /
            visual-only ablations.
        attention: ``False`` for the no-attention ablation.
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
        modalities: Sequence[str] = ("visual", "audio"),
        attention: bool = True,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, hidden, dropout, num_heads, ffn_dim)
        mods = tuple(modalities)
        unknown = [m for m in mods if m not in ("visual", "audio")]
        if not mods or unknown or len(set(mods)) != len(mods):
            raise ValueError(
                "AttendFusion: modalities must be a non-empty subset of ['visual', 'audio'], "
                f"found {list(mods)}"
            )
        self.modalities, self.attention = mods, bool(attention)
        if "visual" not in mods:
            del self.proj_v
        if "audio" not in mods:
            del self.proj_a
        self.attn = nn.ModuleDict({m: self.attention_block() for m in mods}) if attention else None
        self.head = classifier_head(len(mods) * hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        feats = []
        for m in self.modalities:
            x = (self.proj_v(rgb) if m == "visual" else self.proj_a(audio)).unsqueeze(1)
            if self.attn is not None:
                x = self.attn[m](x)  # eqs. (4)–(5)
            feats.append(x.squeeze(1))
        return self.head(torch.cat(feats, dim=-1))  # late fusion

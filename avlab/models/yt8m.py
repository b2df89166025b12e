"""The Attend-Fusion paper's YouTube-8M models (Awan et al., arXiv 2408.14441), 15 + 3 ablations.

Every model maps video-level features to class logits: ``forward(rgb [B, d_v], audio [B, d_a])
-> [B, C]`` (apply a sigmoid for probabilities). ``d_v, d_a`` are 1024/128 for mean features
(MF) and 2048/256 for MF+STD.

Baselines (Fig. 2; "8K" FC width ``hidden``, default 8000):

=============================== =============================================================
FC Audio / FC Visual            ``in → H → H → C`` (3 FC layers)
FC Early Fusion                 ``[a; v] → H → H → C``
FC Late Fusion                  per modality ``in → H → H → H``, concat ``2H → C``
FC Residual Early               ``[a; v] → H``, residual block (eq. 1, 2 FC), ``H → C``
FC Residual Late                per modality ``in → H`` + residual block (eq. 1, 2 FC); ``2H → C``
FC Residual Gated Early         ``[a; v] → H``, gated residual block (eqs. 2–3), ``H → C``
FC Residual Gated Late          per modality ``in → H`` + gated residual block; concat; ``2H → C``
                                with a class-level context gate computed from the fused vector
=============================== =============================================================

Proposed models (Fig. 3; "2K" width ``hidden``, default 2048). The attention block is a
post-norm transformer layer — multi-head attention (eqs. 4–5 for self, 6–9 for cross-modal
attention) and a 2-layer feed-forward network, each with a residual connection and LayerNorm.
At width 2048 it has 25.19M parameters, the size the reference notes infer from Table 1.

=============================== =============================================================
FC Attention                    per modality ``in → d`` + self-attention; concat; FC ``2d→2d``;
                                ``2d → C``
Residual Attention Early        tokens ``[a→d, v→d]``; 2 × (joint self-attention over both
                                tokens + residual block); mean over tokens; ``d → C``
Residual Attention Late         as FC Attention with the fused FC layer made residual (eq. 1)
Attend-Fusion                   per modality ``in → d`` + self-attention; concat; ``2d → C``
Audio-Visual Attention          self-attention per modality, then cross-modal attention
                                ``X_{v|a}``, ``X_{a|v}`` (eqs. 6–9); the four features
                                ``[X_a, X_v, X_{v|a}, X_{a|v}]`` joined as tokens, averaged; ``d → C``
Self and Cross Modal Attention  self → cross-modal → self attention per stream; concat; ``2d → C``
Self-Attended Cross-Modal FCRN  self → cross-modal attention; concat; 3 residual blocks (eq. 1)
                                of width ``2d``; ``2d → C``
Attend-Fusion ablations         audio only / visual only (one branch, ``d → C``) / no attention
=============================== =============================================================

Attention over video-level features: each modality is **one token** (the paper's inputs are
video-level vectors), so inside a single modality's self-attention, and in cross-modal attention
with one key, the softmax of eqs. 5/7/9 is over a single key and equals 1: the block reduces to
its value/output projections, residual paths and feed-forward layers. Only the models that put
several tokens in one sequence (Residual Attention Early; the token averaging in AV Attention
is a pooling, not attention) have non-trivial attention weights. This follows the paper's
description and parameter counts; it is stated here so nobody reads more into "attention".

Parameter counts: :func:`parameter_table` instantiates every model on the ``meta`` device
(no memory) under the reference notes' inferred setup — mean-only 128/1024 inputs, ``8K`` =
8000, ``2K`` = 2048, 4716 classes — and compares with Table 1. Run
``python -m avlab.models.yt8m`` to print it. Models the notes mark matchable are within ±2%;
the remaining designs (the paper does not pin them down) are reported with their deviation.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from avlab.models.blocks.attention import CrossModalAttention, SelfAttention
from avlab.models.blocks.fusion import LateFusion, early_fusion, stack_tokens
from avlab.models.blocks.gating import GatedResidualBlock, gated_logits
from avlab.models.blocks.residual import ResidualBlock, fc_layer

try:  # shared helper (owned by the blocks package); a local fallback keeps this module standalone
    from avlab.models.blocks import count_trainable_parameters
except ImportError:  # pragma: no cover

    def count_trainable_parameters(module: nn.Module) -> int:
        """Number of scalar parameters with ``requires_grad`` (shared tensors counted once)."""
        return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "MATCHABLE",
    "MODELS",
    "PAPER_PARAMS_M",
    "AttendFusion",
    "AttentionBlock",
    "AudioVisualAttention",
    "FCAttention",
    "FCAudio",
    "FCEarlyFusion",
    "FCLateFusion",
    "FCResidualEarlyFusion",
    "FCResidualGatedEarlyFusion",
    "FCResidualGatedLateFusion",
    "FCResidualLateFusion",
    "FCVisual",
    "ResidualAttentionEarlyFusion",
    "ResidualAttentionLateFusion",
    "SelfAttendedCrossModalFCRN",
    "SelfCrossModalAttention",
    "YT8MModel",
    "build_model",
    "count_trainable_parameters",
    "parameter_table",
]


# ------------------------------------------------------------------------------- shared parts
class YT8MModel(nn.Module):
    """Base class: input widths, class count and an input check with an actionable message."""

    def __init__(self, visual_dim: int, audio_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        for name, value in (("visual_dim", visual_dim), ("audio_dim", audio_dim), ("num_classes", num_classes)):
            if int(value) < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be positive, found {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), found {dropout}")
        self.visual_dim, self.audio_dim, self.num_classes = int(visual_dim), int(audio_dim), int(num_classes)
        self.dropout = float(dropout)

    def _check(self, rgb: Tensor, audio: Tensor) -> None:
        for name, x, want, key in (("visual", rgb, self.visual_dim, "visual_dim"), ("audio", audio, self.audio_dim, "audio_dim")):
            if x.dim() != 2 or x.shape[1] != want:
                raise ValueError(
                    f"{type(self).__name__}: expected {name} features [B, {want}], found {list(x.shape)}. "
                    f"Set model.net.{key} to match data.features (mf: 1024/128, mf_std: 2048/256)."
                )

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _mlp(in_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` hidden FC layers: ``in → hidden → … → hidden`` (Linear → ReLU → Dropout)."""
    return nn.Sequential(*(fc_layer(in_dim if i == 0 else hidden, hidden, dropout) for i in range(layers)))


def _head(in_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Classifier: dropout on the features, then ``Linear(in_dim, C)`` (logits)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes)) if dropout > 0 else nn.Sequential(nn.Linear(in_dim, num_classes))


class AttentionBlock(nn.Module):
    """Post-norm transformer layer over token sequences ``[B, N, dim]``.

    ``x ← LN(x + Attn(x, ctx))`` then ``x ← LN(x + FFN(x))``, with ``FFN = Linear(dim, ffn) →
    ReLU → Dropout → Linear(ffn, dim)``. ``Attn`` is self-attention (eqs. 4–5) when called with
    one argument and cross-modal attention (eqs. 6–9: queries from ``x``, keys/values from
    ``ctx``) with two. The attention itself is the shared :class:`SelfAttention` /
    :class:`CrossModalAttention` from ``avlab.models.blocks``; the feed-forward half is kept here
    because it is specific to these models (it is what makes the block 25.19M at width 2048, the
    size that reproduces Table 1). One instance is either a self- or a cross-attention block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.cross = cross
        if cross:
            self.attn: nn.Module = CrossModalAttention(dim, dim, num_heads, dropout=dropout, residual=True, norm=True)
        else:
            self.attn = SelfAttention(dim, num_heads, dropout=dropout, residual=True, norm=True)
        ffn_dim = ffn_dim or dim
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x`` ``[B, N, dim]`` (queries); ``context`` ``[B, M, dim]`` for cross-attention."""
        if self.cross:
            if context is None:
                raise ValueError("AttentionBlock(cross=True) needs a context sequence")
            x = self.attn(x, context)
        else:
            x = self.attn(x)
        return self.norm(x + self.drop(self.ffn(x)))


# ------------------------------------------------------------------------------- baselines
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
        self.body = _mlp(audio_dim, hidden, 2, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
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
        self.body = _mlp(visual_dim, hidden, 2, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
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
        self.body = _mlp(visual_dim + audio_dim, hidden, 2, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
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
        self.fusion = LateFusion(_mlp(visual_dim, hidden, 3, dropout), _mlp(audio_dim, hidden, 3, dropout))
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
        return self.head(self.fusion(rgb, audio))


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
        self.body = nn.Sequential(fc_layer(visual_dim + audio_dim, hidden, dropout), ResidualBlock(hidden, residual_depth, dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
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
            return nn.Sequential(fc_layer(in_dim, hidden, dropout), ResidualBlock(hidden, residual_depth, dropout))

        self.fusion = LateFusion(branch(visual_dim), branch(audio_dim))
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
        return self.head(self.fusion(rgb, audio))


class FCResidualGatedEarlyFusion(YT8MModel):
    """FC Residual Gated Early Fusion (Fig. 2g): ``[rgb; audio] → H``, gated residual block (eqs. 2–3), ``H → C``."""

    def __init__(
        self,
        visual_dim: int = 1024,
        audio_dim: int = 128,
        num_classes: int = 3862,
        hidden: int = 8000,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.body = nn.Sequential(fc_layer(visual_dim + audio_dim, hidden, dropout), GatedResidualBlock(hidden, 1, dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
        return self.head(self.body(early_fusion(rgb, audio)))


class FCResidualGatedLateFusion(YT8MModel):
    """FC Residual Gated Late Fusion (Fig. 2h).

    Per modality ``in → H`` + gated residual block (eqs. 2–3); concat ``2H``; classifier
    ``2H → C`` whose probabilities are gated per class by ``σ(W_g [h_v; h_a] + b_g)`` (context
    gating on the output, as in Miech et al.'s video-level models). The class gate is the
    reference notes' guess for the paper's 416M (it adds one ``2H → C`` layer); set
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
        self._check(rgb, audio)
        fused = self.fusion(rgb, audio)
        logits = self.head(fused)
        if self.class_gate is None:
            return logits
        return gated_logits(logits, self.class_gate(fused))  # σ(W_g f + b_g) ⊙ σ(z), eq. (2) at class level


# ------------------------------------------------------------------------------- proposed
class _AttentionModel(YT8MModel):
    """Shared constructor of the proposed models: per-modality projections to width ``hidden``."""

    def __init__(
        self,
        visual_dim: int,
        audio_dim: int,
        num_classes: int,
        hidden: int,
        dropout: float,
        num_heads: int,
        ffn_dim: int | None,
    ) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.hidden, self.num_heads, self.ffn_dim = hidden, num_heads, ffn_dim or hidden
        self.proj_v = fc_layer(visual_dim, hidden, dropout)
        self.proj_a = fc_layer(audio_dim, hidden, dropout)

    def _block(self, cross: bool = False) -> AttentionBlock:
        return AttentionBlock(self.hidden, self.num_heads, self.ffn_dim, self.dropout, cross=cross)

    def _tokens(self, rgb: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Project each modality to ``hidden`` and make it a one-token sequence ``[B, 1, d]``."""
        self._check(rgb, audio)
        return self.proj_v(rgb).unsqueeze(1), self.proj_a(audio).unsqueeze(1)


class FCAttention(_AttentionModel):
    """FC Attention Network (Fig. 3a, §3.2.1): self-attention per modality, concat, FC ``2d → 2d``, ``2d → C``."""

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
        self.self_v, self.self_a = self._block(), self._block()
        self.fc = fc_layer(2 * hidden, 2 * hidden, dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self._tokens(rgb, audio)
        fused = torch.cat([self.self_v(v), self.self_a(a)], dim=-1).squeeze(1)  # eqs. (4)–(5) per modality
        return self.head(self.fc(fused))


class ResidualAttentionEarlyFusion(_AttentionModel):
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
        self.attn = nn.ModuleList(self._block() for _ in range(num_layers))
        self.res = nn.ModuleList(ResidualBlock(hidden, residual_depth, dropout) for _ in range(num_layers))
        self.head = _head(hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self._tokens(rgb, audio)
        x = torch.cat([v, a], dim=1)  # [B, 2, d]: early fusion as a two-token sequence
        for attn, res in zip(self.attn, self.res):
            x = res(attn(x))
        return self.head(x.mean(dim=1))


class ResidualAttentionLateFusion(_AttentionModel):
    """Residual Attention Late Fusion (Fig. 3c): as :class:`FCAttention`, the fused FC layer residual (eq. 1)."""

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
        self.self_v, self.self_a = self._block(), self._block()
        self.res = ResidualBlock(2 * hidden, residual_depth, dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self._tokens(rgb, audio)
        fused = torch.cat([self.self_v(v), self.self_a(a)], dim=-1).squeeze(1)
        return self.head(self.res(fused))


class AttendFusion(_AttentionModel):
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
            raise ValueError(f"AttendFusion: modalities must be a non-empty subset of ['visual', 'audio'], found {list(mods)}")
        self.modalities, self.attention = mods, bool(attention)
        if "visual" not in mods:
            del self.proj_v
        if "audio" not in mods:
            del self.proj_a
        self.attn = nn.ModuleDict({m: self._block() for m in mods}) if attention else None
        self.head = _head(len(mods) * hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self._check(rgb, audio)
        feats = []
        for m in self.modalities:
            x = (self.proj_v(rgb) if m == "visual" else self.proj_a(audio)).unsqueeze(1)
            if self.attn is not None:
                x = self.attn[m](x)  # eqs. (4)–(5)
            feats.append(x.squeeze(1))
        return self.head(torch.cat(feats, dim=-1))  # late fusion


class AudioVisualAttention(_AttentionModel):
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
        self.self_v, self.self_a = self._block(), self._block()
        self.cross_v_given_a, self.cross_a_given_v = self._block(cross=True), self._block(cross=True)
        self.head = _head(hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self._tokens(rgb, audio)
        x_v, x_a = self.self_v(v), self.self_a(a)
        x_v_a = self.cross_v_given_a(x_a, x_v)  # eqs. (6)–(7): Q from audio, K/V from visual
        x_a_v = self.cross_a_given_v(x_v, x_a)  # eqs. (8)–(9): Q from visual, K/V from audio
        tokens = torch.cat([x_a, x_v, x_v_a, x_a_v], dim=1)  # [B, 4, d]
        return self.head(tokens.mean(dim=1))


class SelfCrossModalAttention(_AttentionModel):
    """Self and Cross Modal Attention Network (Fig. 3f, §3.2.5): self → cross (eqs. 6–9) → self, concat, ``2d → C``."""

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
        self.self_v, self.self_a = self._block(), self._block()
        self.cross_v_given_a, self.cross_a_given_v = self._block(cross=True), self._block(cross=True)
        self.post_v, self.post_a = self._block(), self._block()
        self.head = _head(2 * hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self._tokens(rgb, audio)
        x_v, x_a = self.self_v(v), self.self_a(a)
        x_v_a = self.post_v(self.cross_v_given_a(x_a, x_v))  # refine X_{v|a} by self-attention
        x_a_v = self.post_a(self.cross_a_given_v(x_v, x_a))  # refine X_{a|v}
        return self.head(torch.cat([x_v_a, x_a_v], dim=-1).squeeze(1))


class SelfAttendedCrossModalFCRN(_AttentionModel):
    """Self-Attended Cross-Modal FCRN (Fig. 3g, §3.2.6): self → cross attention, concat, residual FC blocks (eq. 1), ``2d → C``."""

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
        self.self_v, self.self_a = self._block(), self._block()
        self.cross_v_given_a, self.cross_a_given_v = self._block(cross=True), self._block(cross=True)
        self.res = nn.Sequential(*(ResidualBlock(2 * hidden, residual_depth, dropout) for _ in range(num_residual)))
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        v, a = self._tokens(rgb, audio)
        x_v, x_a = self.self_v(v), self.self_a(a)  # self-attended features feed the cross-modal attention
        fused = torch.cat([self.cross_v_given_a(x_a, x_v), self.cross_a_given_v(x_v, x_a)], dim=-1).squeeze(1)
        return self.head(self.res(fused))


# ------------------------------------------------------------------------------- registry
#: name → (class, extra constructor arguments); the names are the configs under experiments/yt8m/.
MODELS: dict[str, tuple[type[YT8MModel], dict[str, Any]]] = {
    "fc_audio": (FCAudio, {}),
    "fc_visual": (FCVisual, {}),
    "fc_early_fusion": (FCEarlyFusion, {}),
    "fc_late_fusion": (FCLateFusion, {}),
    "fc_residual_early_fusion": (FCResidualEarlyFusion, {}),
    "fc_residual_late_fusion": (FCResidualLateFusion, {}),
    "fc_residual_gated_early_fusion": (FCResidualGatedEarlyFusion, {}),
    "fc_residual_gated_late_fusion": (FCResidualGatedLateFusion, {}),
    "fc_attention": (FCAttention, {}),
    "residual_attention_early_fusion": (ResidualAttentionEarlyFusion, {}),
    "residual_attention_late_fusion": (ResidualAttentionLateFusion, {}),
    "attend_fusion": (AttendFusion, {}),
    "audio_visual_attention": (AudioVisualAttention, {}),
    "self_cross_modal_attention": (SelfCrossModalAttention, {}),
    "self_attended_cross_modal_fcrn": (SelfAttendedCrossModalFCRN, {}),
    "attend_fusion_audio_only": (AttendFusion, {"modalities": ("audio",)}),
    "attend_fusion_visual_only": (AttendFusion, {"modalities": ("visual",)}),
    "attend_fusion_no_attention": (AttendFusion, {"attention": False}),
}
#: Table 1 / Table 3 of the paper, millions of parameters.
PAPER_PARAMS_M: dict[str, float] = {
    "fc_audio": 103, "fc_visual": 110, "fc_early_fusion": 111, "fc_late_fusion": 341,
    "fc_residual_early_fusion": 175, "fc_residual_late_fusion": 341,
    "fc_residual_gated_early_fusion": 175, "fc_residual_gated_late_fusion": 416,
    "fc_attention": 83, "residual_attention_early_fusion": 79, "residual_attention_late_fusion": 83,
    "attend_fusion": 72, "audio_visual_attention": 113, "self_cross_modal_attention": 172,
    "self_attended_cross_modal_fcrn": 172,
    "attend_fusion_audio_only": 35, "attend_fusion_visual_only": 37, "attend_fusion_no_attention": 22,
}
#: Models whose structure the reference notes (§4) pin down well enough for a ±2% check.
MATCHABLE = (
    "fc_audio", "fc_visual", "fc_early_fusion", "fc_late_fusion", "fc_residual_early_fusion",
    "fc_residual_late_fusion", "fc_residual_gated_early_fusion", "attend_fusion",
    "attend_fusion_audio_only", "attend_fusion_visual_only", "attend_fusion_no_attention",
)
#: The notes' inferred Table-1 setup: mean-only inputs, "8K" = 8000, "2K" = 2048, 2017 vocabulary.
PAPER_SETUP = {"visual_dim": 1024, "audio_dim": 128, "num_classes": 4716, "baseline_hidden": 8000, "proposed_hidden": 2048}
_BASELINES = {n for n in MODELS if n.startswith("fc_") and "attention" not in n}


def build_model(name: str, **kwargs: Any) -> YT8MModel:
    """Instantiate a model by its registry name (``MODELS``), ``kwargs`` overriding defaults."""
    if name not in MODELS:
        from avlab.errors import did_you_mean

        raise ValueError(f"unknown YouTube-8M model {name!r}." + did_you_mean(name, MODELS))
    cls, extra = MODELS[name]
    return cls(**{**extra, **kwargs})


def parameter_table(
    visual_dim: int = PAPER_SETUP["visual_dim"],
    audio_dim: int = PAPER_SETUP["audio_dim"],
    num_classes: int = PAPER_SETUP["num_classes"],
    baseline_hidden: int = PAPER_SETUP["baseline_hidden"],
    proposed_hidden: int = PAPER_SETUP["proposed_hidden"],
) -> list[dict[str, Any]]:
    """Trainable parameters of every model next to the paper's, built on the meta device.

    Returns one row per model: ``name``, ``params``, ``paper_m``, ``deviation`` (relative),
    ``matchable`` (the reference notes' ±2% set).
    """
    rows = []
    for name in MODELS:
        hidden = baseline_hidden if name in _BASELINES else proposed_hidden
        with torch.device("meta"):  # no weights are allocated: 8000×4716 layers cost nothing
            model = build_model(name, visual_dim=visual_dim, audio_dim=audio_dim, num_classes=num_classes, hidden=hidden)
        n = count_trainable_parameters(model)
        paper = PAPER_PARAMS_M[name]
        rows.append({"name": name, "params": n, "paper_m": paper, "deviation": n / (paper * 1e6) - 1, "matchable": name in MATCHABLE})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Print the parameter table (``python -m avlab.models.yt8m [--visual-dim …]``)."""
    parser = argparse.ArgumentParser(description="Parameter counts of the Attend-Fusion models next to the paper's Table 1/3.")
    parser.add_argument("--visual-dim", type=int, default=PAPER_SETUP["visual_dim"])
    parser.add_argument("--audio-dim", type=int, default=PAPER_SETUP["audio_dim"])
    parser.add_argument("--num-classes", type=int, default=PAPER_SETUP["num_classes"])
    parser.add_argument("--baseline-hidden", type=int, default=PAPER_SETUP["baseline_hidden"])
    parser.add_argument("--proposed-hidden", type=int, default=PAPER_SETUP["proposed_hidden"])
    args = parser.parse_args(argv)
    rows = parameter_table(args.visual_dim, args.audio_dim, args.num_classes, args.baseline_hidden, args.proposed_hidden)
    print(f"setup: inputs {args.visual_dim}/{args.audio_dim}, 8K={args.baseline_hidden}, 2K={args.proposed_hidden}, C={args.num_classes}")
    print(f"{'model':34s} {'params (M)':>11s} {'paper (M)':>10s} {'Δ':>8s}  check")
    for r in rows:
        check = "±2% (matchable)" if r["matchable"] else "reported"
        print(f"{r['name']:34s} {r['params'] / 1e6:11.2f} {r['paper_m']:10.0f} {100 * r['deviation']:+7.1f}%  {check}")


if __name__ == "__main__":
    main()

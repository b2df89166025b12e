"""Parts every YouTube-8M model shares: the input contract, FC stacks, the classifier, the attention layer.

Every model maps video-level features to class logits: ``forward(rgb [B, d_v], audio [B, d_a])
-> [B, C]`` (apply a sigmoid for probabilities). ``d_v, d_a`` are 1024/128 for mean features
(MF) and 2048/256 for MF+STD. A model derives from :class:`YT8MModel` (input widths, class count,
dropout and an actionable input check), and its constructor takes ``visual_dim``, ``audio_dim``,
``num_classes`` and ``dropout`` (the task's base config sets them). For ``model.prior_bias`` the
LightningModule initialises :meth:`YT8MModel.classifier`: by default the last
``Linear(*, num_classes)`` of the model's ``head`` submodule.

The attention layer (:class:`AttentionBlock`) reuses the shared :class:`SelfAttention` /
:class:`CrossModalAttention` of :mod:`avlab.models.blocks.attention` and adds the feed-forward
half. :class:`AttentionModel` is the constructor the proposed models share (per-modality
projections to width ``hidden``, one token per modality).
"""

from __future__ import annotations

from torch import Tensor, nn

from avlab.models.blocks.attention import CrossModalAttention, SelfAttention
from avlab.models.blocks.residual import fc_layer

__all__ = ["AttentionBlock", "AttentionModel", "YT8MModel", "classifier_head", "mlp"]


class YT8MModel(nn.Module):
    """Base class: input widths, class count and an input check with an actionable message."""

    def __init__(self, visual_dim: int, audio_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        dims = (("visual_dim", visual_dim), ("audio_dim", audio_dim), ("num_classes", num_classes))
        for name, value in dims:
            if int(value) < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be positive, found {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), found {dropout}")
        self.visual_dim, self.audio_dim, self.num_classes = int(visual_dim), int(audio_dim), int(num_classes)
        self.dropout = float(dropout)

    def check_inputs(self, rgb: Tensor, audio: Tensor) -> None:
        """Raise an error naming ``model.net.visual_dim``/``audio_dim`` when the inputs do not fit."""
        inputs = (
            ("visual", rgb, self.visual_dim, "visual_dim"),
            ("audio", audio, self.audio_dim, "audio_dim"),
        )
        for name, x, want, key in inputs:
            if x.dim() != 2 or x.shape[1] != want:
                raise ValueError(
                    f"{type(self).__name__}: expected {name} features [B, {want}], found {list(x.shape)}. "
                    f"Set model.net.{key} to match data.features (mf: 1024/128, mf_std: 2048/256)."
                )

    def classifier(self) -> nn.Linear:
        """The layer producing the logits (``model.prior_bias`` initialises its bias).

        Default: the last ``Linear(*, num_classes)`` inside ``self.head``; override it when a
        model's logits come from elsewhere.
        """
        try:
            head = self.get_submodule("head")
        except AttributeError:
            head = nn.Identity()  # no head: reported below
        layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
        layers = [m for m in layers if m.out_features == self.num_classes and m.bias is not None]
        if not layers:
            raise ValueError(
                f"{type(self).__name__}: no Linear(*, {self.num_classes}) with a bias in self.head; "
                "override classifier() or set model.prior_bias=null"
            )
        return layers[-1]

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def mlp(in_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` hidden FC layers: ``in → hidden → … → hidden`` (Linear → ReLU → Dropout)."""
    return nn.Sequential(*(fc_layer(in_dim if i == 0 else hidden, hidden, dropout) for i in range(layers)))


def classifier_head(in_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Classifier: dropout on the features, then ``Linear(in_dim, C)`` (logits)."""
    if dropout > 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, num_classes))


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
            self.attn: nn.Module = CrossModalAttention(
                dim, dim, num_heads, dropout=dropout, residual=True, norm=True
            )
        else:
            self.attn = SelfAttention(dim, num_heads, dropout=dropout, residual=True, norm=True)
        ffn_dim = ffn_dim or dim
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
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


class AttentionModel(YT8MModel):
    """Shared constructor of the proposed models: per-modality projections to width ``hidden``.

    Subclasses build attention layers with :meth:`attention_block` and turn the inputs into one-token
    sequences with :meth:`tokens`.
    """

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

    def attention_block(self, cross: bool = False) -> AttentionBlock:
        """A self- (or, with ``cross``, cross-modal) attention layer of this model's width and heads."""
        return AttentionBlock(self.hidden, self.num_heads, self.ffn_dim, self.dropout, cross=cross)

    def tokens(self, rgb: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Project each modality to ``hidden`` and make it a one-token sequence ``[B, 1, d]``."""
        self.check_inputs(rgb, audio)
        return self.proj_v(rgb).unsqueeze(1), self.proj_a(audio).unsqueeze(1)

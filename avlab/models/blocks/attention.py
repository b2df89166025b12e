"""Reusable attention blocks (batch-first, sequences shaped ``[B, N, D]``).

All blocks wrap :class:`torch.nn.MultiheadAttention`, i.e. the standard scaled-dot-product
multi-head attention of Vaswani et al. (2017):
``softmax(Q Kᵀ / sqrt(d_k)) V`` with ``d_k = d_model / H`` per head, followed by an output
projection. Attentive AV-FusionNet uses them *without* residual connections or layer norm
(its §2: "We omit positional encodings and residual connections"), other tasks switch both on;
hence the ``residual`` / ``norm`` flags, which default to off.

With ``residual=True, norm=True`` a layer is post-norm: ``LayerNorm(x + Attn(x, ...))``.
With ``norm=True`` only, it is ``LayerNorm(Attn(x, ...))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "BidirectionalCrossAttention",
    "CrossModalAttention",
    "JointCrossAttention",
    "SelfAttention",
]


def _check_heads(dim: int, num_heads: int, what: str) -> None:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(
            f"{what}: model width {dim} must be divisible by num_heads (found num_heads={num_heads}); "
            f"d_k = width / num_heads must be an integer"
        )


def _check_seq(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name}: expected a [B, N, {dim}] tensor, found shape {list(x.shape)}")


class CrossModalAttention(nn.Module):
    """Multi-head cross-attention: queries from one modality, keys/values from another.

    Args:
        query_dim: width of the query sequence ``x_q`` ([B, N_q, query_dim]).
        key_dim: width of the key/value sequence ``x_kv`` ([B, N_kv, key_dim]).
        num_heads: number of heads H; ``d_k = d_model / H``.
        dropout: dropout on the attention weights.
        d_model: attention width (defaults to ``query_dim``). When it differs from ``query_dim`` a
            linear map brings the queries to ``d_model`` first, because ``nn.MultiheadAttention``
            requires the query width to equal its embedding width.
        residual: add the (query) input to the output; needs ``d_model == query_dim``.
        norm: apply LayerNorm(d_model) to the output.

    Returns ``[B, N_q, d_model]``: the query sequence re-expressed from the other modality.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        d_model: int | None = None,
        residual: bool = False,
        norm: bool = False,
    ) -> None:
        super().__init__()
        d_model = query_dim if d_model is None else d_model
        _check_heads(d_model, num_heads, "CrossModalAttention")
        if residual and d_model != query_dim:
            raise ValueError(
                f"CrossModalAttention: residual=True needs d_model == query_dim, "
                f"found d_model={d_model}, query_dim={query_dim}"
            )
        self.query_dim, self.key_dim, self.d_model = query_dim, key_dim, d_model
        self.residual = residual
        self.q_in = nn.Identity() if d_model == query_dim else nn.Linear(query_dim, d_model)
        # kdim/vdim let K and V come from a sequence of another width without an extra layer.
        self.attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, kdim=key_dim, vdim=key_dim, batch_first=True
        )
        self.norm = nn.LayerNorm(d_model) if norm else nn.Identity()

    def forward(self, x_q: Tensor, x_kv: Tensor) -> Tensor:
        """Attend from ``x_q`` [B, N_q, query_dim] to ``x_kv`` [B, N_kv, key_dim]."""
        _check_seq(x_q, self.query_dim, "CrossModalAttention query")
        _check_seq(x_kv, self.key_dim, "CrossModalAttention key/value")
        q = self.q_in(x_q)
        out, _ = self.attn(q, x_kv, x_kv, need_weights=False)
        if self.residual:
            out = out + x_q
        return self.norm(out)


class SelfAttention(nn.Module):
    """Multi-head self-attention over one sequence ``[B, N, dim]`` (Q = K = V = input).

    No positional encoding is added (callers add one if they need order information).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        residual: bool = False,
        norm: bool = False,
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads, "SelfAttention")
        self.dim = dim
        self.residual = residual
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Return the refined sequence, same shape as ``x``."""
        _check_seq(x, self.dim, "SelfAttention input")
        out, _ = self.attn(x, x, x, need_weights=False)
        if self.residual:
            out = out + x
        return self.norm(out)


class BidirectionalCrossAttention(nn.Module):
    """Audio↔video cross-attention in both directions, with separate depths.

    * A→V (``n_a2v`` layers): video queries attend to audio keys/values, giving the video
      stream re-expressed from audio (``X_v^ca`` in Attentive AV-FusionNet's eq. (2)).
    * V→A (``n_v2a`` layers): audio queries attend to video keys/values (``X_a^ca``).

    In a stack, layer ``i`` takes the previous layer's output as queries while keys/values stay
    the *input* sequence of the other modality, so the two directions are independent and their
    depths can differ (Table 2 searches ``n_layers^{A→V}`` and ``n_layers^{V→A}`` separately).

    ``forward(a, v)`` returns ``(a_attended_by_v, v_attended_by_a)``, both ``[B, N, dim]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_a2v: int = 1,
        n_v2a: int = 1,
        dropout: float = 0.0,
        residual: bool = False,
        norm: bool = False,
    ) -> None:
        super().__init__()
        if n_a2v < 1 or n_v2a < 1:
            raise ValueError(
                f"BidirectionalCrossAttention: n_a2v and n_v2a must be ≥ 1, found {n_a2v}, {n_v2a}"
            )
        self.dim = dim

        def layer() -> CrossModalAttention:
            return CrossModalAttention(dim, dim, num_heads, dropout=dropout, residual=residual, norm=norm)

        self.a2v = nn.ModuleList(layer() for _ in range(n_a2v))
        self.v2a = nn.ModuleList(layer() for _ in range(n_v2a))

    def forward(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``a`` [B, N_a, dim], ``v`` [B, N_v, dim] → (audio attended by video, video attended by audio)."""
        v_ca = v
        for layer in self.a2v:  # eq. (2) of AV-FusionNet: Q from video, K/V from audio
            v_ca = layer(v_ca, a)
        a_ca = a
        for layer in self.v2a:  # the reciprocal V→A direction: Q from audio, K/V from video
            a_ca = layer(a_ca, v)
        return a_ca, v_ca


class JointCrossAttention(nn.Module):
    """Joint cross-attention after Praveen et al., CVPRW 2022 (ref. [32] of AV-FusionNet).

    Each modality attends to the *joint* representation ``J = [X_a; X_v]`` (feature-wise
    concatenation, width ``dim_a + dim_v``) instead of to the other modality alone, so it sees
    both its own and the other modality's features. The step is applied ``n_iterations`` times,
    rebuilding ``J`` from the updated streams each time; with ``share_weights=True`` (default)
    one set of weights is reused, which is what makes it *recursive*.

    Departure from [32], stated on purpose: Praveen et al. compute a tanh-bounded joint
    correlation matrix with weights tied to a fixed sequence length L. Here the attention is
    standard scaled-dot-product multi-head attention (Q from the modality, K/V from ``J``),
    which works for any N, matching AV-FusionNet's description of its variant as "inspired by"
    [32]. ``residual=True`` by default because [32] adds the input back to the attended features.

    ``forward(a, v)`` returns ``(a_att, v_att)`` with the input widths.
    """

    def __init__(
        self,
        dim_a: int,
        dim_v: int,
        num_heads: int,
        n_iterations: int = 1,
        dropout: float = 0.0,
        residual: bool = True,
        norm: bool = False,
        share_weights: bool = True,
    ) -> None:
        super().__init__()
        if n_iterations < 1:
            raise ValueError(f"JointCrossAttention: n_iterations must be ≥ 1, found {n_iterations}")
        self.dim_a, self.dim_v = dim_a, dim_v
        self.n_iterations = n_iterations
        dim_j = dim_a + dim_v
        n_sets = 1 if share_weights else n_iterations

        def cross(dim_q: int) -> CrossModalAttention:
            return CrossModalAttention(dim_q, dim_j, num_heads, dropout=dropout, residual=residual, norm=norm)

        self.audio = nn.ModuleList(cross(dim_a) for _ in range(n_sets))
        self.video = nn.ModuleList(cross(dim_v) for _ in range(n_sets))

    def forward(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``a`` [B, N, dim_a], ``v`` [B, N, dim_v] (same N) → ``(a_att, v_att)``."""
        if a.dim() != 3 or v.dim() != 3 or a.shape[:2] != v.shape[:2]:
            raise ValueError(
                "JointCrossAttention: audio and video must be [B, N, D] with the same B and N "
                f"(J concatenates them per time step); found {list(a.shape)} and {list(v.shape)}"
            )
        for t in range(self.n_iterations):
            k = 0 if len(self.audio) == 1 else t
            joint = torch.cat([a, v], dim=-1)  # J = [X_a; X_v]
            # Both updates read the same J, so the order of the two lines does not matter.
            a, v = self.audio[k](a, joint), self.video[k](v, joint)
        return a, v

"""Audio-visual token fusion blocks: RAVF (AVRSP, eq. 1–7) and the alternatives of its Table V.

Every block has the same interface, so a config swaps one for another by its ``_target_``::

    fusion(v: [B, N_v, dim], a: [B, N_a, dim]) -> [B, N_v, dim]

``v`` are visual tokens (e.g. the flattened ``T×H×W`` positions of a 3-D feature map), ``a`` audio
tokens (e.g. SoundNet time steps) already projected to ``dim``. The output is the visual stream
enriched with audio, at the visual token positions.

=====================  ===========================================================================
:class:`AddFusion`     element-wise addition of the pooled, projected audio (Table V)
:class:`MulFusion`     element-wise multiplication (Table V)
:class:`ConcatFusion`  concatenation, then a linear projection back to ``dim`` (Table V)
:class:`BilinearFusion` low-rank bilinear pooling of each visual token with the audio (Table V)
:class:`MBTFusion`     Multimodal Bottleneck Transformer (Nagrani et al. 2021; AVRSP ref. [37])
:class:`RAVF`          relevance-guided AV fusion, N blocks (AVRSP §III-B, eq. 1–7)
=====================  ===========================================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "RAVF",
    "AddFusion",
    "BilinearFusion",
    "ConcatFusion",
    "MBTFusion",
    "MulFusion",
    "RAVFBlock",
    "RelevanceCrossAttention",
]


def _check(v: Tensor, a: Tensor, dim: int, who: str) -> None:
    if v.dim() != 3 or a.dim() != 3 or v.shape[0] != a.shape[0] or v.shape[-1] != dim or a.shape[-1] != dim:
        raise ValueError(
            f"{who}: expected v [B, N_v, {dim}] and a [B, N_a, {dim}], "
            f"got {list(v.shape)} and {list(a.shape)}"
        )


class _PooledAudio(nn.Module):
    """Shared helper of the simple fusions: mean over audio tokens, then a linear projection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, a: Tensor) -> Tensor:
        return self.proj(a.mean(dim=1, keepdim=True))  # [B, 1, dim], broadcast over visual tokens


class AddFusion(nn.Module):
    """Table V "element-wise addition": ``v + W·mean(a)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.audio = _PooledAudio(dim)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        _check(v, a, self.dim, "AddFusion")
        return v + self.audio(a)


class MulFusion(nn.Module):
    """Table V "element-wise multiplication": ``v ⊙ W·mean(a)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.audio = _PooledAudio(dim)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        _check(v, a, self.dim, "MulFusion")
        return v * self.audio(a)


class ConcatFusion(nn.Module):
    """Table V "concatenation": ``W·[v; mean(a)]`` back to ``dim`` channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        _check(v, a, self.dim, "ConcatFusion")
        pooled = a.mean(dim=1, keepdim=True).expand(-1, v.shape[1], -1)
        return self.proj(torch.cat([v, pooled], dim=-1))


class BilinearFusion(nn.Module):
    """Table V "bilinear": ``z_k = v^T W_k a`` per visual token, in low-rank (MLB) form.

    A full bilinear map needs ``dim³`` weights (16.8 M at dim 256), so it is factorised as
    ``W_k = Σ_r U_rk V_rk`` (Kim et al., "Hadamard product for low-rank bilinear pooling"):
    ``z = P·(tanh(U v) ⊙ tanh(V a))``. ``rank = None`` uses ``dim``.
    """

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        rank = rank or dim
        self.u = nn.Linear(dim, rank)
        self.v = nn.Linear(dim, rank)
        self.p = nn.Linear(rank, dim)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        _check(v, a, self.dim, "BilinearFusion")
        pooled = a.mean(dim=1, keepdim=True)
        return v + self.p(torch.tanh(self.u(v)) * torch.tanh(self.v(pooled)))


class MBTFusion(nn.Module):
    """Multimodal Bottleneck Transformer fusion (Nagrani et al., NeurIPS 2021; AVRSP ref. [37]).

    ``n_bottleneck`` learned tokens are the only path between the modalities: in each layer the
    visual tokens and the bottleneck go through one transformer layer, the audio tokens and the
    bottleneck through another, and the bottleneck becomes the mean of its two updated copies.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        n_layers: int = 2,
        n_bottleneck: int = 4,
        ffn_mult: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        if dim % num_heads:
            raise ValueError(f"MBTFusion: dim {dim} is not divisible by num_heads {num_heads}")
        self.bottleneck = nn.Parameter(torch.randn(1, n_bottleneck, dim) * 0.02)

        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                dim,
                num_heads,
                dim_feedforward=ffn_mult * dim,
                dropout=dropout,
                batch_first=True,
                norm_first=True,
            )

        self.visual = nn.ModuleList(layer() for _ in range(n_layers))
        self.audio = nn.ModuleList(layer() for _ in range(n_layers))

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        _check(v, a, self.dim, "MBTFusion")
        nv, na = v.shape[1], a.shape[1]
        b = self.bottleneck.expand(v.shape[0], -1, -1)
        for lv, la in zip(self.visual, self.audio):
            yv = lv(torch.cat([v, b], dim=1))
            ya = la(torch.cat([a, b], dim=1))
            v, a = yv[:, :nv], ya[:, :na]
            b = 0.5 * (yv[:, nv:] + ya[:, na:])  # the bottleneck averages what both streams wrote
        return v


class RelevanceCrossAttention(nn.Module):
    """Relevance-aware multi-head cross-attention (AVRSP §III-B, eq. 1–7).

    * eq. (1): six affine maps give ``V_q, V_k, V_v`` from the visual and ``A_q, A_k, A_v`` from
      the audio tokens, split into ``num_heads`` heads of ``d_k = dim / num_heads``.
    * eq. (2): ``Ret_A = V_q A_k^T / √d_k`` — retention of the audio values seen from each visual
      token; eq. (3): ``Ret_V = A_q V_k^T / √d_k``. No softmax (the paper's point: retention is
      not a distribution over keys).
    * eq. (4): ``v2a = Ret_A·A_v + V_v``; eq. (5): ``a2v = Ret_V·V_v + A_v``.
    * eq. (6): ``C = Softmax_heads(MLP(Cat(v2a, a2v)))`` — per visual token and head, the MLP sees
      that token's ``v2a`` and the token-averaged ``a2v`` of the same head (``a2v`` lives on the
      audio tokens, so it is averaged to be concatenable); softmax over the heads.
    * eq. (7): ``F_av = C ⊙ v2a``, heads concatenated back to ``dim``.

    Steps the paper does not state, each a switch (all on by default; all off is the paper-literal
    block, ``paper_literal=True``):

    * ``retention_sigmoid``: ``Ret = σ(score)``. The paper's Fig. 6 shows retention values in
      [0, 1]; the raw scores of eq. (2)–(3) are unbounded.
    * ``retention_mean``: divide ``Ret·value`` by the number of keys, so its magnitude does not grow
      with the sequence length (the visual map of a 224×384 clip has 336 tokens).
    * ``head_scale``: multiply eq. (7) by the number of heads H, so uniform head weights (1/H) leave
      ``v2a`` unchanged in scale.
    * ``out_proj``: a final linear map ``W_o``, as in standard multi-head attention.

    ``forward`` returns ``(F_av [B, N_v, dim], extras)``; ``extras`` holds ``ret_a``, ``ret_v``
    (``[B, H, N_v, N_a]`` / ``[B, H, N_a, N_v]``) and the head ``weights`` ``[B, N_v, H]`` for
    visualisation (Fig. 6).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        mlp_hidden: int | None = None,
        dropout: float = 0.0,
        retention_sigmoid: bool = True,
        retention_mean: bool = True,
        head_scale: bool = True,
        out_proj: bool = True,
        paper_literal: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"RAVF: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.d_k = dim, num_heads, dim // num_heads
        if paper_literal:  # eq. (1)-(7) exactly as printed: every added step off
            retention_sigmoid = retention_mean = head_scale = out_proj = False
        self.retention_sigmoid, self.retention_mean = bool(retention_sigmoid), bool(retention_mean)
        self.head_scale = bool(head_scale)
        # eq. (1): W_vq, W_vk, W_vv, W_aq, W_ak, W_av
        self.v_qkv = nn.Linear(dim, 3 * dim)
        self.a_qkv = nn.Linear(dim, 3 * dim)
        hidden = mlp_hidden or self.d_k
        self.head_mlp = nn.Sequential(nn.Linear(2 * self.d_k, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.out = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.d_k).transpose(1, 2)  # [B, H, N, d_k]

    def forward(self, v: Tensor, a: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        vq, vk, vv = (self._heads(t) for t in self.v_qkv(v).chunk(3, dim=-1))
        aq, ak, av = (self._heads(t) for t in self.a_qkv(a).chunk(3, dim=-1))
        scale = self.d_k**-0.5
        ret_a = vq @ ak.transpose(-2, -1) * scale  # eq. (2), [B, H, N_v, N_a]
        ret_v = aq @ vk.transpose(-2, -1) * scale  # eq. (3), [B, H, N_a, N_v]
        if self.retention_sigmoid:
            ret_a, ret_v = torch.sigmoid(ret_a), torch.sigmoid(ret_v)
        retained_a = self.drop(ret_a) @ av  # Ret_A·A_v
        retained_v = self.drop(ret_v) @ vv  # Ret_V·V_v
        if self.retention_mean:
            retained_a, retained_v = retained_a / ak.shape[-2], retained_v / vk.shape[-2]
        v2a = retained_a + vv  # eq. (4), [B, H, N_v, d_k]
        a2v = retained_v + av  # eq. (5), [B, H, N_a, d_k]
        a2v_pooled = a2v.mean(dim=2, keepdim=True).expand_as(v2a)
        logits = self.head_mlp(torch.cat([v2a, a2v_pooled], dim=-1)).squeeze(-1)  # [B, H, N_v]
        weights = torch.softmax(logits, dim=1)  # eq. (6): softmax over the heads
        fav = v2a * weights.unsqueeze(-1)  # eq. (7)
        if self.head_scale:
            fav = fav * self.num_heads
        b, _, n, _ = fav.shape
        fav = fav.transpose(1, 2).reshape(b, n, self.dim)
        return self.out(fav), {"ret_a": ret_a, "ret_v": ret_v, "weights": weights.transpose(1, 2)}


class RAVFBlock(nn.Module):
    """One RAVF block (Fig. 3): cross-attention → residual + LayerNorm → FFN → residual + LayerNorm."""

    def __init__(
        self, dim: int, num_heads: int = 4, ffn_mult: int = 2, dropout: float = 0.0, **attn: bool
    ) -> None:
        super().__init__()
        self.attn = RelevanceCrossAttention(dim, num_heads, dropout=dropout, **attn)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, v: Tensor, a: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fav, extras = self.attn(v, a)
        x = self.norm1(v + fav)
        return self.norm2(x + self.ffn(x)), extras


class RAVF(nn.Module):
    """Relevance-guided Audio-Visual Fusion: ``n_blocks`` :class:`RAVFBlock` (the paper's N).

    Each block refines the visual stream; the audio tokens stay the SoundNet features, so every
    block judges relevance against the same audio evidence. ``retention_sigmoid``,
    ``retention_mean``, ``head_scale``, ``out_proj`` and ``paper_literal`` switch the steps that
    the paper does not state (see :class:`RelevanceCrossAttention`). The last block's retention maps and
    head weights are kept in :attr:`last_extras` for visualisation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        n_blocks: int = 2,
        ffn_mult: int = 2,
        dropout: float = 0.0,
        retention_sigmoid: bool = True,
        retention_mean: bool = True,
        head_scale: bool = True,
        out_proj: bool = True,
        paper_literal: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"RAVF: n_blocks must be ≥ 1, got {n_blocks}")
        self.dim = dim
        attn = {
            "retention_sigmoid": retention_sigmoid,
            "retention_mean": retention_mean,
            "head_scale": head_scale,
            "out_proj": out_proj,
            "paper_literal": paper_literal,
        }
        self.blocks = nn.ModuleList(
            RAVFBlock(dim, num_heads, ffn_mult, dropout, **attn) for _ in range(n_blocks)
        )
        self.last_extras: dict[str, Tensor] = {}

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        _check(v, a, self.dim, "RAVF")
        for block in self.blocks:
            v, extras = block(v, a)
        self.last_extras = {k: t.detach() for k, t in extras.items()}
        return v

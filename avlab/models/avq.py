"""Audio-visual quality (``avq`` task) models: Attentive AV-FusionNet and its three ablations.

Paper: I. Salaj, A. Biswas, "Attentive AV-FusionNet: Audio-visual quality prediction with hybrid
attention" (Dolby). Plain ``nn.Module`` s; training lives in the Lightning module.

Common interface of all four models::

    model(video, audio) -> Tensor[B]            # predicted AV quality per stimulus
    model.intermediates(video, audio) -> dict    # embeddings for modality importance, eq. (7)

``video`` is ``[B, N, d_video]`` (6 VMAF features: vif_scale0..3, motion2, adm2), ``audio`` is
``[B, N, d_audio]`` (512-d GML embedding, or a stand-in of that width); N temporal units with
the same N for both (the paper uses N = 1, clip level). ``[B, D]`` inputs are read as N = 1.
The per-unit scores are averaged over N.

``intermediates`` keys: ``phi_pre_audio``, ``phi_pre_video`` (embeddings entering the fusion, both
``[B, N, d_model]``: audio features and projected video X'_v of eq. (1)), ``phi_post_audio``,
``phi_post_video`` (the same streams after cross-attention: X_a^ca, X_v^ca of eq. (2)),
``joint`` (J, ``[B, N, 2·d_model]``), ``joint_refined`` (what enters the head, J_self for the
full model), ``unit_scores`` ``[B, N]`` and ``score`` ``[B]``.

A property of the paper's configuration worth knowing: with N = 1 every softmax runs over a
single key and equals 1, so each attention layer reduces to its value and output projections;
the query/key weights then receive exactly zero gradient. They still count as trainable
parameters (Fig. 1's 7.4M includes them) and become active for N > 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avlab.errors import FeatureError
from avlab.models.blocks import (
    BidirectionalCrossAttention,
    JointCrossAttention,
    MLPHead,
    SelfAttention,
    make_activation,
)

__all__ = [
    "PAPER_PARAMETER_COUNT",
    "AVQModel",
    "AttentiveAVFusionNet",
    "CAAVFusion",
    "RecursiveAVFusionNet",
    "SimpleAVFusion",
]

#: Trainable parameters of AttentiveAVFusionNet in the paper configuration (Table 2 best:
#: H = 4, d_ff = 512, one layer each); see the class docstring for the arithmetic.
PAPER_PARAMETER_COUNT = 7_354_369


def _as_sequence(x: Tensor, name: str, width: int) -> Tensor:
    """Validate ``x`` as [B, N, width] (or [B, width] → N = 1) and return it 3-D."""
    if not isinstance(x, Tensor):
        raise FeatureError(
            f"{name} features must be a torch.Tensor [B, N, {width}], found {type(x).__name__}"
        )
    if x.dim() == 2:
        x = x.unsqueeze(1)
    if x.dim() != 3:
        raise FeatureError(
            f"{name} features: expected shape [B, N, {width}] (or [B, {width}]), found {list(x.shape)}"
        )
    if x.shape[-1] != width:
        raise FeatureError(
            f"{name} features: expected width {width} (shape [B, N, {width}]), found width {x.shape[-1]} "
            f"(shape {list(x.shape)}); check the feature extractor or the model's d_{name} setting"
        )
    if not torch.is_floating_point(x):
        raise FeatureError(f"{name} features must be floating point, found dtype {x.dtype}")
    return x


class AVQModel(nn.Module):
    """Shared parts of the four AVQ models: input checks, eq. (1) projection, eq. (4) head.

    Subclasses implement :meth:`_fuse`, which maps the projected streams to
    ``(phi_post_audio, phi_post_video, joint_refined)``.

    Args:
        d_video: video feature width (6 VMAF features in the paper).
        d_audio: audio feature width (512 for GML). When it differs from ``d_model`` (a stand-in
            audio extractor) a ``Linear(d_audio→d_model)`` + activation brings audio to the
            shared width; this layer is *not* in the paper and absent when ``d_audio == d_model``.
        d_model: shared cross-modal width (512, fixed by design in Table 2).
        d_ff: hidden width of the feed-forward head (Table 2: {256, 512, 1024}).
        activation: σ of eq. (1) and the head's first activation (Table 2: GELU, ReLU).
        dropout: dropout in the head (Table 2: 0.1–0.6).
    """

    def __init__(
        self,
        d_video: int = 6,
        d_audio: int = 512,
        d_model: int = 512,
        d_ff: int = 512,
        activation: str = "gelu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for key, val in {"d_video": d_video, "d_audio": d_audio, "d_model": d_model, "d_ff": d_ff}.items():
            if int(val) < 1:
                raise ValueError(f"{type(self).__name__}: {key} must be a positive integer, found {val}")
        self.d_video, self.d_audio, self.d_model, self.d_ff = d_video, d_audio, d_model, d_ff
        # eq. (1): X'_v = σ(X_v W_v), W_v ∈ R^{d_v×512} (with a bias, as nn.Linear has).
        self.video_proj = nn.Sequential(nn.Linear(d_video, d_model), make_activation(activation))
        self.audio_proj: nn.Module = (
            nn.Identity()
            if d_audio == d_model
            else nn.Sequential(nn.Linear(d_audio, d_model), make_activation(activation))
        )
        # eq. (4): Q̂_av = f_FFN(J_self); shallow head Linear(1024→d_ff)→σ→Dropout→
        # Linear(d_ff→1024)→Tanh→Linear(1024→1) ("non-linear activations (e.g., GELU, Tanh) and dropout").
        self.head = MLPHead(
            2 * d_model,
            [d_ff, 2 * d_model],
            out_dim=1,
            activation=[activation, "tanh"],
            dropout=[dropout, 0.0],
        )

    def _inputs(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        video = _as_sequence(video, "video", self.d_video)
        audio = _as_sequence(audio, "audio", self.d_audio)
        if video.shape[:2] != audio.shape[:2]:
            raise FeatureError(
                f"video and audio must have the same batch size B and number of temporal units N; "
                f"found video {list(video.shape)} and audio {list(audio.shape)}"
            )
        return video, audio

    def _fuse(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def intermediates(self, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
        """All embeddings of one forward pass (keys listed in the module docstring)."""
        video, audio = self._inputs(video, audio)
        v = self.video_proj(video)  # eq. (1)
        a = self.audio_proj(audio)
        a_post, v_post, refined = self._fuse(a, v)
        unit_scores = self.head(refined).squeeze(-1)  # eq. (4), one score per temporal unit
        return {
            "phi_pre_audio": a,
            "phi_pre_video": v,
            "phi_post_audio": a_post,
            "phi_post_video": v_post,
            "joint": torch.cat([a_post, v_post], dim=-1),
            "joint_refined": refined,
            "unit_scores": unit_scores,
            "score": unit_scores.mean(dim=1),  # mean over N temporal units
        }

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        """Predicted audio-visual quality, shape ``[B]``."""
        return self.intermediates(video, audio)["score"]


class AttentiveAVFusionNet(AVQModel):
    """Attentive AV-FusionNet (paper §2, eq. (1)–(4)).

    Pipeline: X'_v = σ(X_v W_v) (eq. 1) → bidirectional multi-head cross-attention, A→V with Q from
    video and K/V from audio giving X_v^ca, V→A giving X_a^ca (eq. 2), H heads, d_k = 512/H →
    J = [X_a^ca; X_v^ca] ∈ R^{N×1024} → ``n_layers`` multi-head self-attention layers over J
    without residual connections, layer norm or positional encodings (eq. 3, d_k^(j) = 1024/H)
    → shallow head f_FFN (eq. 4) → mean over N.

    Parameter count (reading chosen to match Fig. 1's "7.4M trainable parameters in the
    projection and fusion network"; paper configuration H = 4, d_ff = 512, n_layers = n_layers_a2v
    = n_layers_v2a = 1; H does not change the count):

    ====================================================  ===========
    projection Linear(6→512)          6·512 + 512                3,584
    MHA(512) A→V  in-proj 3·512² + 3·512, out 512² + 512   1,050,624
    MHA(512) V→A  (same)                                   1,050,624
    MHA(1024) self-attention  3·1024² + 3·1024 + 1024² + 1024  4,198,400
    head Linear(1024→512)             1024·512 + 512           524,800
    head Linear(512→1024)             512·1024 + 1024          525,312
    head Linear(1024→1)               1024 + 1                   1,025
    total                                                    7,354,369 ≈ 7.4M
    ====================================================  ===========

    The head's d_ff-bottleneck (1024→d_ff→1024) followed by Tanh and a scalar output is the
    reading of "shallow feed-forward head with non-linear activations (e.g., GELU, Tanh)" in
    which Table 2's ``d_feedforward`` is the head's hidden width; it is the only one we found that
    lands within 1 % of 7.4M together with the eq. (1)–(3) layers (a single Linear(1024→1) head
    gives 6.30M; a Transformer FFN 1024→512→1024 inside the self-attention block would need
    residuals/norms the paper omits).

    Args (besides :class:`AVQModel`'s):
        num_heads: H for all attention layers (Table 2: {2, 4, 8}).
        n_layers: self-attention layers over J (Table 2: 1–5).
        n_layers_a2v: A→V cross-attention layers (Table 2: 1–5).
        n_layers_v2a: V→A cross-attention layers (Table 2: 1–5).
        attention_dropout: dropout on attention weights (0 in the paper's description).
    """

    def __init__(
        self,
        d_video: int = 6,
        d_audio: int = 512,
        d_model: int = 512,
        num_heads: int = 4,
        n_layers: int = 1,
        n_layers_a2v: int = 1,
        n_layers_v2a: int = 1,
        d_ff: int = 512,
        activation: str = "gelu",
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__(d_video, d_audio, d_model, d_ff, activation, dropout)
        if n_layers < 1:
            raise ValueError(f"AttentiveAVFusionNet: n_layers must be ≥ 1, found {n_layers}")
        # eq. (2), both directions; residual/norm off as in the paper.
        self.cross = BidirectionalCrossAttention(
            d_model, num_heads, n_a2v=n_layers_a2v, n_v2a=n_layers_v2a, dropout=attention_dropout
        )
        # eq. (3): self-attention over J, no residual connections, no positional encodings.
        self.self_attn = nn.ModuleList(
            SelfAttention(2 * d_model, num_heads, dropout=attention_dropout) for _ in range(n_layers)
        )

    def _fuse(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_ca, v_ca = self.cross(a, v)  # eq. (2)
        joint = torch.cat([a_ca, v_ca], dim=-1)  # J = [X_a^ca; X_v^ca] ∈ R^{N×1024}
        for layer in self.self_attn:
            joint = layer(joint)  # eq. (3)
        return a_ca, v_ca, joint


class SimpleAVFusion(AVQModel):
    """ "Simple AV-Fusion" (Table 1: ours without attention).

    eq. (1) projection, J = [X_a; X'_v], eq. (4) head.

    There is no cross-attention, so ``phi_post_*`` equal ``phi_pre_*`` (the embeddings do not
    change during fusion; eq. (7) then gives 0 for both modalities).
    """

    def _fuse(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return a, v, torch.cat([a, v], dim=-1)


class CAAVFusion(AVQModel):
    """ "CA AV-Fusion" (Table 1: ours without self-attention): eq. (1), bidirectional cross-attention
    (eq. 2), J = [X_a^ca; X_v^ca], eq. (4) head.

    Args (besides :class:`AVQModel`'s): ``num_heads``, ``n_layers_a2v``, ``n_layers_v2a``,
    ``attention_dropout`` as in :class:`AttentiveAVFusionNet`.
    """

    def __init__(
        self,
        d_video: int = 6,
        d_audio: int = 512,
        d_model: int = 512,
        num_heads: int = 4,
        n_layers_a2v: int = 1,
        n_layers_v2a: int = 1,
        d_ff: int = 512,
        activation: str = "gelu",
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__(d_video, d_audio, d_model, d_ff, activation, dropout)
        self.cross = BidirectionalCrossAttention(
            d_model, num_heads, n_a2v=n_layers_a2v, n_v2a=n_layers_v2a, dropout=attention_dropout
        )

    def _fuse(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_ca, v_ca = self.cross(a, v)  # eq. (2)
        return a_ca, v_ca, torch.cat([a_ca, v_ca], dim=-1)


class RecursiveAVFusionNet(AVQModel):
    """ "Recursive AV-FusionNet" (Table 1), after joint cross-attention [32].

    eq. (1) projection; then each modality attends to the joint representation
    J = [X_a; X'_v] (Q from the modality, K/V from J, H heads), repeated ``n_iterations`` times
    with shared weights and J rebuilt from the updated streams (see
    :class:`~avlab.models.blocks.JointCrossAttention`, which documents how it differs from
    [32]'s tanh correlation form); then [X_a^att; X_v^att] → eq. (4) head.
    ``phi_post_*`` are the streams after the last iteration.

    Args (besides :class:`AVQModel`'s):
        num_heads: heads of the joint cross-attention.
        n_iterations: recursion depth (Table 2's general ``n_layers`` range 1–5 applies).
        residual: add each stream back after attending, as in [32] (default True).
        attention_dropout: dropout on attention weights.
    """

    def __init__(
        self,
        d_video: int = 6,
        d_audio: int = 512,
        d_model: int = 512,
        num_heads: int = 4,
        n_iterations: int = 1,
        d_ff: int = 512,
        activation: str = "gelu",
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__(d_video, d_audio, d_model, d_ff, activation, dropout)
        self.joint_cross = JointCrossAttention(
            d_model,
            d_model,
            num_heads,
            n_iterations=n_iterations,
            dropout=attention_dropout,
            residual=residual,
        )

    def _fuse(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_att, v_att = self.joint_cross(a, v)
        return a_att, v_att, torch.cat([a_att, v_att], dim=-1)

"""AVRSP: relevance-guided audio-visual saliency prediction (paper §III, Fig. 2) and its parts.

Data flow for a clip ``[B, 3, T, H, W]`` and its audio ``[B, L]`` (SoundNet convention)::

    S3DEncoder ─ 4 blocks ─► ASPP + LIP per block ─► X0 (finest, T/2×H/4) … X3 (coarsest, T/8×H/32)
    MultiScaleSynergy (eq. 8–12) on the P coarsest scales (P = ms_mrg_pairs, Table IV)
    SoundNet8 ─► audio tokens ─► fusion with the tokens of X̂3 (RAVF eq. 1–7, or a Table V block)
    RegulatorGate (eq. 13–15) carries the fused feature up through the same P scales
    Decoder: 4 blocks (conv + upsample), coarse to fine, with the visual and gated skips
    Head: temporal mean, 1-channel conv, upsample to H×W, sigmoid  ─► saliency of the last frame

Scales are named in S3D's block order (X0 finest … X3 coarsest), which is the reading of
Table IV under which its rows are consistent: with P pairs, MS enhances X3 … X(4−P) and needs
the inputs X3 … X(3−P) (one finer neighbour more), e.g. P = 3: inputs X3, X2, X1, X0 → outputs
X3, X2, X1. The fusion therefore happens on the coarsest scale, which MRG's text calls "the
lowest-resolution audio-visual features".

Random initialisation is the default. ``S3DEncoder(weights=PATH)`` and ``SoundNet8(weights=PATH)``
(in :mod:`avlab.models.backbones`) load local Kinetics / SoundNet checkpoints in their upstream
layouts, strictly; nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.models.backbones.s3d import S3D_BLOCKS, S3DEncoder, build_s3d_features, load_s3d_weights
from avlab.models.backbones.soundnet import SoundNet8, load_soundnet_weights

__all__ = [
    "AVRSP",
    "S3D_BLOCKS",
    "ASPP3d",
    "LIP3d",
    "MultiScaleSynergy",
    "RegulatorGate",
    "S3DEncoder",
    "SoundNet8",
    "build_s3d_features",
    "load_s3d_weights",
    "load_soundnet_weights",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- ASPP + LIP
def _cbr(
    cin: int,
    cout: int,
    kernel: int | Sequence[int] = 3,
    dilation: int | Sequence[int] = 1,
    norm_act: bool = True,
) -> nn.Sequential:
    """3-D conv ("same" padding), then BatchNorm + ReLU unless ``norm_act`` is False (a plain conv)."""
    k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    d = (dilation,) * 3 if isinstance(dilation, int) else tuple(dilation)
    pad = tuple((ki - 1) // 2 * di for ki, di in zip(k, d))
    if not norm_act:
        return nn.Sequential(nn.Conv3d(cin, cout, k, padding=pad, dilation=d))
    return nn.Sequential(
        nn.Conv3d(cin, cout, k, padding=pad, dilation=d, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP3d(nn.Module):
    """Atrous Spatial Pyramid Pooling (Chen et al., DeepLab; AVRSP ref. [28]) for 3-D features.

    Branches: a 1×1×1 conv, one (1, 3, 3) conv per spatial dilation rate, and image-level pooling;
    concatenated and projected to ``out_channels``. Dilation is spatial only: the temporal extent
    of the deepest S3D block is 4 steps for a 32-frame clip.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_cbr(in_channels, out_channels, 1)])
        for r in rates:
            self.branches.append(_cbr(in_channels, out_channels, (1, 3, 3), (1, r, r)))
        # No BatchNorm on the pooled branch: it has one value per channel and sample, which BN
        # cannot normalise in training with a batch of one.
        self.pool = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.project = _cbr(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        g = self.pool(x.mean(dim=(2, 3, 4), keepdim=True))
        outs.append(g.expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(outs, dim=1))


class LIP3d(nn.Module):
    """Local Importance-based Pooling (Gao et al., ICCV 2019; AVRSP ref. [29]).

    ``y = avgpool(x · w) / avgpool(w)`` with importance ``w = exp(logit(x))`` from a small conv
    net (logits bounded by ``12·sigmoid``, as LIP does, to keep ``exp`` finite). The window is
    (1, 3, 3) with stride 1 by default: the paper applies LIP after every encoder block without
    saying it downsamples, so here it re-weights locally and keeps the resolution.
    """

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.logit = nn.Sequential(
            nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(channels)
        )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        w = torch.exp(12.0 * torch.sigmoid(self.logit(x)))
        k, s = (1, 3, 3), (1, self.stride, self.stride)
        # Zero padding of numerator and denominator cancels in the ratio (and works on 2-pixel maps).
        num = F.avg_pool3d(F.pad(x * w, (1, 1, 1, 1)), k, s)
        return num / F.avg_pool3d(F.pad(w, (1, 1, 1, 1)), k, s)


# --------------------------------------------------------------------------- MS and MRG
def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if all(s <= t for s, t in zip(size, x.shape[2:])):
        return F.adaptive_avg_pool3d(x, tuple(size))  # D: exact average for integer ratios
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)  # U


class _Resample(nn.Module):
    """``U`` (upsample then 3-D conv) or ``D`` (downsample then 3-D conv) of eq. (10)–(11)."""

    def __init__(self, channels: int, kernel: int, norm_act: bool = True) -> None:
        super().__init__()
        self.conv = _cbr(channels, channels, kernel, norm_act=norm_act)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(_resize(x, size))


class MultiScaleSynergy(nn.Module):
    """Multi-scale feature Synergy, eq. (8)–(12): ``X̂^m = MS(X^h, X^m, X^l)``.

    ``h``/``l`` are the neighbouring finer/coarser scales (either may be absent at the ends).
    Reading of the garbled eq. (10)–(11), stated: each scale first mixes with its neighbours,
    then ``m`` gathers the mixed neighbours, and a residual keeps the input:

    * eq. (9):  ``X1^i = C(X^i)``, i ∈ {h, m, l}
    * eq. (10): ``X2^h = C(X1^h) + U(X1^m)``; ``X2^m = D(X1^h) + C(X1^m) + U(X1^l)``;
      ``X2^l = D(X1^m) + C(X1^l)``
    * eq. (11): ``X3^m = D(X2^h) + C(X2^m) + U(X2^l)``
    * eq. (12): ``X̂^m = X^m + X3^m``

    ``U`` upsamples trilinearly and ``D`` average-pools to the target size, each then convolves.
    The paper's ``C`` is "a 3D convolution"; avlab follows each conv by BatchNorm + ReLU, which
    ``norm_act=False`` switches off (the paper-literal plain convolutions).
    """

    def __init__(
        self, channels: int, has_h: bool, has_l: bool, kernel: int = 3, norm_act: bool = True
    ) -> None:
        super().__init__()
        self.has_h, self.has_l = has_h, has_l
        names = ["m"] + (["h"] if has_h else []) + (["l"] if has_l else [])

        def conv() -> nn.Sequential:
            return _cbr(channels, channels, kernel, norm_act=norm_act)

        def resample() -> _Resample:
            return _Resample(channels, kernel, norm_act)

        self.c1 = nn.ModuleDict({n: conv() for n in names})  # eq. (9)
        self.c2 = nn.ModuleDict({n: conv() for n in names})  # C of eq. (10)
        self.c3 = conv()  # C of eq. (11)
        self.up = nn.ModuleDict()
        self.down = nn.ModuleDict()
        if has_h:
            self.up["m_to_h"] = resample()
            self.down["h_to_m"] = resample()
            self.down["h2_to_m"] = resample()
        if has_l:
            self.up["l_to_m"] = resample()
            self.down["m_to_l"] = resample()
            self.up["l2_to_m"] = resample()

    def forward(self, xm: Tensor, xh: Tensor | None = None, xl: Tensor | None = None) -> Tensor:
        if self.has_h != (xh is not None) or self.has_l != (xl is not None):
            raise ValueError("MultiScaleSynergy: neighbours given do not match has_h/has_l")
        sm = xm.shape[2:]
        x1 = {"m": self.c1["m"](xm)}  # eq. (9)
        if xh is not None:
            x1["h"] = self.c1["h"](xh)
        if xl is not None:
            x1["l"] = self.c1["l"](xl)
        x2m = self.c2["m"](x1["m"])  # eq. (10), i = m
        if xh is not None:
            x2m = x2m + self.down["h_to_m"](x1["h"], sm)
        if xl is not None:
            x2m = x2m + self.up["l_to_m"](x1["l"], sm)
        x3 = self.c3(x2m)  # eq. (11)
        if xh is not None:
            x2h = self.c2["h"](x1["h"]) + self.up["m_to_h"](x1["m"], xh.shape[2:])  # eq. (10), i = h
            x3 = x3 + self.down["h2_to_m"](x2h, sm)
        if xl is not None:
            x2l = self.c2["l"](x1["l"]) + self.down["m_to_l"](x1["m"], xl.shape[2:])  # eq. (10), i = l
            x3 = x3 + self.up["l2_to_m"](x2l, sm)
        return xm + x3  # eq. (12)


class RegulatorGate(nn.Module):
    """Multi-scale Regulator Gate, eq. (13)–(15).

    * eq. (13): ``F^l = UpSample(F^{l−1})`` to the size of ``X^l``
    * eq. (14): ``G^l = GAP(σ(Conv(Cat(F^l, X^l))))`` — one gate value per channel
    * eq. (15): ``F^l_gated = Conv(G^l ⊙ F^l)``

    ``UpSample`` is trilinear. avlab follows eq. (15)'s conv by BatchNorm + ReLU; ``norm_act=False``
    gives the paper-literal plain conv.
    """

    def __init__(self, channels: int, kernel: int = 3, norm_act: bool = True) -> None:
        super().__init__()
        self.gate_conv = nn.Conv3d(2 * channels, channels, kernel, padding=kernel // 2)
        self.out_conv = _cbr(channels, channels, kernel, norm_act=norm_act)

    def forward(self, f_prev: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        f = _resize(f_prev, x.shape[2:])  # eq. (13)
        g = torch.sigmoid(self.gate_conv(torch.cat([f, x], dim=1))).mean(
            dim=(2, 3, 4), keepdim=True
        )  # eq. (14)
        return self.out_conv(g * f), g  # eq. (15)


# --------------------------------------------------------------------------- AVRSP
class AVRSP(nn.Module):
    """The AVRSP network (paper Fig. 2), or its visual-only variant when ``audio is None``.

    Args:
        visual: the visual backbone; ``forward`` returns four features, finest first, and it has
            ``out_channels`` (e.g. :class:`S3DEncoder`).
        audio: the audio backbone (``[B, L] → [B, L', C_a]``, with ``out_channels``), or None.
        fusion: token fusion block (``(v [B,N,C], a [B,M,C]) → [B,N,C]``; RAVF or a Table V
            block from :mod:`avlab.models.blocks.fusion_av`). Needed exactly when ``audio`` is set.
        channels: width C of every scale after ASPP + LIP (and of the fusion tokens).
        ms_mrg_pairs: number P of MS & MRG pairs, 0–4 (Table IV; the paper's AVRSP uses 3).
        use_ms, use_mrg: keep the MS, resp. MRG, half of each pair; switching one off gives Table
            III's "MRG only" and "MS only" rows (both off equals ``ms_mrg_pairs=0``).
        ms_mrg_norm_act: BatchNorm + ReLU after the convs of MS and MRG (False: the paper's plain
            convolutions, see :class:`MultiScaleSynergy`).
        aspp_rates: spatial dilation rates of ASPP.
        kernel: kernel size of the 3-D convs of MS, MRG and the decoder.
    """

    def __init__(
        self,
        visual: nn.Module,
        audio: nn.Module | None = None,
        fusion: nn.Module | None = None,
        channels: int = 128,
        ms_mrg_pairs: int = 3,
        aspp_rates: Sequence[int] = (1, 2, 3),
        kernel: int = 3,
        use_ms: bool = True,
        use_mrg: bool = True,
        ms_mrg_norm_act: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= ms_mrg_pairs <= 4:
            raise ConfigError(f"model.ms_mrg_pairs must be 0..4 (Table IV), got {ms_mrg_pairs}")
        if (audio is None) != (fusion is None):
            raise ConfigError(
                "model.audio and model.fusion go together: set both (audio-visual) or neither "
                "(visual-only, e.g. saliency/avrsp_visual)"
            )
        self.visual, self.audio, self.fusion = visual, audio, fusion
        self.channels, self.pairs = channels, ms_mrg_pairs
        in_ch = list(visual.out_channels)
        self.aspp = nn.ModuleList(ASPP3d(c, channels, aspp_rates) for c in in_ch)
        self.lip = nn.ModuleList(LIP3d(channels) for _ in in_ch)
        #: scales with an MS & MRG pair, coarse to fine: 3, 2, ..., 4 - P
        self.pair_scales = [3 - i for i in range(ms_mrg_pairs)]
        na = bool(ms_mrg_norm_act)
        self.ms = nn.ModuleDict(
            {
                str(s): MultiScaleSynergy(channels, has_h=s > 0, has_l=s < 3, kernel=kernel, norm_act=na)
                for s in (self.pair_scales if use_ms else [])
            }
        )
        self.mrg = nn.ModuleDict(
            {
                str(s): RegulatorGate(channels, kernel, norm_act=na)
                for s in (self.pair_scales if use_mrg else [])
            }
        )
        self.audio_proj = nn.Linear(audio.out_channels, channels) if audio is not None else None
        self.decoder = nn.ModuleList()
        for s in (3, 2, 1, 0):  # 4 decoder blocks, coarse to fine: conv, then upsample in forward
            n_in = (1 if s == 3 else 2) + (1 if str(s) in self.mrg else 0)
            self.decoder.append(_cbr(n_in * channels, channels, kernel))
        self.head = nn.Sequential(_cbr(channels, channels // 2, (1, 3, 3)))
        self.out = nn.Conv2d(channels // 2, 1, kernel_size=1)

    @property
    def is_audio_visual(self) -> bool:
        return self.audio is not None

    def encode(self, clip: Tensor) -> list[Tensor]:
        """X0..X3 after ASPP + LIP (paper §III-A)."""
        feats = self.visual(clip)
        return [lip(aspp(f)) for f, aspp, lip in zip(feats, self.aspp, self.lip)]

    def forward(self, clip: Tensor, audio: Tensor | None = None) -> Tensor:
        """``clip [B, 3, T, H, W]`` (+ ``audio [B, L]``) → saliency of the last frame ``[B, H, W]``."""
        x = self.encode(clip)
        xe = list(x)
        for s in self.pair_scales:  # eq. (8): MS on the original neighbours
            if str(s) in self.ms:
                xe[s] = self.ms[str(s)](x[s], x[s - 1] if s > 0 else None, x[s + 1] if s < 3 else None)
        top = xe[3]
        if self.audio is not None:
            if audio is None:
                raise ValueError("AVRSP: this model is audio-visual; pass the audio clip")
            b, c, t, h, w = top.shape
            a = self.audio_proj(self.audio(audio))
            v = top.flatten(2).transpose(1, 2)  # [B, T·H·W, C] visual tokens
            top = self.fusion(v, a).transpose(1, 2).reshape(b, c, t, h, w)
        gated: dict[int, Tensor] = {}
        f = top
        for s in self.pair_scales:  # eq. (13)-(15), from the fused feature upwards
            if str(s) in self.mrg:
                f, _ = self.mrg[str(s)](f, xe[s])
                gated[s] = f
        d = None
        for block, s in zip(self.decoder, (3, 2, 1, 0)):
            parts = [top] if s == 3 else [_resize(d, xe[s].shape[2:]), xe[s]]
            if s in gated:
                parts.append(gated[s])
            d = block(torch.cat(parts, dim=1))
            # upsample: to the next finer scale (done by _resize above), after the finest block ×2
        d = F.interpolate(d, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
        y = self.head(d).mean(dim=2)  # temporal aggregation of the clip
        y = F.interpolate(self.out(y), size=clip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(y.squeeze(1))

"""UNQA network (paper §III): spatial, motion and audio extractors and the regression modules.

* :class:`SpatialExtractor` — eq. 1–6: a ConvNeXt V2 backbone (timm, random init unless a local
  ``weights`` file is given), the feature maps of three stages average-pooled to the last stage's
  size and concatenated, ``F̃ + Conv(MHSA(Conv(F̃)))``, then global mean and std pooling. A
  torchvision ResNet (``backbone: resnet50``) is the Table VIII baseline.
* :class:`MotionExtractor` — eq. 7: SlowFast (:mod:`avlab.models.backbones.slowfast`, R50 8x8 by
  default, every architectural constant configurable), frozen; it loads pytorchvideo's and
  facebookresearch/SlowFast's Kinetics checkpoints. CPU demos use a reduced variant with the same
  topology. Its features are cached because the extractor never trains.
* :class:`AudioExtractor` — Fig. 5: log-mel spectrogram → overlapping segments → framewise CNN →
  self-attention over segments → attention pooling (NISQA-style, as the paper describes).
* :class:`UNQANet` — eq. 8 feature sets and four modality regressors of two FC layers; step one
  adds one regressor per database. Ablation regressors (Table IX): a single MLP or a Transformer.
* :class:`MixedDatabaseMapping` — the nonlinear mapping and per-database perceptual scale alignment
  of the MDT strategy (Li et al. 2021) that Table V compares with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.models.backbones.convnext import load_convnext_weights
from avlab.models.backbones.resnet import (
    RESNETS,
    build_resnet,
    load_resnet_weights,
    resnet_stages,
    resnet_stem,
    resnet_widths,
)
from avlab.models.backbones.slowfast import SlowFast, load_slowfast_weights
from avlab.models.blocks.heads import MLPHead
from avlab.models.pretrained import file_sha256

__all__ = [
    "FEATURES_OF",
    "MODALITIES",
    "AudioExtractor",
    "MixedDatabaseMapping",
    "MotionExtractor",
    "SlowFast",
    "SpatialExtractor",
    "UNQANet",
]

#: The four input modalities, in the order of the paper's regressors.
MODALITIES = ("audio", "image", "video", "av")
#: Eq. 8: which extractor outputs form the feature of each modality (s: spatial, m: motion, a: audio).
FEATURES_OF: dict[str, tuple[str, ...]] = {
    "audio": ("a",),
    "image": ("s",),
    "video": ("s", "m"),
    "av": ("s", "m", "a"),
}
_EXTRACTOR_KEY = {"spatial": "s", "motion": "m", "audio": "a"}


def _fork_init(init_seed: int | None):
    """A context that seeds module initialisation without touching the global RNG stream."""
    return torch.random.fork_rng(devices=[]) if init_seed is not None else contextlib.nullcontext()


# =========================================================================== spatial (eq. 1–6)
class SpatialExtractor(nn.Module):
    """Multi-stage ConvNeXt V2 features + MHSA, pooled to mean and std (eq. 1–6).

    Args:
        backbone: timm ConvNeXt V2 name (``convnextv2_atto`` for CPU demos; the paper's 1120-d
            μ and σ match ``convnextv2_nano``'s last three stages, 160 + 320 + 640), or a torchvision
            ResNet (``resnet50``: Table VIII's baseline; its four stages are 256, 512, 1024 and 2048
            wide, so stages ``[1, 2, 3]`` give a 3584-d μ and σ).
        stages: backbone stages whose maps are used (0-based; the paper takes 3 of 4).
        attn_dim: width of the 1×1 conv before the MHSA; default = the concatenated width.
        num_heads: MHSA heads.
        use_mhsa: False gives the "w/o MHSA" ablation of Table VIII (F_s = F̃).
        weights: local checkpoint: ConvNeXt V2 (``timm`` or ``official`` layout, see
            :mod:`avlab.models.backbones.convnext`) or ResNet (``torchvision`` layout, see
            :mod:`avlab.models.backbones.resnet`); None = random initialisation.
        weights_layout: the checkpoint's layout; None detects it from the key names.
    """

    def __init__(
        self,
        backbone: str = "convnextv2_atto",
        stages: Sequence[int] = (1, 2, 3),
        attn_dim: int | None = None,
        num_heads: int = 4,
        use_mhsa: bool = True,
        weights: str | None = None,
        weights_layout: str | None = None,
    ) -> None:
        super().__init__()
        if backbone.startswith("convnext"):
            import timm

            self.family = "convnext"
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
            # UNQA reads the stage maps (eq. 1); the classification head (final norm) is never used,
            # so it is removed: it would hold untrained parameters that no loss reaches.
            self.backbone.head = nn.Identity()
            if weights:
                load_convnext_weights(self.backbone, weights, weights_layout)
            all_widths = [int(info["num_chs"]) for info in self.backbone.feature_info]
        elif backbone in RESNETS:
            self.family = "resnet"
            self.backbone = build_resnet(backbone)
            if weights:
                load_resnet_weights(self.backbone, weights, weights_layout)
            all_widths = resnet_widths(self.backbone)
        else:
            raise ConfigError(
                "model.net.spatial.backbone must be a timm ConvNeXt (V2) model (e.g. convnextv2_atto) "
                f"or a torchvision ResNet ({', '.join(RESNETS)}), got {backbone!r}"
            )
        self.stages = tuple(int(s) for s in stages)
        n_stages = len(all_widths)
        if (
            not self.stages
            or any(s < 0 or s >= n_stages for s in self.stages)
            or list(self.stages) != sorted(self.stages)
        ):
            raise ConfigError(
                f"model.net.spatial.stages must be increasing indices in 0..{n_stages - 1}, "
                f"got {list(stages)}"
            )
        widths = [all_widths[s] for s in self.stages]
        self.channels = int(sum(widths))
        self.use_mhsa = bool(use_mhsa)
        d = int(attn_dim or self.channels)
        if d % num_heads:
            raise ConfigError(
                f"model.net.spatial.attn_dim ({d}) must be divisible by num_heads ({num_heads})"
            )
        if self.use_mhsa:
            self.conv_in = nn.Conv2d(self.channels, d, 1)
            self.mhsa = nn.MultiheadAttention(d, num_heads, batch_first=True)
            self.conv_out = nn.Conv2d(d, self.channels, 1)
        # ImageNet statistics: inputs arrive in [0, 1].
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.out_dim = 2 * self.channels

    def frame_features(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] → ``[N, 2·ΣC_i]`` (eq. 1–6) for single frames."""
        x = (x - self.mean) / self.std
        if self.family == "resnet":
            x, stage_modules = resnet_stem(self.backbone, x), resnet_stages(self.backbone)
        else:
            x, stage_modules = self.backbone.stem(x), list(self.backbone.stages)
        maps = []
        for i, stage in enumerate(stage_modules):
            x = stage(x)
            if i in self.stages:
                maps.append(x)
            if i >= self.stages[-1]:
                break
        h, w = maps[-1].shape[-2:]
        # Eq. 1: average-pool the shallower maps to the last used stage's H_N × W_N.
        pooled = [F.adaptive_avg_pool2d(m, (h, w)) if m.shape[-2:] != (h, w) else m for m in maps]
        feat = torch.cat(pooled, dim=1)  # eq. 2
        if self.use_mhsa:
            q = self.conv_in(feat)
            n, d, hh, ww = q.shape
            tokens = q.flatten(2).transpose(1, 2)  # [N, H·W, d]: MHSA over spatial positions
            att, _ = self.mhsa(tokens, tokens, tokens, need_weights=False)
            feat = feat + self.conv_out(att.transpose(1, 2).reshape(n, d, hh, ww))  # eq. 3
        mu = feat.mean(dim=(2, 3))  # eq. 4
        sigma = feat.flatten(2).std(dim=2, unbiased=False)  # eq. 5
        return torch.cat([mu, sigma], dim=1)  # eq. 6

    def forward(self, frames: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` (T = 1 for images) → ``[B, out_dim]``; frames are averaged over T."""
        if frames.dim() != 5:
            raise ValueError(f"SpatialExtractor expects [B, T, 3, H, W], got {list(frames.shape)}")
        b, t = frames.shape[:2]
        # The paper reshapes B×T into the batch (images are single-frame videos); the clip-level
        # spatial feature is the mean of its frames' features.
        feats = self.frame_features(frames.flatten(0, 1))
        return feats.view(b, t, -1).mean(dim=1)


# =========================================================================== motion (eq. 7)
class MotionExtractor(nn.Module):
    """Frozen SlowFast motion feature F_m (eq. 7); always in eval mode, never trained.

    Args:
        depths, width, alpha, beta_inv, fusion_ratio, fusion_kernel, slow_kernels, fast_kernels,
        fast_stem_kernel, slow_sampling: the :class:`~avlab.models.backbones.slowfast.SlowFast`
            architecture; the defaults are Kinetics ``SLOWFAST_8x8_R50`` (alpha 4, beta 1/8,
            lateral kernel 7), which its public checkpoints need.
        weights: local Kinetics checkpoint (``pytorchvideo``, ``slowfast`` or ``avlab`` layout);
            None = a deterministic random initialisation seeded by ``init_seed`` (so cached
            features stay valid across runs and seeds).
        weights_layout: the checkpoint's layout; None detects it from the key names.
        init_seed: seed of the random initialisation.

    :attr:`signature` describes the network completely (architecture, seed, and the weights file's
    SHA-256), so features cached under it are recomputed whenever any of them changes.
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        alpha: int = 4,
        beta_inv: int = 8,
        weights: str | None = None,
        init_seed: int = 0,
        fusion_ratio: int = 2,
        fusion_kernel: int = 7,
        slow_kernels: Sequence[int] = (1, 1, 3, 3),
        fast_kernels: Sequence[int] = (3, 3, 3, 3),
        fast_stem_kernel: int = 5,
        slow_sampling: str = "linspace",
        weights_layout: str | None = None,
    ) -> None:
        super().__init__()
        arch = {
            "depths": [int(d) for d in depths],
            "width": int(width),
            "alpha": int(alpha),
            "beta_inv": int(beta_inv),
            "fusion_ratio": int(fusion_ratio),
            "fusion_kernel": int(fusion_kernel),
            "slow_kernels": [int(k) for k in slow_kernels],
            "fast_kernels": [int(k) for k in fast_kernels],
            "fast_stem_kernel": int(fast_stem_kernel),
            "slow_sampling": str(slow_sampling),
        }
        with _fork_init(init_seed):
            torch.manual_seed(int(init_seed))
            self.net = SlowFast(**arch)
        self.weights = weights
        weights_sha256 = None
        if weights:
            load_slowfast_weights(self.net, weights, weights_layout)
            weights_sha256 = file_sha256(weights)
        self.out_dim = self.net.out_dim
        self.alpha = int(alpha)
        self.signature = {
            **arch,
            "init_seed": int(init_seed),
            "weights": str(weights) if weights else None,
            "weights_sha256": weights_sha256,
        }
        for p in self.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> MotionExtractor:
        # The extractor is frozen: BatchNorm must keep its (pretrained) statistics.
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, clip: Tensor) -> Tensor:
        return self.net(clip)


# =========================================================================== audio (Fig. 5)
class _FrameCNN(nn.Module):
    """Framewise module: a small 2-D CNN over one mel segment ``[1, n_mels, seg_len]`` → ``dim``."""

    def __init__(self, dim: int, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_prev, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d((2, 2), ceil_mode=True))
            c_prev = c
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(c_prev, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.body(x).mean(dim=(2, 3)))


class AudioExtractor(nn.Module):
    """Mel segments → framewise CNN → self-attention → attention pooling (Fig. 5, NISQA-style).

    Args:
        sample_rate: expected input rate (the datamodule resamples to it).
        n_mels, n_fft, hop: log-mel spectrogram settings (window ``n_fft``, hann).
        seg_len, seg_hop: mel frames per segment and the hop between overlapping segments.
        dim: feature width d_a; num_heads, num_layers: the time-dependency Transformer.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 48,
        n_fft: int = 512,
        hop: int = 160,
        seg_len: int = 15,
        seg_hop: int = 4,
        dim: int = 128,
        num_heads: int = 4,
        num_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        import librosa

        self.sample_rate, self.n_fft, self.hop = int(sample_rate), int(n_fft), int(hop)
        self.seg_len, self.seg_hop = int(seg_len), int(seg_hop)
        mel = librosa.filters.mel(
            sr=self.sample_rate, n_fft=self.n_fft, n_mels=n_mels, fmax=self.sample_rate / 2
        )
        self.register_buffer("mel_fb", torch.as_tensor(mel, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.frame_cnn = _FrameCNN(dim)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True
        )
        self.time = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pos = nn.Parameter(torch.zeros(1, 512, dim))
        self.att_pool = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.out_dim = int(dim)

    def log_mel(self, wave: Tensor) -> Tensor:
        """``[B, n]`` → ``[B, n_mels, frames]`` log-mel (dB, floor −80 dB relative to 1)."""
        spec = (
            torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, return_complex=True).abs()
            ** 2
        )
        mel = torch.matmul(self.mel_fb, spec)
        return 10.0 * torch.log10(mel.clamp_min(1e-8)) / 20.0  # /20: keeps the CNN input near unit scale

    def forward(self, wave: Tensor, length: Tensor | None = None) -> Tensor:
        """``[B, n]`` waveforms (zero-padded; ``length`` = valid samples per item) → ``[B, dim]``."""
        mel = self.log_mel(wave)
        b, n_mels, frames = mel.shape
        if frames < self.seg_len:
            mel = F.pad(mel, (0, self.seg_len - frames))
            frames = self.seg_len
        segs = mel.unfold(2, self.seg_len, self.seg_hop)  # [B, n_mels, S, seg_len]
        s = segs.shape[2]
        x = self.frame_cnn(segs.permute(0, 2, 1, 3).reshape(b * s, 1, n_mels, self.seg_len)).view(b, s, -1)
        if s > self.pos.shape[1]:
            raise ValueError(
                f"AudioExtractor: {s} segments exceed the positional table ({self.pos.shape[1]}); "
                "shorten the audio"
            )
        x = x + self.pos[:, :s]
        mask = None
        if length is not None:
            valid_frames = (length.to(x.device) // self.hop) + 1
            n_valid = ((valid_frames - self.seg_len).clamp_min(0) // self.seg_hop + 1).clamp(1, s)
            mask = torch.arange(s, device=x.device)[None, :] >= n_valid[:, None]  # True = padding
        x = self.time(x, src_key_padding_mask=mask)
        score = self.att_pool(x).squeeze(-1)
        if mask is not None:
            score = score.masked_fill(mask, float("-inf"))
        w = torch.softmax(score, dim=1)
        return (w.unsqueeze(-1) * x).sum(dim=1)


# =========================================================================== regressors (eq. 8)
class _TokenTransformer(nn.Module):
    """Table IX "Transformer" regressor: one shared head over tokens of the available features."""

    def __init__(
        self, dims: dict[str, int], d_model: int = 128, num_heads: int = 4, hidden: int = 128
    ) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({k: nn.Linear(d, d_model) for k, d in dims.items()})
        self.type_emb = nn.ParameterDict({k: nn.Parameter(torch.zeros(1, d_model)) for k in dims})
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = MLPHead(d_model, [hidden], 1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        tokens = [self.proj[k](v) + self.type_emb[k] for k, v in feats.items()]
        b = tokens[0].shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), torch.stack(tokens, dim=1)], dim=1)
        return self.head(self.encoder(x)[:, 0]).squeeze(-1)


class UNQANet(nn.Module):
    """Extractors + regressors of UNQA.

    Args:
        spatial, motion, audio: the three extractors; set one to ``null`` for the "w/o S/M/A"
            ablations of Table VII (eq. 8 then drops that feature; a modality left with no feature
            cannot be scored and its databases must be dropped from the config).
        regressor: ``modality`` (paper: four regressors), ``mlp`` (one MLP over the zero-filled
            concatenation) or ``transformer`` (one Transformer over feature tokens) — Table IX.
        hidden: hidden width of every two-FC-layer regressor.
        dropout: dropout between the two FC layers.
    """

    def __init__(
        self,
        spatial: SpatialExtractor | None = None,
        motion: MotionExtractor | None = None,
        audio: AudioExtractor | None = None,
        regressor: str = "modality",
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial, self.motion, self.audio = spatial, motion, audio
        if regressor not in ("modality", "mlp", "transformer"):
            raise ConfigError(f"model.net.regressor must be modality, mlp or transformer, got {regressor!r}")
        self.regressor = regressor
        self.hidden, self.dropout = int(hidden), float(dropout)
        self.dims = {k: m.out_dim for k, m in (("s", spatial), ("m", motion), ("a", audio)) if m is not None}
        if not self.dims:
            raise ConfigError("model.net needs at least one of spatial, motion and audio")
        if regressor == "modality":
            self.modality_heads = nn.ModuleDict(
                {m: self._head(self.feature_dim(m)) for m in MODALITIES if self.feature_keys(m)}
            )
        elif regressor == "mlp":
            self.shared_head = self._head(sum(self.dims.values()))
        else:
            self.shared_head = _TokenTransformer(self.dims, hidden=self.hidden)
        self.database_heads = nn.ModuleDict()
        self.database_modality: dict[str, str] = {}

    def _head(self, in_dim: int) -> MLPHead:
        # "two fully connected layers" (§III-D)
        return MLPHead(in_dim, [self.hidden], 1, activation="relu", dropout=self.dropout)

    # ------------------------------------------------------------------ feature sets (eq. 8)
    def feature_keys(self, modality: str) -> tuple[str, ...]:
        """Eq. 8 feature set of ``modality`` restricted to the enabled extractors."""
        return tuple(k for k in FEATURES_OF[modality] if k in self.dims)

    def feature_dim(self, modality: str) -> int:
        return sum(self.dims[k] for k in self.feature_keys(modality))

    def can_score(self, modality: str) -> bool:
        return bool(self.feature_keys(modality))

    def add_database_heads(self, databases: Mapping[str, str]) -> None:
        """Step one's M database-specific regressors, ``{name: modality}``, in a fixed order."""
        for name in sorted(databases):
            modality = databases[name]
            if modality not in FEATURES_OF:
                raise ConfigError(
                    f"database `{name}`: unsupported modality {modality!r}; "
                    f"use one of {', '.join(MODALITIES)}"
                )
            if not self.can_score(modality):
                continue
            self.database_heads[name] = self._head(self.feature_dim(modality))
            self.database_modality[name] = modality

    def extract(
        self,
        frames: Tensor | None = None,
        motion: Tensor | None = None,
        wave: Tensor | None = None,
        wave_len: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Run the available extractors; ``motion`` is the (cached) F_m of eq. 7."""
        out: dict[str, Tensor] = {}
        if frames is not None and self.spatial is not None:
            out["s"] = self.spatial(frames)
        if motion is not None and self.motion is not None:
            out["m"] = motion
        if wave is not None and self.audio is not None:
            out["a"] = self.audio(wave, wave_len)
        return out

    def _concat(self, feats: dict[str, Tensor], modality: str) -> Tensor:
        keys = self.feature_keys(modality)
        missing = [k for k in keys if k not in feats]
        if missing:
            raise ValueError(f"{modality} input lacks features {missing}")
        return torch.cat([feats[k] for k in keys], dim=1)  # eq. 8

    def _shared(self, feats: dict[str, Tensor], modality: str) -> Tensor:
        keys = self.feature_keys(modality)
        if self.regressor == "transformer":
            return self.shared_head({k: feats[k] for k in keys})
        b = next(iter(feats.values())).shape[0]
        ref = next(iter(feats.values()))
        # Single MLP: absent features are zero-filled so every modality shares one input layout.
        parts = [feats[k] if k in keys else ref.new_zeros(b, d) for k, d in self.dims.items()]
        return self.shared_head(torch.cat(parts, dim=1)).squeeze(-1)

    def modality_score(
        self, feats: dict[str, Tensor], modality: str, has_audio: Tensor | None = None
    ) -> Tensor:
        """Score with the modality regressor; AV items without audio use the video regressor."""
        if modality == "av" and has_audio is not None and not bool(has_audio.all()):
            out = torch.empty(
                has_audio.shape[0], device=has_audio.device, dtype=next(iter(feats.values())).dtype
            )
            with_a, without = has_audio.bool(), ~has_audio.bool()
            if with_a.any():
                out[with_a] = self.modality_score({k: v[with_a] for k, v in feats.items()}, "av")
            if without.any():
                sub = {k: v[without] for k, v in feats.items() if k != "a"}
                out[without] = self.modality_score(sub, "video")
            return out
        if self.regressor != "modality":
            return self._shared(feats, modality)
        if modality not in self.modality_heads:
            raise ConfigError(
                f"no regressor for {modality} inputs: "
                f"its eq. 8 features {FEATURES_OF[modality]} are all disabled"
            )
        return self.modality_heads[modality](self._concat(feats, modality)).squeeze(-1)

    def database_score(self, feats: dict[str, Tensor], database: str) -> Tensor:
        """Step one: score with the database-specific regressor of ``database``."""
        if database not in self.database_heads:
            raise ConfigError(f"database `{database}` has no step-one regressor (is it in model.databases?)")
        modality = self.database_modality[database]
        return self.database_heads[database](self._concat(feats, modality)).squeeze(-1)

    # ------------------------------------------------------------------ parameter groups for the schedule
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parts that the three-step schedule freezes or trains."""
        groups: dict[str, list[nn.Parameter]] = {
            "spatial": [],
            "audio": [],
            "database_heads": [],
            "modality_heads": [],
        }
        if self.spatial is not None:
            groups["spatial"] = list(self.spatial.parameters())
        if self.audio is not None:
            groups["audio"] = list(self.audio.parameters())
        groups["database_heads"] = list(self.database_heads.parameters())
        groups["modality_heads"] = (
            list(self.modality_heads.parameters())
            if self.regressor == "modality"
            else list(self.shared_head.parameters())
        )
        return groups


# =========================================================================== MDT (Table V)
class MixedDatabaseMapping(nn.Module):
    """Stages two and three of mixed database training (MDT; Li, Jiang and Jiang, "Unified quality
    assessment of in-the-wild videos with mixed datasets training", IJCV 2021, §3), the strategy that
    UNQA's Table V compares with. Stage one, the relative quality assessor, is the UNQA network with
    its modality regressors; this module turns its raw output ``x`` into the three scores that the
    MDT losses (:func:`avlab.losses.mdt_loss`) read:

    * relative quality ``q = σ(x)``: Li et al. bound the assessor's output to (0, 1);
    * perceptual quality ``p = σ(a·q + b)`` — the nonlinear mapping, shared by every database. Li et
      al. call it a 4-parameter logistic ``β₁ + (β₂ − β₁)·σ(a·q + b)``; its output scale and offset
      (β₂ − β₁, β₁) are redundant with every database's linear alignment below, so, as in the
      authors' release, they are fixed at 1 and 0 and only ``a`` and ``b`` train. ``a = 2√3`` and
      ``b = −√3`` at the start map q ∈ (0, 1) onto [−√3, √3], the unit-variance span of a uniform
      variable, where the logistic is close to linear (the release's initialisation);
    * subjective quality of database d, ``Q_d = s_d·p + m_d`` — the database-specific perceptual
      scale alignment, a linear map per training database, initialised to the database's declared
      score range ``[lo, hi]`` (``s_d = hi − lo``, ``m_d = lo``), the release's initialisation with the
      documented range in place of the observed one (see :mod:`avlab.lightningmodules.unqa`).

    Args:
        ranges: ``{database: (lo, hi)}`` of the training databases (``data.databases``' ``mos_range``).
    """

    def __init__(self, ranges: Mapping[str, Sequence[float]]) -> None:
        super().__init__()
        if not ranges:
            raise ConfigError("MDT needs at least one training database (data.databases, role: train)")
        bad = {name: list(r) for name, r in ranges.items() if len(r) != 2 or not float(r[1]) > float(r[0])}
        if bad:
            raise ConfigError(
                f"MDT: every database needs a score range [low, high] with high > low, got {bad}"
            )
        root3 = float(np.sqrt(3.0))
        self.slope = nn.Parameter(torch.tensor(2.0 * root3))
        self.offset = nn.Parameter(torch.tensor(-root3))
        self.widths = {name: float(r[1]) - float(r[0]) for name, r in ranges.items()}
        self.scale = nn.ParameterDict({n: nn.Parameter(torch.tensor(w)) for n, w in self.widths.items()})
        self.shift = nn.ParameterDict({n: nn.Parameter(torch.tensor(float(r[0]))) for n, r in ranges.items()})

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Raw assessor output → (relative quality q, perceptual quality p), both in (0, 1)."""
        relative = torch.sigmoid(raw)
        return relative, torch.sigmoid(self.slope * relative + self.offset)

    def align(self, mapped: Tensor, database: str) -> Tensor:
        """Perceptual quality → the subjective scale of ``database`` (``Q_d = s_d·p + m_d``)."""
        if database not in self.scale:
            raise ConfigError(
                f"MDT has no scale alignment for database `{database}` (only training databases get one)"
            )
        return self.scale[database] * mapped + self.shift[database]

    def width(self, database: str) -> float:
        """Width of ``database``'s declared score range (the error-induced loss divides by it)."""
        return self.widths[database]


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def uniform_indices(n: int, k: int) -> np.ndarray:
    """``k`` frame indices spread uniformly over ``n`` frames (repeats when ``n < k``)."""
    if n <= 0:
        raise ValueError("uniform_indices: no frames")
    return np.clip(np.round(np.linspace(0, n - 1, k)).astype(int), 0, n - 1) if k > 1 else np.array([n // 2])

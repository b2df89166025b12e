"""SlowFast (Feichtenhofer et al., ICCV 2019), the UNQA motion backbone, and its checkpoint layouts.

Architecture (defaults = Kinetics ``SLOWFAST_8x8_R50``: ``depths (3, 4, 6, 3)``, ``width 64``,
``alpha 4``, ``beta_inv 8``, ``fusion_ratio 2``, ``fusion_kernel 7``):

* stems: slow ``(1, 7, 7)`` conv with ``width`` channels, fast ``(5, 7, 7)`` with
  ``width / beta_inv``, both stride ``(1, 2, 2)``, BN, ReLU, then max-pool ``(1, 3, 3)`` stride
  ``(1, 2, 2)``;
* res2–res5: bottleneck blocks (``Tx1x1``, ``1x3x3`` carrying the spatial stride, ``1x1x1``; a
  projection shortcut on each stage's first block), temporal kernels 1/1/3/3 (slow) and 3/3/3/3
  (fast), inner widths ``width·2^i`` (slow) and ``width/beta_inv·2^i`` (fast), outputs four times
  that;
* lateral fusion after the stem and after res2–res4: a ``(fusion_kernel, 1, 1)`` conv with temporal
  stride ``alpha`` to ``fusion_ratio ×`` the fast channels, BN, ReLU, concatenated to the slow path;
* output: global-average-pooled slow and fast features, concatenated (2048 + 256 = 2304 for R50).

The slow pathway sees ``T / alpha`` frames chosen by ``slow_sampling``: ``linspace`` picks
``linspace(0, T − 1, T / alpha)`` rounded down, as both upstream codes' ``PackPathway`` do;
``stride`` takes every ``alpha``-th frame.

Layouts:

* ``pytorchvideo``: ``pytorchvideo.models.hub.slowfast_r50`` / ``create_slowfast``
  (``blocks.0.multipathway_blocks.{0,1}.conv/norm``, ``blocks.N.multipathway_fusion.
  conv_fast_to_slow/norm``, ``blocks.N.multipathway_blocks.P.res_blocks.M.branch1_conv/branch1_norm/
  branch2.conv_a/norm_a/...``); the classifier ``blocks.6.proj`` is ignored.
* ``slowfast``: facebookresearch/SlowFast's ``model_state`` (``slowfast/models/
  video_model_builder.py``, ``stem_helper.py``, ``resnet_helper.py``): ``s1.pathway{0,1}_stem.conv/bn``,
  ``s{1..4}_fuse.conv_f2s/bn``,
  ``s{2..5}.pathway{0,1}_res{M}.branch1/branch1_bn/branch2.a/a_bn/b/b_bn/c/c_bn``;
  the classifier ``head.*`` is ignored. (Files in its Caffe2 format must first be converted by
  that repository.)
* ``avlab``: this module's own names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.models.pretrained import Layout, load_pretrained

__all__ = ["SLOWFAST_LAYOUTS", "SlowFast", "load_slowfast_weights"]

_PATHWAY = ("slow", "fast")


class _Bottleneck3d(nn.Module):
    """ResNet bottleneck with a temporal kernel in the first conv (SlowFast's "res" block)."""

    def __init__(self, c_in: int, c_inner: int, c_out: int, kt: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv3d(c_in, c_inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.a_bn = nn.BatchNorm3d(c_inner)
        self.b = nn.Conv3d(
            c_inner, c_inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.b_bn = nn.BatchNorm3d(c_inner)
        self.c = nn.Conv3d(c_inner, c_out, 1, bias=False)
        self.c_bn = nn.BatchNorm3d(c_out)
        self.shortcut = None
        if c_in != c_out or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.a_bn(self.a(x)))
        y = F.relu(self.b_bn(self.b(y)))
        y = self.c_bn(self.c(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def _stage(c_in: int, c_inner: int, c_out: int, depth: int, kt: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *[
            _Bottleneck3d(c_in if i == 0 else c_out, c_inner, c_out, kt, stride if i == 0 else 1)
            for i in range(depth)
        ]
    )


class SlowFast(nn.Module):
    """SlowFast network; every architectural constant is an argument (see the module doc).

    ``depths=(3, 4, 6, 3), width=64`` is R50; CPU demos use e.g. ``depths=(1, 1, 1, 1), width=16``,
    which keeps the topology (a reduced variant that no published checkpoint fits).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        alpha: int = 4,
        beta_inv: int = 8,
        fusion_ratio: int = 2,
        fusion_kernel: int = 7,
        slow_kernels: Sequence[int] = (1, 1, 3, 3),
        fast_kernels: Sequence[int] = (3, 3, 3, 3),
        fast_stem_kernel: int = 5,
        slow_sampling: str = "linspace",
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(slow_kernels) != 4 or len(fast_kernels) != 4:
            raise ConfigError(
                "model.net.motion.depths, slow_kernels and fast_kernels must list 4 values "
                f"(res2..res5), got {list(depths)}, {list(slow_kernels)}, {list(fast_kernels)}"
            )
        if width % beta_inv:
            raise ConfigError(f"model.net.motion.width ({width}) must be divisible by beta_inv ({beta_inv})")
        if slow_sampling not in ("linspace", "stride"):
            raise ConfigError(
                f"model.net.motion.slow_sampling must be linspace or stride, got {slow_sampling!r}"
            )
        self.alpha, self.slow_sampling = int(alpha), slow_sampling
        ws, wf = int(width), int(width) // int(beta_inv)
        self.slow_stem = nn.Sequential(
            nn.Conv3d(3, ws, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(ws),
            nn.ReLU(inplace=True),
        )
        kf = int(fast_stem_kernel)
        self.fast_stem = nn.Sequential(
            nn.Conv3d(3, wf, (kf, 7, 7), stride=(1, 2, 2), padding=(kf // 2, 3, 3), bias=False),
            nn.BatchNorm3d(wf),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.ModuleList()
        self.slow_stages = nn.ModuleList()
        self.fast_stages = nn.ModuleList()
        slow_c, fast_c = ws, wf
        for i, depth in enumerate(depths):
            # Lateral fusion before res2..res5 (i.e. after the stem and after res2..res4).
            self.fuse.append(
                nn.Sequential(
                    nn.Conv3d(
                        fast_c,
                        fusion_ratio * fast_c,
                        (fusion_kernel, 1, 1),
                        stride=(self.alpha, 1, 1),
                        padding=(fusion_kernel // 2, 0, 0),
                        bias=False,
                    ),
                    nn.BatchNorm3d(fusion_ratio * fast_c),
                    nn.ReLU(inplace=True),
                )
            )
            stride = 1 if i == 0 else 2
            inner_s, inner_f = ws * 2**i, wf * 2**i
            self.slow_stages.append(
                _stage(
                    slow_c + fusion_ratio * fast_c, inner_s, 4 * inner_s, depth, int(slow_kernels[i]), stride
                )
            )
            self.fast_stages.append(_stage(fast_c, inner_f, 4 * inner_f, depth, int(fast_kernels[i]), stride))
            slow_c, fast_c = 4 * inner_s, 4 * inner_f
        self.slow_dim, self.fast_dim = slow_c, fast_c
        self.out_dim = slow_c + fast_c
        # Kinetics normalisation of both upstream codes (DATA.MEAN 0.45, DATA.STD 0.225).
        self.register_buffer("mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.225, 0.225, 0.225]).view(1, 3, 1, 1, 1), persistent=False)

    def slow_frames(self, clip: Tensor) -> Tensor:
        """The slow pathway's ``T / alpha`` frames of ``clip [B, 3, T, H, W]``."""
        t = clip.shape[2]
        if self.slow_sampling == "stride" or t < self.alpha:
            return clip[:, :, :: self.alpha]
        idx = torch.linspace(0, t - 1, t // self.alpha).long().to(clip.device)
        return clip.index_select(2, idx)

    def features(self, slow: Tensor, fast: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised slow and fast inputs → the res5 maps of both pathways."""
        slow = F.max_pool3d(self.slow_stem(slow), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        fast = F.max_pool3d(self.fast_stem(fast), (1, 3, 3), (1, 2, 2), (0, 1, 1))
        for fuse, s_stage, f_stage in zip(self.fuse, self.slow_stages, self.fast_stages):
            lateral = fuse(fast)
            if lateral.shape[2] != slow.shape[2]:  # odd frame counts: align the temporal length
                lateral = F.adaptive_avg_pool3d(lateral, slow.shape[2:])
            slow = s_stage(torch.cat([slow, lateral], dim=1))
            fast = f_stage(fast)
        return slow, fast

    def forward(self, clip: Tensor) -> Tensor:
        """``[B, 3, T, H, W]`` in [0, 1] (T a multiple of ``alpha``) → ``[B, out_dim]``."""
        clip = (clip - self.mean) / self.std
        slow, fast = self.features(self.slow_frames(clip), clip)
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)


# --------------------------------------------------------------------------- layouts
_PTV_BLOCK = {
    "conv_a": "a",
    "norm_a": "a_bn",
    "conv_b": "b",
    "norm_b": "b_bn",
    "conv_c": "c",
    "norm_c": "c_bn",
}


def _pytorchvideo_rename(key: str) -> str | None:
    m = re.fullmatch(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)\.(\w+)", key)
    if m:
        return f"{_PATHWAY[int(m.group(1))]}_stem.{int(m.group(2) == 'norm')}.{m.group(3)}"
    m = re.fullmatch(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", key)
    if m:
        return f"fuse.{m.group(1)}.{int(m.group(2) == 'norm')}.{m.group(3)}"
    m = re.fullmatch(r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(.+)\.(\w+)", key)
    if m is None:
        return None
    stage, path, block, part, param = m.groups()
    prefix = f"{_PATHWAY[int(path)]}_stages.{int(stage) - 1}.{block}"
    if part in ("branch1_conv", "branch1_norm"):
        return f"{prefix}.shortcut.{int(part == 'branch1_norm')}.{param}"
    if part.startswith("branch2.") and part[len("branch2.") :] in _PTV_BLOCK:
        return f"{prefix}.{_PTV_BLOCK[part[len('branch2.') :]]}.{param}"
    return None


def _slowfast_rename(key: str) -> str | None:
    m = re.fullmatch(r"s1\.pathway([01])_stem\.(conv|bn)\.(\w+)", key)
    if m:
        return f"{_PATHWAY[int(m.group(1))]}_stem.{int(m.group(2) == 'bn')}.{m.group(3)}"
    m = re.fullmatch(r"s([1-4])_fuse\.(conv_f2s|bn)\.(\w+)", key)
    if m:
        return f"fuse.{int(m.group(1)) - 1}.{int(m.group(2) == 'bn')}.{m.group(3)}"
    m = re.fullmatch(
        r"s([2-5])\.pathway([01])_res(\d+)\.(branch1|branch1_bn|branch2\.(?:a|a_bn|b|b_bn|c|c_bn))\.(\w+)",
        key,
    )
    if m is None:
        return None
    stage, path, block, part, param = m.groups()
    prefix = f"{_PATHWAY[int(path)]}_stages.{int(stage) - 2}.{block}"
    if part.startswith("branch1"):
        return f"{prefix}.shortcut.{int(part == 'branch1_bn')}.{param}"
    return f"{prefix}.{part[len('branch2.') :]}.{param}"


SLOWFAST_LAYOUTS = (
    Layout(
        "pytorchvideo",
        "pytorchvideo.models.slowfast.create_slowfast / hub.slowfast_r50",
        detect=lambda keys: any(".multipathway_blocks." in k for k in keys),
        rename=_pytorchvideo_rename,
        ignore=(r"blocks\.\d+\.proj\..*",),
    ),
    Layout(
        "slowfast",
        "facebookresearch/SlowFast video_model_builder.SlowFast (model_state)",
        detect=lambda keys: any(re.match(r"s1\.pathway0_stem\.", k) for k in keys),
        rename=_slowfast_rename,
        ignore=(r"head\..*",),
    ),
    Layout(
        "avlab",
        "avlab.models.backbones.slowfast.SlowFast",
        detect=lambda keys: any(k.startswith("slow_stem.") for k in keys),
        rename=lambda k: k,
    ),
)


def load_slowfast_weights(
    net: SlowFast, path: str, layout: str | None = None, config_key: str = "model.net.motion.weights"
) -> int:
    """Load a SlowFast checkpoint (layout detected or named) into ``net``; tensors loaded."""
    return load_pretrained(net, path, SLOWFAST_LAYOUTS, config_key, layout).loaded

"""S3D (Xie et al. 2018), the AVRSP visual backbone, and its two Kinetics checkpoint layouts.

The network is torchvision's ``s3d().features`` (16 modules). Two public Kinetics-400 layouts load
into it:

* ``torchvision``: ``features.N.*`` (torchvision's own ``S3D_Weights.KINETICS400_V1`` file);
  ``classifier.*`` is ignored.
* ``kylemin``: the ``S3D_kinetics400.pt`` of the kylemin/S3D repository (``model.py``), used by
  TASED-Net and ViNet: ``base.N.*`` with ``BasicConv3d`` = (``conv``, ``bn``), ``SepConv3d`` =
  (``conv_s``, ``bn_s``, ``conv_t``, ``bn_t``) and Inception blocks whose ``branch0`` is wrapped in
  a one-element ``Sequential``; ``fc.*`` is ignored. TASED/ViNet split ``base`` into
  ``base1..base4`` starting at modules 0, 5, 8 and 14; those names are accepted too.

Both define the same modules in the same order (BatchNorm eps 1e-3, momentum 1e-3), so the mapping
is a renaming of module paths, checked tensor by tensor.
"""

from __future__ import annotations

import logging
import re
from functools import partial

from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.models.pretrained import Layout, load_pretrained

__all__ = ["S3D_BLOCKS", "S3D_LAYOUTS", "S3DEncoder", "build_s3d_features", "load_s3d_weights"]

log = logging.getLogger(__name__)

#: ``features`` slices of the four encoder blocks: X0 (finest) .. X3 (coarsest).
S3D_BLOCKS = ((0, 4), (4, 7), (7, 13), (13, 16))
#: First ``base`` module of TASED/ViNet's ``base1..base4``.
_TASED_SPLIT = (0, 5, 8, 14)


def build_s3d_features(width_mult: float = 1.0) -> nn.Sequential:
    """S3D's 16 feature modules: torchvision's exactly at ``width_mult=1``, else with scaled widths.

    The reduced variants keep the topology (every conv, pool and stride) and multiply every channel
    count by ``width_mult`` (at least 4) — a CPU-sized stand-in for demos and tests, not a published
    network; only ``width_mult=1`` can load Kinetics weights.
    """
    from torchvision.models.video import s3d
    from torchvision.models.video.s3d import SepInceptionBlock3D, TemporalSeparableConv
    from torchvision.ops.misc import Conv3dNormActivation

    if width_mult == 1.0:
        return s3d(weights=None).features
    if not 0 < width_mult < 1:
        raise ConfigError(f"model.visual.width_mult must be in (0, 1], got {width_mult}")

    def c(n: int) -> int:
        return max(4, round(n * width_mult))

    norm = partial(nn.BatchNorm3d, eps=0.001, momentum=0.001)

    def inception(in_planes: int, *outs: int) -> tuple[SepInceptionBlock3D, int]:
        b0, b1m, b1, b2m, b2, b3 = (c(o) for o in outs)
        return SepInceptionBlock3D(in_planes, b0, b1m, b1, b2m, b2, b3, norm), b0 + b1 + b2 + b3

    layers: list[nn.Module] = [
        TemporalSeparableConv(3, c(64), 7, 2, 3, norm),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        Conv3dNormActivation(c(64), c(64), kernel_size=1, stride=1, norm_layer=norm),
        TemporalSeparableConv(c(64), c(192), 3, 1, 1, norm),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    ]
    ch = c(192)
    for spec in ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)):
        block, ch = inception(ch, *spec)
        layers.append(block)
    layers.append(nn.MaxPool3d(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1)))
    for spec in (
        (192, 96, 208, 16, 48, 64),
        (160, 112, 224, 24, 64, 64),
        (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64),
        (256, 160, 320, 32, 128, 128),
    ):
        block, ch = inception(ch, *spec)
        layers.append(block)
    layers.append(nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0)))
    for spec in ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)):
        block, ch = inception(ch, *spec)
        layers.append(block)
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- layouts
def _torchvision_rename(key: str) -> str | None:
    return key[len("features.") :] if key.startswith("features.") else None


#: kylemin's module names → torchvision's Conv3dNormActivation / TemporalSeparableConv indices.
_KYLEMIN_PARTS = (
    ("conv_s.", "0.0."),
    ("bn_s.", "0.1."),
    ("conv_t.", "1.0."),
    ("bn_t.", "1.1."),
    ("conv.", "0."),
    ("bn.", "1."),
)


def _kylemin_rename(key: str) -> str | None:
    m = re.fullmatch(r"base(\d?)\.(\d+)\.(.+)", key)
    if m is None:
        return None
    split, index, rest = m.groups()
    if split and not 1 <= int(split) <= 4:
        return None
    i = int(index) + (_TASED_SPLIT[int(split) - 1] if split else 0)
    rest = re.sub(r"^branch0\.0\.", "branch0.", rest)  # kylemin wraps branch0's conv in a Sequential
    head, _, param = rest.rpartition(".")
    path = head + "."
    for old, new in _KYLEMIN_PARTS:
        if path == old or path.endswith("." + old):
            path = path[: len(path) - len(old)] + new
            break
    else:
        return None
    return f"{i}.{path}{param}"


S3D_LAYOUTS = (
    Layout(
        "torchvision",
        "torchvision.models.video.s3d: features.N.*",
        detect=lambda keys: any(k.startswith("features.") for k in keys),
        rename=_torchvision_rename,
        ignore=(r"classifier\..*",),
    ),
    Layout(
        "kylemin",
        "kylemin/S3D model.py (S3D_kinetics400.pt): base.N.*, or TASED/ViNet's base1..base4",
        detect=lambda keys: any(re.match(r"base\d?\.\d+\.", k) for k in keys),
        rename=_kylemin_rename,
        ignore=(r"fc\..*",),
    ),
)


def load_s3d_weights(
    features: nn.Sequential, path: str, layout: str | None = None, config_key: str = "model.visual.weights"
) -> int:
    """Load a Kinetics S3D checkpoint (layout detected or named) into ``features``; tensors loaded."""
    return load_pretrained(features, path, S3D_LAYOUTS, config_key, layout).loaded


# --------------------------------------------------------------------------- encoder
class S3DEncoder(nn.Module):
    """S3D visual backbone (torchvision's architecture) returning its four block outputs.

    Args:
        weights: optional local Kinetics checkpoint (``torchvision`` or ``kylemin`` layout);
            default random initialisation.
        weights_layout: the checkpoint's layout; None detects it from the key names.
        width_mult: channel multiplier; 1.0 is the real S3D (needed for ``weights``).
        freeze: keep the backbone's parameters fixed (BatchNorm statistics too).

    ``forward(x [B, 3, T, H, W])`` → ``[X0, X1, X2, X3]``, for a 32×224×384 clip
    192×16×56×96, 480×16×28×48, 832×8×14×24 and 1024×4×7×12.
    """

    def __init__(
        self,
        weights: str | None = None,
        width_mult: float = 1.0,
        freeze: bool = False,
        weights_layout: str | None = None,
    ) -> None:
        super().__init__()
        features = build_s3d_features(width_mult)
        if weights:
            if width_mult != 1.0:
                raise ConfigError("model.visual.weights needs model.visual.width_mult=1.0 (the real S3D)")
            load_s3d_weights(features, weights, weights_layout)
        self.blocks = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in S3D_BLOCKS)
        self.width_mult, self.freeze = width_mult, freeze
        self.out_channels = [self._channels(block) for block in self.blocks]
        if freeze:
            self.requires_grad_(False)

    @staticmethod
    def _channels(block: nn.Sequential) -> int:
        from torchvision.models.video.s3d import SepInceptionBlock3D

        last = block[-1]
        if isinstance(last, SepInceptionBlock3D):  # an Inception block concatenates its four branches
            return sum(_last_conv(getattr(last, f"branch{i}")).out_channels for i in range(4))
        return _last_conv(last).out_channels

    def train(self, mode: bool = True) -> S3DEncoder:
        super().train(mode)
        if self.freeze:  # frozen BN keeps its Kinetics statistics
            for m in self.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


def _last_conv(module: nn.Module) -> nn.Conv3d:
    return [m for m in module.modules() if isinstance(m, nn.Conv3d)][-1]

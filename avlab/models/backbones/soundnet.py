"""SoundNet-8 (Aytar et al. 2016), conv1–conv7, the AVRSP audio backbone, and its checkpoint layouts.

Layers (out channels, kernel, stride, padding, max-pool after): conv1 16/64/2/32 + pool 8,
conv2 32/32/2/16 + pool 8, conv3 64/16/2/8, conv4 128/8/2/4, conv5 256/4/2/2 + pool 4,
conv6 512/4/2/2, conv7 1024/4/2/2; each conv is followed by BatchNorm (eps 1e-5) and ReLU. Features
are taken after conv7's ReLU; the conv8 classifier heads are not part of the backbone.

Layouts:

* ``stavis``: STAViS's ``soundnet8.pth`` (atsiami/STAViS ``models/resnet.py``): an
  ``nn.Sequential`` named ``soundnet8`` whose indices equal ours, but with ``(1, k)`` kernels on
  ``[B, 1, 1, L]`` inputs, so every conv kernel is stored transposed (``[o, i, 1, k]``). STAViS adds
  a final ``MaxPool2d((1, 2))`` after conv7, which has no tensors and which avlab leaves out (AVRSP
  takes the conv7 features).
* ``vinet``: ViNet's ``soundnet8_final.pth`` (``conv1..conv7``, ``batchnorm1..batchnorm7`` with
  ``(k, 1)`` kernels; ``conv8``/``conv8_2`` ignored).
* ``avlab``: this module's own ``net.N.*`` names (a file written by avlab).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.models.pretrained import Layout, load_pretrained

__all__ = ["SOUNDNET_LAYOUTS", "SoundNet8", "load_soundnet_weights"]

#: SoundNet-8 conv1..conv7: (out channels, kernel, stride, padding, max-pool after).
SOUNDNET8 = (
    (16, 64, 2, 32, 8),
    (32, 32, 2, 16, 8),
    (64, 16, 2, 8, 0),
    (128, 8, 2, 4, 0),
    (256, 4, 2, 2, 4),
    (512, 4, 2, 2, 0),
    (1024, 4, 2, 2, 0),
)


def _conv_indices() -> list[int]:
    """Index of conv1..conv7 in the ``nn.Sequential`` (conv, BN, ReLU[, pool]) — STAViS's too."""
    out, i = [], 0
    for *_, pool in SOUNDNET8:
        out.append(i)
        i += 4 if pool else 3
    return out


_CONV_AT = _conv_indices()


def _stavis_rename(key: str) -> str | None:
    m = re.fullmatch(r"soundnet8\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)", key)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _stavis_adapt(key: str, value: Tensor, target: Tensor) -> Tensor:
    # STAViS convolves along the width ([o, i, 1, k]); avlab along the height ([o, i, k, 1]).
    return value.transpose(-1, -2) if value.dim() == 4 else value


def _vinet_rename(key: str) -> str | None:
    m = re.fullmatch(r"(conv|batchnorm)([1-7])\.(\w+)", key)
    if m is None:
        return None
    kind, n, param = m.groups()
    return f"{_CONV_AT[int(n) - 1] + (kind == 'batchnorm')}.{param}"


SOUNDNET_LAYOUTS = (
    Layout(
        "stavis",
        "atsiami/STAViS models/resnet.py: soundnet8.N.* with (1, k) kernels",
        detect=lambda keys: any(k.startswith("soundnet8.") for k in keys),
        rename=_stavis_rename,
        adapt=_stavis_adapt,
    ),
    Layout(
        "vinet",
        "ViNet soundnet8_final.pth: conv1..7, batchnorm1..7 with (k, 1) kernels",
        detect=lambda keys: any(re.match(r"batchnorm[1-7]\.", k) for k in keys),
        rename=_vinet_rename,
        ignore=(r"conv8(_2)?\..*",),
    ),
    Layout(
        "avlab",
        "avlab's SoundNet8: net.N.*",
        detect=lambda keys: any(k.startswith("net.") for k in keys),
        rename=lambda k: k[len("net.") :] if k.startswith("net.") else None,
    ),
)


def load_soundnet_weights(
    net: nn.Sequential, path: str, layout: str | None = None, config_key: str = "model.audio.weights"
) -> int:
    """Load SoundNet-8 conv1–conv7 weights (layout detected or named) into ``net``; tensors loaded."""
    return load_pretrained(net, path, SOUNDNET_LAYOUTS, config_key, layout).loaded


class SoundNet8(nn.Module):
    """SoundNet-8 audio branch, conv1–conv7, features after conv7.

    Convolutions are 2-D with ``(k, 1)`` kernels on ``[B, 1, L, 1]`` (the ViNet convention; STAViS
    files are transposed on load). Input: waveform ``[B, L]`` at 22,050 Hz in ±256; 70,560 samples
    → 3 steps of 1024 channels.

    Args:
        weights: optional local checkpoint (``stavis``, ``vinet`` or ``avlab`` layout).
        weights_layout: the checkpoint's layout; None detects it from the key names.
        width_mult: channel multiplier for CPU-sized variants (1.0 = SoundNet-8).
        freeze: keep the branch fixed.
    """

    def __init__(
        self,
        weights: str | None = None,
        width_mult: float = 1.0,
        freeze: bool = False,
        weights_layout: str | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 1
        for out, k, s, p, pool in SOUNDNET8:
            out = max(4, round(out * width_mult))
            layers += [nn.Conv2d(ch, out, (k, 1), (s, 1), (p, 0)), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d((pool, 1), (pool, 1)))
            ch = out
        self.net = nn.Sequential(*layers)
        self.out_channels = ch
        if weights:
            if width_mult != 1.0:
                raise ConfigError(
                    "model.audio.weights needs model.audio.width_mult=1.0 (the real SoundNet-8)"
                )
            load_soundnet_weights(self.net, weights, weights_layout)
        self.freeze = freeze
        if freeze:
            self.requires_grad_(False)

    def forward(self, wav: Tensor) -> Tensor:
        """``[B, L]`` → tokens ``[B, L', C]`` (one per SoundNet time step)."""
        x = self.net(wav.reshape(wav.shape[0], 1, -1, 1))
        return x.squeeze(-1).transpose(1, 2)

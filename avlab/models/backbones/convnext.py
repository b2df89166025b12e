"""ConvNeXt V2 (Woo et al. 2023), the UNQA spatial backbone, built by timm, and its checkpoint layouts.

* ``timm``: timm's own names (``stem.*``, ``stages.N.downsample.*``, ``stages.N.blocks.M.*``), as in
  the files timm writes or publishes; ``head.*`` (final norm and classifier) is ignored, because UNQA
  reads the stage maps and has no use for the classification head.
* ``official``: the facebookresearch/ConvNeXt-V2 release (``downsample_layers.N.*``,
  ``stages.N.M.dwconv/pwconv1/pwconv2/grn.gamma/grn.beta``, ``norm.*``, ``head.*``). The renaming
  is the one timm applies when it reads these files: ``downsample_layers.0`` is the stem,
  ``downsample_layers.N`` (N ≥ 1) is ``stages.N.downsample``, ``dwconv`` → ``conv_dw``,
  ``pwconv`` → ``mlp.fc``, and GRN's ``gamma``/``beta`` ``[1, 1, 1, C]`` → ``mlp.grn.weight/bias``
  ``[C]``. ``norm.*`` and ``head.*`` are ignored.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from avlab.models.pretrained import Layout, load_pretrained

__all__ = ["CONVNEXT_LAYOUTS", "load_convnext_weights"]


def _official_rename(key: str) -> str | None:
    k = key
    if k.startswith("downsample_layers.0."):
        return "stem." + k[len("downsample_layers.0.") :]
    k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
    k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
    k = k.replace(".dwconv.", ".conv_dw.").replace(".pwconv", ".mlp.fc")
    k = k.replace(".grn.gamma", ".mlp.grn.weight").replace(".grn.beta", ".mlp.grn.bias")
    return k if k.startswith(("stem.", "stages.")) else None


def _reshape_same_size(key: str, value: Tensor, target: Tensor) -> Tensor:
    # GRN parameters are [1, 1, 1, C] in the official release and [C] in timm.
    return value.reshape(target.shape) if value.numel() == target.numel() else value


CONVNEXT_LAYOUTS = (
    Layout(
        "timm",
        "timm.models.convnext (timm's ConvNeXt V2 files)",
        detect=lambda keys: any(k.startswith("stages.") and ".blocks." in k for k in keys),
        rename=lambda k: k if k.startswith(("stem.", "stages.")) else None,
        ignore=(r"head\..*",),
    ),
    Layout(
        "official",
        "facebookresearch/ConvNeXt-V2 checkpoints (downsample_layers.*, stages.N.M.*)",
        detect=lambda keys: any(k.startswith("downsample_layers.") for k in keys),
        rename=_official_rename,
        adapt=_reshape_same_size,
        ignore=(r"head\..*", r"norm\..*"),
    ),
)


def load_convnext_weights(
    backbone: nn.Module, path: str, layout: str | None = None, config_key: str = "model.net.spatial.weights"
) -> int:
    """Load ConvNeXt V2 weights into a timm ConvNeXt whose ``head`` was removed; tensors loaded."""
    return load_pretrained(backbone, path, CONVNEXT_LAYOUTS, config_key, layout).loaded

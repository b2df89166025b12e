"""ResNet (He et al. 2016) as a spatial backbone, built by torchvision, and its checkpoint layout.

UNQA's Table VIII baseline replaces the ConvNeXt V2 spatial extractor with an ImageNet ResNet-50.
The network is ``torchvision.models.<name>(weights=None)`` (never downloaded) with its classifier
``fc`` removed, so its keys are torchvision's own:

* ``torchvision``: ``conv1.*``, ``bn1.*``, ``layerN.M.*`` as in the files torchvision publishes
  (``resnet50-0676ba61.pth``, ``resnet50-11ad3fa6.pth``) and as timm's ResNets name them too;
  ``fc.*`` (the ImageNet classifier) is ignored, because UNQA reads the stage maps.

:func:`resnet_stem` and :func:`resnet_stages` give the stem and the four residual stages, the shape
in which :class:`avlab.models.unqa.SpatialExtractor` reads any backbone's stage maps.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.models.pretrained import Layout, load_pretrained

__all__ = [
    "RESNETS",
    "RESNET_LAYOUTS",
    "build_resnet",
    "load_resnet_weights",
    "resnet_stages",
    "resnet_stem",
    "resnet_widths",
]

#: torchvision ResNet names that can be built.
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

RESNET_LAYOUTS = (
    Layout(
        "torchvision",
        "torchvision.models.resnet (torchvision's and timm's ResNet files)",
        detect=lambda keys: (
            any(k.startswith("layer1.") for k in keys) and any(k.startswith("conv1.") for k in keys)
        ),
        rename=lambda k: k if re.match(r"^(conv1|bn1|layer[1-4])\.", k) else None,
        ignore=(r"fc\..*",),
    ),
)


def build_resnet(name: str = "resnet50") -> nn.Module:
    """A randomly initialised torchvision ResNet without its classifier (``fc`` removed)."""
    import torchvision

    if name not in RESNETS:
        raise ConfigError(f"unknown ResNet {name!r}; use one of {', '.join(RESNETS)}")
    model = getattr(torchvision.models, name)(weights=None)
    # The stage maps are what is read; the ImageNet classifier would hold parameters no loss reaches.
    del model.fc
    model.fc = nn.Identity()
    return model


def resnet_stem(model: nn.Module, x: Tensor) -> Tensor:
    """conv1 → bn1 → ReLU → max-pool: the input of ``layer1`` (stride 4)."""
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def resnet_stages(model: nn.Module) -> list[nn.Module]:
    """The four residual stages ``layer1..layer4`` (strides 4, 8, 16, 32)."""
    return [model.layer1, model.layer2, model.layer3, model.layer4]


def resnet_widths(model: nn.Module) -> list[int]:
    """Output channels of each stage (256, 512, 1024, 2048 for ResNet-50; 64..512 for 18/34)."""
    widths = []
    for stage in resnet_stages(model):
        last = stage[-1]
        widths.append(int((last.bn3 if hasattr(last, "bn3") else last.bn2).num_features))
    return widths


def load_resnet_weights(
    model: nn.Module, path: str, layout: str | None = None, config_key: str = "model.net.spatial.weights"
) -> int:
    """Load torchvision-layout ResNet weights into :func:`build_resnet`'s model; tensors loaded."""
    return load_pretrained(model, path, RESNET_LAYOUTS, config_key, layout).loaded

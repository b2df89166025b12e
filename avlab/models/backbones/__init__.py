"""Pretrained backbones and the upstream checkpoint layouts each accepts.

=====================  ======================================  =========================================
backbone               module                                  layouts (``*_layout`` config values)
=====================  ======================================  =========================================
S3D (AVRSP visual)     :mod:`avlab.models.backbones.s3d`       ``torchvision``, ``kylemin``
SoundNet-8 (AVRSP)     :mod:`avlab.models.backbones.soundnet`  ``stavis``, ``vinet``, ``avlab``
ConvNeXt V2 (UNQA)     :mod:`avlab.models.backbones.convnext`  ``timm``, ``official``
ResNet-50 (UNQA T.8)   :mod:`avlab.models.backbones.resnet`    ``torchvision``
SlowFast R50 (UNQA)    :mod:`avlab.models.backbones.slowfast`  ``pytorchvideo``, ``slowfast``, ``avlab``
=====================  ======================================  =========================================

All loading goes through :func:`avlab.models.pretrained.load_pretrained`, which fails on any key it
cannot place, any tensor left without a value and any shape mismatch.
"""

"""Upstream checkpoints load into avlab's backbones with zero unmatched keys, and compute the same thing.

One test per layout. Each builds the upstream network (or, where it is not packaged, its key/shape
layout) with random weights and random BatchNorm statistics, saves the state dict to a temporary
file, and loads it through the public config keys' code path. Where the upstream forward pass is
available, both networks must give the same output on one input.

Upstream sources of the layouts built here by hand (none is packaged):

* kylemin/S3D ``model.py``: ``S3D.base`` (16 modules), ``BasicConv3d`` = conv + bn,
  ``SepConv3d`` = conv_s, bn_s, conv_t, bn_t, ``Mixed_*`` with branch0..3; BN eps 1e-3.
* atsiami/STAViS ``models/resnet.py``: ``self.soundnet8 = nn.Sequential(...)`` with (1, k) kernels.
* ViNet's SoundNet port: ``conv1..conv7``/``batchnorm1..7`` with (k, 1) kernels, ``conv8``, ``conv8_2``.
* facebookresearch/ConvNeXt-V2 ``models/convnextv2.py``: ``downsample_layers``, ``stages.i.j``
  (dwconv, norm, pwconv1, grn.gamma/beta, pwconv2), ``norm``, ``head``.
* facebookresearch/SlowFast ``video_model_builder.py`` / ``stem_helper.py`` / ``resnet_helper.py``
  with ``configs/Kinetics/SLOWFAST_8x8_R50.yaml`` (alpha 4, beta 1/8, fusion kernel 7, ratio 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from avlab.errors import ConfigError
from avlab.models.backbones.s3d import S3DEncoder
from avlab.models.backbones.soundnet import SOUNDNET8, SoundNet8
from avlab.models.unqa import MotionExtractor, SpatialExtractor


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BatchNorm statistics, so a tensor left unloaded changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # norm weights
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return module.eval()


# =========================================================================== S3D
def test_s3d_torchvision_layout_loads_and_matches(tmp_path: Path) -> None:
    from torchvision.models.video import s3d

    ref = _randomise(s3d(weights=None))
    torch.save(ref.state_dict(), tmp_path / "s3d-kinetics400.pth")
    enc = S3DEncoder(weights=str(tmp_path / "s3d-kinetics400.pth")).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], ref.features(x), rtol=1e-4, atol=1e-5)


class _KBasic(nn.Module):  # kylemin/S3D BasicConv3d
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class _KSep(nn.Module):  # kylemin/S3D SepConv3d: (1,k,k) conv then (k,1,1) conv
    def __init__(self, cin: int, cout: int, k: int, s: int, p: int) -> None:
        super().__init__()
        self.conv_s = nn.Conv3d(cin, cout, (1, k, k), (1, s, s), (0, p, p), bias=False)
        self.bn_s = nn.BatchNorm3d(cout, eps=1e-3, momentum=1e-3)
        self.conv_t = nn.Conv3d(cout, cout, (k, 1, 1), (s, 1, 1), (p, 0, 0), bias=False)
        self.bn_t = nn.BatchNorm3d(cout, eps=1e-3, momentum=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn_t(self.conv_t(torch.relu(self.bn_s(self.conv_s(x))))))


class _KMixed(nn.Module):  # kylemin/S3D Mixed_*: four branches, concatenated
    def __init__(self, cin: int, b0: int, b1m: int, b1: int, b2m: int, b2: int, b3: int) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(_KBasic(cin, b0))
        self.branch1 = nn.Sequential(_KBasic(cin, b1m), _KSep(b1m, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(_KBasic(cin, b2m), _KSep(b2m, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), _KBasic(cin, b3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


def _kylemin_s3d() -> nn.Module:
    mixed = [
        (192, 64, 96, 128, 16, 32, 32),
        (256, 128, 128, 192, 32, 96, 64),
        None,
        (480, 192, 96, 208, 16, 48, 64),
        (512, 160, 112, 224, 24, 64, 64),
        (512, 128, 128, 256, 24, 64, 64),
        (512, 112, 144, 288, 32, 64, 64),
        (528, 256, 160, 320, 32, 128, 128),
        None,
        (832, 256, 160, 320, 32, 128, 128),
        (832, 384, 192, 384, 48, 128, 128),
    ]
    pools = [nn.MaxPool3d((3, 3, 3), (2, 2, 2), (1, 1, 1)), nn.MaxPool3d((2, 2, 2), (2, 2, 2), (0, 0, 0))]
    base: list[nn.Module] = [
        _KSep(3, 64, 7, 2, 3),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        _KBasic(64, 64),
        _KSep(64, 192, 3, 1, 1),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ]
    base += [_KMixed(*spec) if spec else pools.pop(0) for spec in mixed]
    net = nn.Module()
    net.base = nn.Sequential(*base)
    net.fc = nn.Sequential(nn.Conv3d(1024, 400, 1))
    return _randomise(net)


@pytest.mark.parametrize("tased_split", [False, True])
def test_s3d_kylemin_layout_loads_and_matches(tmp_path: Path, tased_split: bool) -> None:
    ref = _kylemin_s3d()
    sd = ref.state_dict()
    if tased_split:  # TASED/ViNet: `module.` prefix and base1..base4 starting at modules 0, 5, 8, 14
        starts = (0, 5, 8, 14)

        def rename(k: str) -> str:
            if not k.startswith("base."):
                return "module." + k
            i, rest = k.split(".", 2)[1:]
            part = max(j for j, s in enumerate(starts) if int(i) >= s)
            return f"module.base{part + 1}.{int(i) - starts[part]}.{rest}"

        sd = {rename(k): v for k, v in sd.items()}
    torch.save(sd, tmp_path / "S3D_kinetics400.pt")
    enc = S3DEncoder(weights=str(tmp_path / "S3D_kinetics400.pt")).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], ref.base(x), rtol=1e-4, atol=1e-5)


# =========================================================================== SoundNet-8
def _stavis_soundnet8() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 1
    for out, k, s, p, pool in SOUNDNET8:
        layers += [nn.Conv2d(cin, out, (1, k), (1, s), (0, p)), nn.BatchNorm2d(out), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d((1, pool), (1, pool)))
        cin = out
    layers.append(nn.MaxPool2d((1, 2)))  # STAViS's last layer: no tensors, not part of avlab's features
    return _randomise(nn.Sequential(*layers))


def test_soundnet_stavis_layout_loads_and_matches(tmp_path: Path) -> None:
    ref = _stavis_soundnet8()
    torch.save({f"soundnet8.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "soundnet8.pth")
    net = SoundNet8(weights=str(tmp_path / "soundnet8.pth")).eval()
    # float64: the (1, k) and (k, 1) convolutions sum in different orders, which float32 rounding shows.
    net, ref, wav = net.double(), ref.double(), torch.randn(2, 22050, dtype=torch.float64) * 100
    with torch.no_grad():
        want = (
            ref[:-1](wav.view(2, 1, 1, -1)).squeeze(2).transpose(1, 2)
        )  # [B, L', 1024] before the last pool
        torch.testing.assert_close(net(wav), want, rtol=1e-9, atol=1e-9)


def test_soundnet_vinet_layout_places_every_tensor(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    sd, cin = {}, 1
    for n, (out, k, *_) in enumerate(SOUNDNET8, start=1):
        sd[f"conv{n}.weight"], sd[f"conv{n}.bias"] = (
            torch.randn(out, cin, k, 1, generator=g),
            torch.randn(out),
        )
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd[f"batchnorm{n}.{p}"] = torch.rand(out, generator=g) + 0.5
        cin = out
    sd["conv8.weight"], sd["conv8_2.weight"] = torch.zeros(1000, 1024, 8, 1), torch.zeros(401, 1024, 8, 1)
    torch.save(sd, tmp_path / "soundnet8_final.pth")
    net = SoundNet8(weights=str(tmp_path / "soundnet8_final.pth"))
    convs = [m for m in net.net if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.net if isinstance(m, nn.BatchNorm2d)]
    for n in range(1, 8):
        torch.testing.assert_close(convs[n - 1].weight, sd[f"conv{n}.weight"])
        torch.testing.assert_close(bns[n - 1].running_var, sd[f"batchnorm{n}.running_var"])


# =========================================================================== ConvNeXt V2
def test_convnext_timm_layout_loads_and_matches(tmp_path: Path) -> None:
    import timm

    ref = _randomise(timm.create_model("convnextv2_atto", pretrained=False))
    torch.save(ref.state_dict(), tmp_path / "convnextv2_atto.pth")  # head.norm / head.fc are ignored
    spatial = SpatialExtractor("convnextv2_atto", weights=str(tmp_path / "convnextv2_atto.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = spatial.backbone.stages(spatial.backbone.stem(x))
        torch.testing.assert_close(ours, ref.forward_features(x), rtol=1e-4, atol=1e-4)


def test_convnext_official_layout_places_every_tensor(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    dims, depths = (40, 80, 160, 320), (2, 2, 6, 2)  # ConvNeXt V2 atto
    sd = {
        "downsample_layers.0.0.weight": torch.randn(40, 3, 4, 4, generator=g),
        "downsample_layers.0.0.bias": torch.randn(40, generator=g),
        "downsample_layers.0.1.weight": torch.rand(40, generator=g),
        "downsample_layers.0.1.bias": torch.randn(40, generator=g),
    }
    for i in (1, 2, 3):
        sd[f"downsample_layers.{i}.0.weight"] = torch.rand(dims[i - 1], generator=g)
        sd[f"downsample_layers.{i}.0.bias"] = torch.randn(dims[i - 1], generator=g)
        sd[f"downsample_layers.{i}.1.weight"] = torch.randn(dims[i], dims[i - 1], 2, 2, generator=g)
        sd[f"downsample_layers.{i}.1.bias"] = torch.randn(dims[i], generator=g)
    for i, (c, d) in enumerate(zip(dims, depths)):
        for j in range(d):
            p = f"stages.{i}.{j}."
            sd |= {
                p + "dwconv.weight": torch.randn(c, 1, 7, 7, generator=g),
                p + "dwconv.bias": torch.randn(c),
                p + "norm.weight": torch.rand(c),
                p + "norm.bias": torch.randn(c),
                p + "pwconv1.weight": torch.randn(4 * c, c, generator=g),
                p + "pwconv1.bias": torch.randn(4 * c),
                p + "grn.gamma": torch.randn(1, 1, 1, 4 * c, generator=g),
                p + "grn.beta": torch.randn(1, 1, 1, 4 * c),
                p + "pwconv2.weight": torch.randn(c, 4 * c, generator=g),
                p + "pwconv2.bias": torch.randn(c),
            }
    sd |= {
        "norm.weight": torch.rand(320),
        "norm.bias": torch.randn(320),
        "head.weight": torch.randn(1000, 320),
        "head.bias": torch.randn(1000),
    }
    torch.save({"model": sd}, tmp_path / "convnextv2_atto_1k_224_ema.pt")
    bb = SpatialExtractor("convnextv2_atto", weights=str(tmp_path / "convnextv2_atto_1k_224_ema.pt")).backbone
    torch.testing.assert_close(bb.stem[0].weight, sd["downsample_layers.0.0.weight"])
    torch.testing.assert_close(bb.stages[2].downsample[1].weight, sd["downsample_layers.2.1.weight"])
    torch.testing.assert_close(bb.stages[2].blocks[5].conv_dw.weight, sd["stages.2.5.dwconv.weight"])
    torch.testing.assert_close(
        bb.stages[3].blocks[1].mlp.fc2.weight.flatten(1), sd["stages.3.1.pwconv2.weight"]
    )
    torch.testing.assert_close(bb.stages[1].blocks[0].mlp.grn.weight, sd["stages.1.0.grn.gamma"].flatten())


# =========================================================================== SlowFast R50
def test_slowfast_pytorchvideo_layout_loads_and_matches(tmp_path: Path) -> None:
    pytest.importorskip("pytorchvideo")
    from pytorchvideo.models.hub.slowfast import slowfast_r50

    ref = _randomise(slowfast_r50(pretrained=False))
    torch.save(ref.state_dict(), tmp_path / "SLOWFAST_8x8_R50.pyth")
    motion = MotionExtractor(weights=str(tmp_path / "SLOWFAST_8x8_R50.pyth"))
    assert motion.signature["fusion_kernel"] == 7 and len(motion.signature["weights_sha256"]) == 64
    clip = torch.rand(1, 3, 16, 64, 64)
    x = (clip - 0.45) / 0.225
    slow = motion.net.slow_frames(x)
    torch.testing.assert_close(slow, x[:, :, torch.linspace(0, 15, 4).long()])  # PackPathway's frame choice
    with torch.no_grad():
        out = [slow, x]
        for block in ref.blocks[:5]:  # stems, fusions and res2..res5, before the pooled head
            out = block(out)
        want = torch.cat([out[0].mean(dim=(2, 3, 4)), out[1].mean(dim=(2, 3, 4))], dim=1)
        torch.testing.assert_close(motion(clip), want, rtol=1e-4, atol=1e-4)


def _slowfast_layout(kernel: int = 7) -> dict[str, torch.Tensor]:
    """facebookresearch/SlowFast SLOWFAST_8x8_R50 ``model_state`` keys and shapes, random values."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, *shape: int) -> None:
        sd[name + ".weight"] = torch.randn(*shape, generator=g)

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{p}"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("s1.pathway0_stem.conv", 64, 3, 1, 7, 7)
    bn("s1.pathway0_stem.bn", 64)
    conv("s1.pathway1_stem.conv", 8, 3, 5, 7, 7)
    bn("s1.pathway1_stem.bn", 8)
    slow_in, fast_in = 64, 8
    for s, (depth, kt_slow) in enumerate(zip((3, 4, 6, 3), (1, 1, 3, 3)), start=2):
        conv(f"s{s - 1}_fuse.conv_f2s", 2 * fast_in, fast_in, kernel, 1, 1)  # FuseFastToSlow before stage s
        bn(f"s{s - 1}_fuse.bn", 2 * fast_in)
        slow_in += 2 * fast_in
        for p, (c_in, inner, kt) in enumerate(
            ((slow_in, 64 * 2 ** (s - 2), kt_slow), (fast_in, 8 * 2 ** (s - 2), 3))
        ):
            for i in range(depth):
                name, cin = f"s{s}.pathway{p}_res{i}", (c_in if i == 0 else 4 * inner)
                if i == 0:
                    conv(name + ".branch1", 4 * inner, cin, 1, 1, 1)
                    bn(name + ".branch1_bn", 4 * inner)
                conv(name + ".branch2.a", inner, cin, kt, 1, 1)
                bn(name + ".branch2.a_bn", inner)
                conv(name + ".branch2.b", inner, inner, 1, 3, 3)
                bn(name + ".branch2.b_bn", inner)
                conv(name + ".branch2.c", 4 * inner, inner, 1, 1, 1)
                bn(name + ".branch2.c_bn", 4 * inner)
        slow_in, fast_in = 4 * 64 * 2 ** (s - 2), 4 * 8 * 2 ** (s - 2)
    sd["head.projection.weight"], sd["head.projection.bias"] = torch.randn(400, 2304), torch.randn(400)
    return sd


def test_slowfast_facebookresearch_layout_places_every_tensor(tmp_path: Path) -> None:
    sd = _slowfast_layout()
    torch.save({"epoch": 196, "model_state": sd}, tmp_path / "SLOWFAST_8x8_R50.pkl")
    net = MotionExtractor(weights=str(tmp_path / "SLOWFAST_8x8_R50.pkl")).net
    torch.testing.assert_close(net.fast_stem[0].weight, sd["s1.pathway1_stem.conv.weight"])
    torch.testing.assert_close(net.fuse[2][0].weight, sd["s3_fuse.conv_f2s.weight"])
    torch.testing.assert_close(net.slow_stages[2][5].a.weight, sd["s4.pathway0_res5.branch2.a.weight"])
    torch.testing.assert_close(
        net.fast_stages[3][0].shortcut[1].running_var, sd["s5.pathway1_res0.branch1_bn.running_var"]
    )
    assert sum(t.numel() for t in net.state_dict().values()) == sum(
        t.numel() for k, t in sd.items() if not k.startswith("head.")
    )


def test_loading_fails_loudly_on_any_mismatch(tmp_path: Path) -> None:
    sd = _slowfast_layout(kernel=5)  # a SLOWFAST_4x16-style lateral kernel into an 8x8 network
    torch.save({"model_state": sd}, tmp_path / "k5.pyth")
    with pytest.raises(ConfigError, match=r"model\.net\.motion\.weights: .*k5\.pyth.*wrong shape.*conv_f2s"):
        MotionExtractor(weights=str(tmp_path / "k5.pyth"))
    MotionExtractor(weights=str(tmp_path / "k5.pyth"), fusion_kernel=5)  # the constant is a config value

    sd = _slowfast_layout()
    extra = dict(sd, **{"s2.pathway0_res0.branch2.a_extra.weight": torch.zeros(1)})
    torch.save({"model_state": extra}, tmp_path / "extra.pyth")
    with pytest.raises(ConfigError, match=r"1 upstream tensors this layout cannot place.*a_extra"):
        MotionExtractor(weights=str(tmp_path / "extra.pyth"))
    short = {k: v for k, v in sd.items() if k != "s4.pathway1_res2.branch2.c.weight"}
    torch.save({"model_state": short}, tmp_path / "short.pyth")
    with pytest.raises(
        ConfigError, match=r"1 avlab tensors the file does not provide.*fast_stages\.2\.2\.c\.weight"
    ):
        MotionExtractor(weights=str(tmp_path / "short.pyth"))
    with pytest.raises(ConfigError, match="unknown layout 'caffe2'"):
        MotionExtractor(weights=str(tmp_path / "short.pyth"), weights_layout="caffe2")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"model\.visual\.weights: the key names .* match none"):
        S3DEncoder(weights=str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        SoundNet8(weights=str(tmp_path / "missing.pth"))

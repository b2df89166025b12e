"""AVRSP network parts: shapes (paper size on `meta`), fusion blocks, weight loading, ablation configs."""

from __future__ import annotations

import pytest
import torch

from avlab.config import load_experiment
from avlab.errors import ConfigError
from avlab.instantiate import instantiate
from avlab.models.blocks import fusion_av
from avlab.models.saliency import AVRSP, MultiScaleSynergy, RegulatorGate, S3DEncoder, SoundNet8

TINY = ["model.visual.width_mult=0.125", "model.channels=16"]


def test_paper_size_avrsp_output_shape_on_meta() -> None:
    with torch.device("meta"):
        net = AVRSP(S3DEncoder(), SoundNet8(), fusion_av.RAVF(128, 4, 2), channels=128, ms_mrg_pairs=3)
        feats = net.visual(torch.empty(1, 3, 32, 224, 384))
        assert [tuple(f.shape[1:]) for f in feats] == [
            (192, 16, 56, 96),
            (480, 16, 28, 48),
            (832, 8, 14, 24),
            (1024, 4, 7, 12),
        ]
        assert tuple(net.audio(torch.empty(1, 70560)).shape) == (
            1,
            3,
            1024,
        )  # SoundNet-8: 70,560 samples -> 3 steps
        out = net(torch.empty(2, 3, 32, 224, 384), torch.empty(2, 70560))
    assert tuple(out.shape) == (2, 224, 384)
    assert net.visual.out_channels == [192, 480, 832, 1024]


@pytest.mark.parametrize(
    "fusion", ["AddFusion", "MulFusion", "ConcatFusion", "BilinearFusion", "MBTFusion", "RAVF"]
)
def test_fusion_blocks_share_one_interface(fusion: str) -> None:
    torch.manual_seed(0)
    block = getattr(fusion_av, fusion)(dim=16)
    v, a = torch.randn(2, 30, 16), torch.randn(2, 3, 16)
    out = block(v, a)
    assert out.shape == v.shape and torch.isfinite(out).all()
    out.sum().backward()
    with pytest.raises(ValueError, match="expected v"):
        block(v, torch.randn(2, 3, 8))


def test_ravf_retention_has_no_softmax_and_head_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    attn = fusion_av.RelevanceCrossAttention(16, num_heads=4)
    v, a = torch.randn(2, 10, 16), torch.randn(2, 3, 16)
    _, extras = attn(v, a)
    assert extras["ret_a"].shape == (2, 4, 10, 3) and extras["ret_v"].shape == (2, 4, 3, 10)
    assert ((extras["ret_a"] >= 0) & (extras["ret_a"] <= 1)).all()
    assert not torch.allclose(extras["ret_a"].sum(-1), torch.ones(2, 4, 10))  # not a distribution over keys
    torch.testing.assert_close(extras["weights"].sum(-1), torch.ones(2, 10))  # eq. (6): softmax over heads
    ravf = fusion_av.RAVF(16, 4, n_blocks=3)
    assert len(ravf.blocks) == 3 and ravf(v, a).shape == v.shape and "weights" in ravf.last_extras


def test_ms_and_mrg_keep_shapes() -> None:
    xh, xm, xl = torch.randn(1, 8, 4, 8, 12), torch.randn(1, 8, 2, 4, 6), torch.randn(1, 8, 1, 2, 3)
    for has_h, has_l in ((True, True), (True, False), (False, True)):
        ms = MultiScaleSynergy(8, has_h, has_l)
        assert ms(xm, xh if has_h else None, xl if has_l else None).shape == xm.shape
    out, gate = RegulatorGate(8)(xl, xm)
    assert out.shape == xm.shape and gate.shape == (1, 8, 1, 1, 1) and ((gate > 0) & (gate < 1)).all()


@pytest.mark.parametrize("pairs", [0, 1, 2, 3, 4])
def test_ms_mrg_pairs_follow_table_iv(pairs: int) -> None:
    net = AVRSP(S3DEncoder(width_mult=0.125), channels=8, ms_mrg_pairs=pairs)
    assert net.pair_scales == [3, 2, 1, 0][:pairs]
    assert net(torch.randn(1, 3, 8, 32, 64)).shape == (1, 32, 64)


# Checkpoint loading (S3D, SoundNet-8 in their upstream layouts): tests/test_backbone_weights.py.


def test_visual_only_and_mismatched_audio_fusion() -> None:
    with pytest.raises(ConfigError, match="go together"):
        AVRSP(S3DEncoder(width_mult=0.125), SoundNet8(width_mult=0.125), None, channels=8)


@pytest.mark.parametrize(
    "name",
    [
        "saliency/ablation_fusion_add",
        "saliency/ablation_fusion_mul",
        "saliency/ablation_fusion_concat",
        "saliency/ablation_fusion_bilinear",
        "saliency/ablation_fusion_mbt",
        "saliency/ablation_fusion_ravf",
        "saliency/ablation_msmrg_0",
        "saliency/ablation_msmrg_4",
        "saliency/ablation_ms_only",
        "saliency/ablation_mrg_only",
        "saliency/ablation_ravf_literal",
        "saliency/avrsp_visual",
        "saliency/avrsp_dhf1k_pretrain",
    ],
)
def test_experiment_configs_build_and_run(name: str) -> None:
    cfg = load_experiment(name, TINY)
    module = instantiate(cfg.model)
    audio = torch.randn(1, 17640) if module.net.is_audio_visual else None
    assert module(torch.randn(1, 3, 8, 32, 56), audio).shape == (1, 32, 56)
    if "fusion" in name:
        assert type(module.net.fusion).__name__ == cfg.model.fusion._target_.rsplit(".", 1)[1]
    if name.endswith(("ms_only", "mrg_only")):
        assert (len(module.net.ms), len(module.net.mrg)) == ((3, 0) if name.endswith("ms_only") else (0, 3))
    if name.endswith("ravf_literal"):
        assert all(not b.attn.retention_sigmoid and not b.attn.head_scale for b in module.net.fusion.blocks)

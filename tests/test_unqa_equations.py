"""UNQA's equations against direct computations: spatial extractor eq. (1)-(6), regressors eq. (8).

Also the paper-size parameter count of Table IV (52.382M).
"""

from __future__ import annotations

import math

import pytest
import torch

from avlab.models.unqa import AudioExtractor, MotionExtractor, SpatialExtractor, UNQANet


def _block_mean(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Average over the integer blocks that map onto each of the ``h × w`` output cells."""
    n, c, hh, ww = x.shape
    return x.reshape(n, c, h, hh // h, w, ww // w).mean(dim=(3, 5))


def _spatial_reference(sp: SpatialExtractor, img: torch.Tensor) -> torch.Tensor:
    """Eq. (1)-(6) written out; the ConvNeXt V2 stages are the backbone's own modules."""
    x = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    x = sp.backbone.stem(x)
    maps = []
    for i, stage in enumerate(sp.backbone.stages):
        x = stage(x)
        if i in sp.stages:
            maps.append(x)
    hn, wn = maps[-1].shape[-2:]
    f = torch.cat([_block_mean(m, hn, wn) for m in maps], dim=1)  # eq. (1)-(2)
    if sp.use_mhsa:  # eq. (3): F + Conv(MHSA(Conv(F))), 1×1 convs as matrix products over channels
        n, c = f.shape[:2]
        tokens = f.flatten(2).transpose(1, 2)  # [N, H_N·W_N, C]
        q_in = tokens @ sp.conv_in.weight[:, :, 0, 0].T + sp.conv_in.bias
        d, heads = q_in.shape[-1], sp.mhsa.num_heads
        dh = d // heads
        wq, wk, wv = sp.mhsa.in_proj_weight.split(d)
        bq, bk, bv = sp.mhsa.in_proj_bias.split(d)
        q, k, v = q_in @ wq.T + bq, q_in @ wk.T + bk, q_in @ wv.T + bv
        att = torch.zeros_like(q)
        for h in range(heads):
            s = slice(h * dh, (h + 1) * dh)
            scores = q[:, :, s] @ k[:, :, s].transpose(1, 2) / math.sqrt(dh)
            att[:, :, s] = torch.softmax(scores, dim=-1) @ v[:, :, s]
        att = att @ sp.mhsa.out_proj.weight.T + sp.mhsa.out_proj.bias
        out = att @ sp.conv_out.weight[:, :, 0, 0].T + sp.conv_out.bias
        f = f + out.transpose(1, 2).reshape(n, c, hn, wn)
    flat = f.flatten(2)
    mu = flat.sum(dim=2) / flat.shape[2]  # eq. (4)
    sigma = torch.sqrt(((flat - mu[:, :, None]) ** 2).sum(dim=2) / flat.shape[2])  # eq. (5), population std
    return torch.cat([mu, sigma], dim=1)  # eq. (6)


@pytest.mark.parametrize("use_mhsa", [True, False])
def test_spatial_extractor_matches_equations_1_to_6(use_mhsa: bool) -> None:
    torch.manual_seed(0)
    sp = SpatialExtractor(
        "convnextv2_atto", stages=(1, 2, 3), attn_dim=64, num_heads=4, use_mhsa=use_mhsa
    ).eval()
    frames = torch.rand(2, 3, 3, 64, 64)  # [B, T, 3, H, W]
    with torch.no_grad():
        got = sp(frames)
        per_frame = torch.stack([_spatial_reference(sp, frames[:, t]) for t in range(3)], dim=1)
    assert got.shape == (2, 2 * (80 + 160 + 320))  # μ and σ of the three stages' 560 channels
    # a clip's spatial feature is the mean of its frames' features (images are T = 1)
    torch.testing.assert_close(got, per_frame.mean(dim=1), rtol=1e-4, atol=1e-5)


def test_regressors_follow_equation_8() -> None:
    torch.manual_seed(0)
    net = UNQANet(
        SpatialExtractor("convnextv2_atto", attn_dim=32, num_heads=4),
        MotionExtractor(depths=(1, 1, 1, 1), width=16),
        AudioExtractor(dim=16, num_heads=2),
        hidden=8,
    ).eval()
    ds, dm, da = net.dims["s"], net.dims["m"], net.dims["a"]
    feats = {"s": torch.randn(3, ds), "m": torch.randn(3, dm), "a": torch.randn(3, da)}
    order = {"audio": ["a"], "image": ["s"], "video": ["s", "m"], "av": ["s", "m", "a"]}  # eq. (8)
    with torch.no_grad():
        for modality, keys in order.items():
            head = net.modality_heads[modality].net  # two fully connected layers
            x = torch.cat([feats[k] for k in keys], dim=1)
            want = torch.relu(x @ head[0].weight.T + head[0].bias) @ head[2].weight.T + head[2].bias
            torch.testing.assert_close(net.modality_score(feats, modality), want.squeeze(1))
        # an AV item without an audio track is scored by the video regressor
        has_audio = torch.tensor([True, False, True])
        mixed = net.modality_score(feats, "av", has_audio)
        torch.testing.assert_close(mixed[1], net.modality_score(feats, "video")[1])
        torch.testing.assert_close(mixed[[0, 2]], net.modality_score(feats, "av")[[0, 2]])


def test_paper_size_parameter_count_matches_table_iv() -> None:
    from avlab.config import load_experiment
    from avlab.instantiate import instantiate

    cfg = load_experiment("unqa/unqa_paper", [])
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 52_382_000) / 52_382_000 < 0.001, n  # Table IV: 52.382M
    # the reading that matters: a full-width MHSA (attn_dim = 1120) would give 58.97M
    with torch.device("meta"):
        wide = SpatialExtractor(cfg.model.net.spatial.backbone, num_heads=8)
    assert (
        sum(p.numel() for p in wide.parameters()) - sum(p.numel() for p in net.spatial.parameters())
        > 6_000_000
    )

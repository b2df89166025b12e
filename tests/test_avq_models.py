"""AVQ models (Attentive AV-FusionNet and ablations) and the shared attention blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avlab.errors import FeatureError
from avlab.models.avq import (
    PAPER_PARAMETER_COUNT,
    AttentiveAVFusionNet,
    CAAVFusion,
    RecursiveAVFusionNet,
    SimpleAVFusion,
)
from avlab.models.blocks import (
    BidirectionalCrossAttention,
    CrossModalAttention,
    JointCrossAttention,
    MLPHead,
    SelfAttention,
    count_trainable_parameters,
    make_activation,
)

MODELS = [AttentiveAVFusionNet, SimpleAVFusion, CAAVFusion, RecursiveAVFusionNet]


def _inputs(b: int = 3, n: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 6, generator=g), torch.randn(b, n, 512, generator=g)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("n", [1, 3])
def test_output_shape(cls: type[nn.Module], n: int) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    video, audio = _inputs(b=4, n=n)
    out = model(video, audio)
    assert out.shape == (4,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", MODELS)
def test_2d_inputs_read_as_one_unit(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    video, audio = _inputs(b=2, n=1)
    torch.testing.assert_close(model(video[:, 0], audio[:, 0]), model(video, audio))


@pytest.mark.parametrize("cls", MODELS)
def test_wrong_widths_raise_feature_error(cls: type[nn.Module]) -> None:
    model = cls()
    with pytest.raises(FeatureError, match=r"expected width 6.*found width 7"):
        model(torch.randn(2, 1, 7), torch.randn(2, 1, 512))
    with pytest.raises(FeatureError, match=r"expected width 512.*found width 128"):
        model(torch.randn(2, 1, 6), torch.randn(2, 1, 128))
    with pytest.raises(FeatureError, match=r"same batch size"):
        model(torch.randn(2, 1, 6), torch.randn(3, 1, 512))
    with pytest.raises(FeatureError, match=r"same batch size"):
        model(torch.randn(2, 2, 6), torch.randn(2, 3, 512))
    with pytest.raises(FeatureError, match=r"shape \[B, N, 6\]"):
        model(torch.randn(2, 1, 1, 6), torch.randn(2, 1, 512))


def test_paper_parameter_count() -> None:
    model = AttentiveAVFusionNet(num_heads=4, d_ff=512, n_layers=1, n_layers_a2v=1, n_layers_v2a=1)
    count = count_trainable_parameters(model)
    # Documented arithmetic: 3,584 + 2·1,050,624 + 4,198,400 + 524,800 + 525,312 + 1,025
    assert count == 3_584 + 2 * 1_050_624 + 4_198_400 + 524_800 + 525_312 + 1_025
    assert count == PAPER_PARAMETER_COUNT == 7_354_369
    assert abs(count - 7.4e6) / 7.4e6 < 0.01  # Fig. 1: "7.4M trainable parameters"
    # The head count does not depend on H (d_k = 512/H only splits the same projections).
    assert count_trainable_parameters(AttentiveAVFusionNet(num_heads=2)) == count


def test_count_ignores_frozen_and_shared() -> None:
    lin = nn.Linear(4, 3)
    shared = nn.Sequential(lin, lin)
    assert count_trainable_parameters(shared) == 15
    lin.bias.requires_grad_(False)
    assert count_trainable_parameters(shared) == 12


def test_ablation_parameter_counts_are_consistent() -> None:
    full = count_trainable_parameters(AttentiveAVFusionNet())
    ca = count_trainable_parameters(CAAVFusion())
    simple = count_trainable_parameters(SimpleAVFusion())
    assert full - ca == 4_198_400  # the self-attention MHA(1024) of eq. (3)
    assert ca - simple == 2 * 1_050_624  # the two MHA(512) of eq. (2)


def test_table2_extremes_construct_and_run() -> None:
    torch.manual_seed(0)
    video, audio = _inputs(b=2, n=2)
    for kwargs in (
        {
            "num_heads": 8,
            "n_layers": 5,
            "n_layers_a2v": 5,
            "n_layers_v2a": 5,
            "d_ff": 1024,
            "activation": "relu",
            "dropout": 0.6,
        },
        {
            "num_heads": 2,
            "n_layers": 1,
            "n_layers_a2v": 1,
            "n_layers_v2a": 5,
            "d_ff": 256,
            "activation": "gelu",
            "dropout": 0.1,
        },
    ):
        model = AttentiveAVFusionNet(**kwargs)
        assert model(video, audio).shape == (2,)
        assert len(model.self_attn) == kwargs["n_layers"]
        assert len(model.cross.a2v) == kwargs["n_layers_a2v"]
        assert len(model.cross.v2a) == kwargs["n_layers_v2a"]
    assert RecursiveAVFusionNet(num_heads=8, n_iterations=5, d_ff=1024)(video, audio).shape == (2,)
    assert CAAVFusion(num_heads=8, n_layers_a2v=5, n_layers_v2a=3)(video, audio).shape == (2,)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        AttentiveAVFusionNet(num_heads=3)
    with pytest.raises(ValueError, match="n_layers"):
        AttentiveAVFusionNet(n_layers=0)
    with pytest.raises(ValueError, match="gelu"):
        AttentiveAVFusionNet(activation="gleu")


@pytest.mark.parametrize("cls", MODELS)
def test_intermediates_shapes(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    video, audio = _inputs(b=2, n=3)
    inter = model.intermediates(video, audio)
    for key in ("phi_pre_audio", "phi_pre_video", "phi_post_audio", "phi_post_video"):
        assert inter[key].shape == (2, 3, 512), key
    assert inter["joint"].shape == (2, 3, 1024)
    assert inter["joint_refined"].shape == (2, 3, 1024)
    assert inter["unit_scores"].shape == (2, 3)
    torch.testing.assert_close(inter["score"], model(video, audio))
    torch.testing.assert_close(inter["score"], inter["unit_scores"].mean(dim=1))
    torch.testing.assert_close(inter["phi_pre_audio"], audio)  # d_audio == d_model: no projection
    if cls is SimpleAVFusion:  # no cross-attention: post equals pre by definition
        assert inter["phi_post_audio"] is inter["phi_pre_audio"]
    else:
        assert not torch.allclose(inter["phi_post_video"], inter["phi_pre_video"])


def test_video_projection_is_eq1() -> None:
    torch.manual_seed(0)
    model = AttentiveAVFusionNet().eval()
    video, audio = _inputs()
    lin = model.video_proj[0]
    expected = torch.nn.functional.gelu(video @ lin.weight.T + lin.bias)  # eq. (1)
    torch.testing.assert_close(model.intermediates(video, audio)["phi_pre_video"], expected)


def test_stand_in_audio_width_gets_a_projection() -> None:
    model = AttentiveAVFusionNet(d_audio=40)
    out = model.intermediates(torch.randn(2, 1, 6), torch.randn(2, 1, 40))
    assert out["phi_pre_audio"].shape == (2, 1, 512)


@pytest.mark.parametrize("cls", MODELS)
def test_gradients_flow(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = cls(dropout=0.0)
    video, audio = _inputs(b=4, n=3)  # N > 1: with N = 1 softmax ≡ 1 and Q/K weights get zero gradient
    model(video, audio).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_single_unit_attention_reduces_to_value_path() -> None:
    """With N = 1 (the paper's setting) cross-attention output does not depend on the query."""
    torch.manual_seed(0)
    layer = CrossModalAttention(512, 512, 4).eval()
    kv = torch.randn(2, 1, 512)
    torch.testing.assert_close(layer(torch.randn(2, 1, 512), kv), layer(torch.randn(2, 1, 512), kv))


@pytest.mark.parametrize("cls", MODELS)
def test_deterministic_under_seed(cls: type[nn.Module]) -> None:
    video, audio = _inputs(b=3, n=2)
    torch.manual_seed(123)
    a = cls().eval()(video, audio)
    torch.manual_seed(123)
    b = cls().eval()(video, audio)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(124)
    assert not torch.allclose(cls().eval()(video, audio), a)


# ---- shared blocks ---------------------------------------------------------------------------


def test_make_activation() -> None:
    assert isinstance(make_activation("GELU"), nn.GELU)
    for name in ("gelu", "relu", "tanh", "silu", "sigmoid", "identity"):
        assert isinstance(make_activation(name), nn.Module)
    with pytest.raises(ValueError, match=r"valid names are .*relu.*Did you mean `relu`"):
        make_activation("rleu")


def test_cross_attention_matches_manual_single_head() -> None:
    torch.manual_seed(0)
    layer = CrossModalAttention(8, 8, num_heads=1).eval()
    q_in, kv = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    w, b = layer.attn.in_proj_weight, layer.attn.in_proj_bias
    q, k, v = (x @ w[i * 8 : (i + 1) * 8].T + b[i * 8 : (i + 1) * 8] for i, x in enumerate((q_in, kv, kv)))
    att = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v  # eq. (2)
    expected = layer.attn.out_proj(att)
    torch.testing.assert_close(layer(q_in, kv), expected)


def test_cross_attention_other_widths_and_flags() -> None:
    layer = CrossModalAttention(16, 24, num_heads=4, d_model=32)
    assert layer(torch.randn(2, 3, 16), torch.randn(2, 5, 24)).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="residual"):
        CrossModalAttention(16, 24, num_heads=4, d_model=32, residual=True)
    res = CrossModalAttention(16, 24, num_heads=4, residual=True, norm=True)
    assert isinstance(res.norm, nn.LayerNorm)
    with pytest.raises(ValueError, match=r"\[B, N, 24\]"):
        res(torch.randn(2, 3, 16), torch.randn(2, 5, 23))


def test_self_attention_residual_flag() -> None:
    torch.manual_seed(0)
    plain = SelfAttention(16, 2).eval()
    res = SelfAttention(16, 2, residual=True).eval()
    res.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(res(x), plain(x) + x)


def test_bidirectional_directions() -> None:
    torch.manual_seed(0)
    block = BidirectionalCrossAttention(16, 2, n_a2v=2, n_v2a=3).eval()
    a, v = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    a_ca, v_ca = block(a, v)
    expected_v = block.a2v[1](block.a2v[0](v, a), a)  # video queries, audio keys/values
    torch.testing.assert_close(v_ca, expected_v)
    expected_a = block.v2a[2](block.v2a[1](block.v2a[0](a, v), v), v)
    torch.testing.assert_close(a_ca, expected_a)


def test_joint_cross_attention_recursion() -> None:
    torch.manual_seed(0)
    block = JointCrossAttention(8, 12, num_heads=2, n_iterations=2).eval()
    assert len(block.audio) == 1  # shared weights across iterations
    a, v = torch.randn(2, 3, 8), torch.randn(2, 3, 12)
    j0 = torch.cat([a, v], -1)
    a1, v1 = block.audio[0](a, j0), block.video[0](v, j0)
    j1 = torch.cat([a1, v1], -1)
    a_out, v_out = block(a, v)
    torch.testing.assert_close(a_out, block.audio[0](a1, j1))
    torch.testing.assert_close(v_out, block.video[0](v1, j1))
    assert len(JointCrossAttention(8, 12, 2, n_iterations=3, share_weights=False).audio) == 3


def test_mlp_head() -> None:
    head = MLPHead(
        10, [7, 5], out_dim=2, activation=["gelu", "tanh"], dropout=[0.2, 0.0], final_activation="sigmoid"
    )
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.Tanh, nn.Linear, nn.Sigmoid]
    out = head(torch.randn(3, 4, 10))
    assert out.shape == (3, 4, 2) and (out > 0).all() and (out < 1).all()
    with pytest.raises(ValueError, match="one per hidden layer"):
        MLPHead(10, [7, 5], activation=["gelu"])
    with pytest.raises(ValueError, match="expected last dimension 10"):
        head(torch.randn(3, 9))

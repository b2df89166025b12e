"""AVRSP's equations against direct computations: RAVF eq. (1)-(7), MS eq. (8)-(12), MRG eq. (13)-(15).

The references below are written from the paper's equations with explicit loops over batch, heads
and tokens (RAVF) or explicit convolution/pooling algebra (MS, MRG), reading the modules' weights.
Both avlab's default RAVF (with its four added steps) and the paper-literal block are checked.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avlab.models.blocks.fusion_av import RAVF, RelevanceCrossAttention
from avlab.models.saliency import AVRSP, MultiScaleSynergy, RegulatorGate, S3DEncoder


# =========================================================================== RAVF, eq. (1)-(7)
def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _ravf_reference(
    attn: RelevanceCrossAttention,
    v: torch.Tensor,
    a: torch.Tensor,
    sigmoid: bool,
    mean: bool,
    head_scale: bool,
    out_proj: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1)-(7) with loops; returns ``F_av`` ``[B, N_v, D]`` and ``Ret_A`` ``[B, H, N_v, N_a]``."""
    v, a = v.double(), a.double()
    d, heads = attn.dim, attn.num_heads
    dk = d // heads
    wv, bv = attn.v_qkv.weight.double(), attn.v_qkv.bias.double()
    wa, ba = attn.a_qkv.weight.double(), attn.a_qkv.bias.double()
    # eq. (1): six affine maps (the rows of the two stacked weight matrices, in the order q, k, v)
    vq, vk, vv = ((v @ wv[i * d : (i + 1) * d].T + bv[i * d : (i + 1) * d]) for i in range(3))
    aq, ak, av = ((a @ wa[i * d : (i + 1) * d].T + ba[i * d : (i + 1) * d]) for i in range(3))
    w1, b1 = attn.head_mlp[0].weight.double(), attn.head_mlp[0].bias.double()
    w2, b2 = attn.head_mlp[2].weight.double(), attn.head_mlp[2].bias.double()
    bsz, nv, na = v.shape[0], v.shape[1], a.shape[1]
    out = torch.zeros(bsz, nv, d, dtype=torch.float64)
    ret_a_all = torch.zeros(bsz, heads, nv, na, dtype=torch.float64)

    def retention(q: torch.Tensor, k: torch.Tensor) -> float:
        r = float((q * k).sum()) / math.sqrt(dk)  # eq. (2)/(3): no softmax
        return 1.0 / (1.0 + math.exp(-r)) if sigmoid else r

    for b in range(bsz):
        v2a = torch.zeros(heads, nv, dk, dtype=torch.float64)
        a2v_pooled = torch.zeros(heads, dk, dtype=torch.float64)
        for h in range(heads):
            s = slice(h * dk, (h + 1) * dk)
            for i in range(nv):  # eq. (4): v2a_i = Σ_j Ret_A[i, j] A_v[j] + V_v[i]
                acc = torch.zeros(dk, dtype=torch.float64)
                for j in range(na):
                    r = retention(vq[b, i, s], ak[b, j, s])
                    ret_a_all[b, h, i, j] = r
                    acc += r * av[b, j, s]
                v2a[h, i] = acc / (na if mean else 1) + vv[b, i, s]
            for j in range(na):  # eq. (5): a2v_j = Σ_i Ret_V[j, i] V_v[i] + A_v[j]
                acc = torch.zeros(dk, dtype=torch.float64)
                for i in range(nv):
                    acc += retention(aq[b, j, s], vk[b, i, s]) * vv[b, i, s]
                a2v_pooled[h] += (acc / (nv if mean else 1) + av[b, j, s]) / na
        for i in range(nv):
            # eq. (6): one logit per head from MLP(Cat(v2a, a2v)), softmax over the heads
            logits = []
            for h in range(heads):
                x = torch.cat([v2a[h, i], a2v_pooled[h]])
                hidden = [_gelu(float(z)) for z in (w1 @ x + b1)]
                logits.append(float(w2[0] @ torch.tensor(hidden, dtype=torch.float64) + b2[0]))
            z = [math.exp(lg - max(logits)) for lg in logits]
            for h in range(heads):  # eq. (7): F_av = C ⊙ v2a, heads concatenated
                out[b, i, h * dk : (h + 1) * dk] = z[h] / sum(z) * v2a[h, i] * (heads if head_scale else 1)
    if out_proj:
        out = out @ attn.out.weight.double().T + attn.out.bias.double()
    return out, ret_a_all


@pytest.mark.parametrize(
    "flags",
    [
        {},  # avlab's default: every added step on
        {"paper_literal": True},
        {"retention_sigmoid": False},
        {"retention_mean": False, "head_scale": False},
        {"out_proj": False},
    ],
)
def test_ravf_attention_matches_equations_1_to_7(flags: dict[str, bool]) -> None:
    torch.manual_seed(0)
    attn = RelevanceCrossAttention(8, num_heads=2, **flags).double().eval()
    v, a = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        got, extras = attn(v, a)
    literal = flags.get("paper_literal", False)
    on = {
        k: (not literal) and flags.get(k, True)
        for k in ("retention_sigmoid", "retention_mean", "head_scale", "out_proj")
    }
    with torch.no_grad():
        want, ret_a = _ravf_reference(
            attn, v, a, on["retention_sigmoid"], on["retention_mean"], on["head_scale"], on["out_proj"]
        )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(extras["ret_a"], ret_a, rtol=1e-10, atol=1e-10)
    if literal:
        assert isinstance(attn.out, nn.Identity)
        assert (ret_a < 0).any(), "paper-literal retention is the raw score, not squashed to [0, 1]"


def test_ravf_paper_literal_flag_reaches_every_block() -> None:
    ravf = RAVF(8, num_heads=2, n_blocks=2, paper_literal=True)
    for block in ravf.blocks:
        a = block.attn
        assert not (a.retention_sigmoid or a.retention_mean or a.head_scale) and isinstance(
            a.out, nn.Identity
        )


# =========================================================================== MS, eq. (8)-(12)
def _apply_c(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A "3D convolution" C of the paper, plus avlab's BN (eval statistics) and ReLU when present."""
    conv = seq[0]
    y = F.conv3d(x, conv.weight, conv.bias, padding=conv.padding)
    if len(seq) > 1:
        bn = seq[1]
        shape = (1, -1, 1, 1, 1)
        y = (y - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
        y = torch.relu(y * bn.weight.view(shape) + bn.bias.view(shape))
    return y


def _down(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Average over the integer blocks that map onto each output voxel."""
    b, c, t, h, w = x.shape
    ft, fh, fw = t // size[0], h // size[1], w // size[2]
    return x.reshape(b, c, size[0], ft, size[1], fh, size[2], fw).mean(dim=(3, 5, 7))


def _up(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def _randomise_bn(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("norm_act", [True, False])
@pytest.mark.parametrize("has_h, has_l", [(True, True), (True, False), (False, True)])
def test_multiscale_synergy_matches_equations_8_to_12(has_h: bool, has_l: bool, norm_act: bool) -> None:
    torch.manual_seed(0)
    ms = MultiScaleSynergy(4, has_h, has_l, kernel=3, norm_act=norm_act)
    _randomise_bn(ms)
    ms.eval()
    xh, xm, xl = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 1, 2, 2)
    sh, sm, sl = xh.shape[2:], xm.shape[2:], xl.shape[2:]
    with torch.no_grad():
        got = ms(xm, xh if has_h else None, xl if has_l else None)
        c1, c2 = ms.c1, ms.c2

        def U(name: str, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
            return _apply_c(ms.up[name].conv, _up(x, size))

        def D(name: str, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
            return _apply_c(ms.down[name].conv, _down(x, size))

        x1m = _apply_c(c1["m"], xm)  # eq. (9)
        x1h = _apply_c(c1["h"], xh) if has_h else None
        x1l = _apply_c(c1["l"], xl) if has_l else None
        x2m = _apply_c(c2["m"], x1m)  # eq. (10), i = m: D(X1^h) + C(X1^m) + U(X1^l)
        if has_h:
            x2m = x2m + D("h_to_m", x1h, sm)
        if has_l:
            x2m = x2m + U("l_to_m", x1l, sm)
        x3m = _apply_c(ms.c3, x2m)  # eq. (11): D(X2^h) + C(X2^m) + U(X2^l)
        if has_h:
            x2h = _apply_c(c2["h"], x1h) + U("m_to_h", x1m, sh)  # eq. (10), i = h (no finer neighbour)
            x3m = x3m + D("h2_to_m", x2h, sm)
        if has_l:
            x2l = D("m_to_l", x1m, sl) + _apply_c(c2["l"], x1l)  # eq. (10), i = l (no coarser neighbour)
            x3m = x3m + U("l2_to_m", x2l, sm)
        want = xm + x3m  # eq. (12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# =========================================================================== MRG, eq. (13)-(15)
@pytest.mark.parametrize("norm_act", [True, False])
def test_regulator_gate_matches_equations_13_to_15(norm_act: bool) -> None:
    torch.manual_seed(0)
    gate = RegulatorGate(3, kernel=3, norm_act=norm_act)
    _randomise_bn(gate)
    gate.eval()
    f_prev, x = torch.randn(2, 3, 1, 2, 3), torch.randn(2, 3, 2, 4, 6)
    with torch.no_grad():
        got, got_g = gate(f_prev, x)
        f = _up(f_prev, tuple(x.shape[2:]))  # eq. (13)
        conv = gate.gate_conv
        s = torch.sigmoid(F.conv3d(torch.cat([f, x], dim=1), conv.weight, conv.bias, padding=1))
        g = torch.zeros(2, 3, 1, 1, 1)
        for b in range(2):  # eq. (14): GAP of σ(Conv(Cat(F, X))), one value per channel
            for c in range(3):
                g[b, c] = s[b, c].sum() / s[b, c].numel()
        want = _apply_c(gate.out_conv, g * f)  # eq. (15)
    torch.testing.assert_close(got_g, g, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# =========================================================================== Table III switches
@pytest.mark.parametrize("use_ms, use_mrg", [(True, False), (False, True)])
def test_ms_only_and_mrg_only_ablations(use_ms: bool, use_mrg: bool) -> None:
    torch.manual_seed(0)
    net = AVRSP(
        S3DEncoder(width_mult=0.125), channels=8, ms_mrg_pairs=3, use_ms=use_ms, use_mrg=use_mrg
    ).eval()
    assert sorted(net.ms) == (["1", "2", "3"] if use_ms else [])
    assert sorted(net.mrg) == (["1", "2", "3"] if use_mrg else [])
    clip = torch.randn(1, 3, 8, 32, 64)
    assert net(clip).shape == (1, 32, 64)
    if use_ms:  # MS-only: the decoder sees the MS-enhanced scales, no gated skips
        x = net.encode(clip)
        enhanced = net.ms["2"](x[2], x[1], x[3])
        assert not torch.allclose(enhanced, x[2])

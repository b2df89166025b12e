"""Saliency metrics: parity with the MIT/DHF1K MATLAB definitions, edge cases, blur, averaging, loss.

The reference functions below are direct NumPy transcriptions of cvzoya/saliency ``code_forMetrics``
(``CC.m``, ``NSS.m``, ``similarity.m``, ``KLdiv.m``, ``AUC_Judd.m`` without jitter), written from
their published definitions with MATLAB's conventions (``std`` with N−1, ``eps`` = 2^-52).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avlab.metrics.saliency import (
    EPS_MATLAB,
    SaliencyLoss,
    auc_judd,
    cc,
    frame_metrics,
    gaussian_blur,
    kl_div,
    nss,
    postprocess,
    similarity,
    video_average,
)


# --------------------------------------------------------------------------- MATLAB references
def ref_cc(s: np.ndarray, g: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (s - s.mean()) / s.std(ddof=1)
        b = (g - g.mean()) / g.std(ddof=1)
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))  # corr2


def ref_nss(s: np.ndarray, f: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - s.mean()) / s.std(ddof=1)
        vals = z[f.astype(bool)]
        return float(vals.mean()) if vals.size else math.nan


def ref_sim(s: np.ndarray, g: np.ndarray) -> float:
    def norm(m: np.ndarray) -> np.ndarray:
        if np.any(m):
            with np.errstate(invalid="ignore", divide="ignore"):
                m = (m - m.min()) / (m.max() - m.min())
                m = m / m.sum()
        return m

    return float(np.minimum(norm(s), norm(g)).sum())


def ref_kl(s: np.ndarray, g: np.ndarray) -> float:
    s = s / s.sum() if np.any(s) else s
    g = g / g.sum() if np.any(g) else g
    return float((g * np.log(EPS_MATLAB + g / (s + EPS_MATLAB))).sum())


def ref_auc_judd(s: np.ndarray, f: np.ndarray) -> float:
    if not np.any(f):
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (s - s.min()) / (s.max() - s.min())
    if np.all(np.isnan(s)):
        return math.nan
    S, F = s.ravel(), f.ravel()
    sth = S[F > 0]
    n_fix, n_pix = len(sth), len(S)
    thresholds = np.sort(sth)[::-1]
    tp = np.zeros(n_fix + 2)
    fp = np.zeros(n_fix + 2)
    tp[-1] = fp[-1] = 1
    for i in range(1, n_fix + 1):
        above = np.sum(S >= thresholds[i - 1])
        tp[i] = i / n_fix
        fp[i] = (above - i) / (n_pix - n_fix)
    return float(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2))  # trapz(fp, tp)


def _maps(seed: int, h: int = 36, w: int = 64, n_fix: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pred = np.exp(
        -(((xx - rng.uniform(0, w)) / 9) ** 2 + ((yy - rng.uniform(0, h)) / 6) ** 2)
    ) + 0.2 * rng.random((h, w))
    gt = np.exp(-(((xx - rng.uniform(0, w)) / 7) ** 2 + ((yy - rng.uniform(0, h)) / 5) ** 2))
    fix = np.zeros((h, w), np.uint8)
    fix.flat[rng.choice(h * w, n_fix, replace=False)] = 1
    return pred, gt, fix


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_the_matlab_definitions(seed: int) -> None:
    pred, gt, fix = _maps(seed)
    assert float(cc(_t(pred), _t(gt))) == pytest.approx(ref_cc(pred, gt), abs=1e-10)
    assert float(nss(_t(pred), _t(fix))) == pytest.approx(ref_nss(pred, fix), abs=1e-10)
    assert float(similarity(_t(pred), _t(gt))) == pytest.approx(ref_sim(pred, gt), abs=1e-10)
    assert float(kl_div(_t(pred), _t(gt))) == pytest.approx(ref_kl(pred, gt), abs=1e-10)
    assert float(auc_judd(_t(pred), _t(fix))) == pytest.approx(ref_auc_judd(pred, fix), abs=1e-10)


def test_auc_judd_with_ties_and_quantised_maps() -> None:
    pred, _, fix = _maps(5)
    q = np.round(pred * 4) / 4  # heavy ties: #{S >= thr} must count every tied pixel
    assert float(auc_judd(_t(q), _t(fix))) == pytest.approx(ref_auc_judd(q, fix), abs=1e-12)
    # A binary map equal to the fixations: MATLAB's tie handling (no jitter) gives just under 1.
    perfect = fix.astype(np.float64)
    assert float(auc_judd(_t(perfect), _t(fix))) == pytest.approx(ref_auc_judd(perfect, fix), abs=1e-12)
    assert float(auc_judd(_t(perfect), _t(fix))) > 0.99


def test_empty_fixation_map_gives_nan_nss_and_auc() -> None:
    pred, gt, _ = _maps(3)
    empty = np.zeros_like(pred, dtype=np.uint8)
    assert math.isnan(float(nss(_t(pred), _t(empty)))) and math.isnan(ref_nss(pred, empty))
    assert math.isnan(float(auc_judd(_t(pred), _t(empty)))) and math.isnan(ref_auc_judd(pred, empty))
    # An empty continuous map: CC undefined (NaN), SIM and KL 0 as in the MATLAB code.
    zero = np.zeros_like(gt)
    assert math.isnan(float(cc(_t(pred), _t(zero))))
    assert float(similarity(_t(pred), _t(zero))) == ref_sim(pred, zero) == 0.0
    assert float(kl_div(_t(pred), _t(zero))) == ref_kl(pred, zero) == 0.0


def test_constant_prediction_follows_the_reference() -> None:
    _, gt, fix = _maps(4)
    const = np.full_like(gt, 0.5)
    for ours, ref in (
        (cc(_t(const), _t(gt)), ref_cc(const, gt)),
        (nss(_t(const), _t(fix)), ref_nss(const, fix)),
        (similarity(_t(const), _t(gt)), ref_sim(const, gt)),
        (auc_judd(_t(const), _t(fix)), ref_auc_judd(const, fix)),
    ):
        assert math.isnan(float(ours)) and math.isnan(ref)
    # KL of a uniform prediction is finite and equals the reference.
    assert float(kl_div(_t(const), _t(gt))) == pytest.approx(ref_kl(const, gt), abs=1e-10)
    # Through the whole protocol (resize + blur + min-max) a constant stays constant.
    m = frame_metrics(torch.full((8, 14), 0.3), _t(gt), torch.from_numpy(fix))
    assert math.isnan(float(m["cc"])) and math.isnan(float(m["auc_j"])) and math.isfinite(float(m["kl"]))


def test_pysaliency_parity_if_installed() -> None:
    pysaliency = pytest.importorskip("pysaliency")
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # pysaliency 0.2.22 on NumPy >= 2.4
    pred, gt, fix = _maps(7)
    assert float(cc(_t(pred), _t(gt))) == pytest.approx(pysaliency.metrics.CC(pred, gt), abs=1e-6)
    assert float(kl_div(_t(pred), _t(gt))) == pytest.approx(pysaliency.metrics.MIT_KLDiv(pred, gt), abs=1e-6)
    auc = pysaliency.roc.general_roc(pred[fix > 0].astype(float), pred[fix == 0].astype(float), judd=1)[0]
    assert float(auc_judd(_t(pred), _t(fix))) == pytest.approx(auc, abs=1e-6)


def test_blur_matches_scipy_reflect101() -> None:
    from scipy.ndimage import gaussian_filter1d

    x = np.random.default_rng(0).random((30, 50))
    # scipy: radius = int(truncate * sigma + 0.5) = 5 -> the same 11 normalised taps; 'mirror' = reflect-101.
    ref = gaussian_filter1d(
        gaussian_filter1d(x, 2.0, axis=0, mode="mirror", truncate=2.5),
        2.0,
        axis=1,
        mode="mirror",
        truncate=2.5,
    )
    np.testing.assert_allclose(gaussian_blur(_t(x), 2.0, 11).numpy(), ref, atol=1e-12)


def test_postprocess_resizes_to_the_gt_size_and_never_touches_fixations() -> None:
    pred = torch.rand(16, 28)
    gt = torch.rand(45, 80)
    fix = torch.zeros(45, 80, dtype=torch.uint8)
    fix[10, 20] = fix[30, 60] = 1
    out = postprocess(pred, (45, 80))
    assert out.shape == (45, 80) and float(out.min()) == 0.0 and float(out.max()) == 1.0
    m = frame_metrics(pred, gt, fix)
    assert set(m) == {"cc", "nss", "auc_j", "sim", "kl"}
    # NSS reads the post-processed map exactly at the two native fixation pixels.
    z = (out - out.mean()) / out.std()
    assert float(m["nss"]) == pytest.approx(float((z[10, 20] + z[30, 60]) / 2))


def test_video_average_drops_nan_frames_then_averages_videos() -> None:
    values = np.array([1.0, 3.0, np.nan, 10.0, np.nan, np.nan])
    video = np.array([0, 0, 0, 1, 2, 2])
    out = video_average(values, video, {"a": [0], "b": [1, 2]})
    assert out[""] == pytest.approx((2.0 + 10.0) / 2)  # video 2 has no defined frame
    assert out["a"] == 2.0 and out["b"] == 10.0
    assert math.isnan(video_average(np.array([np.nan]), np.array([0]))[""])


def test_loss_eq19() -> None:
    _, gt, _ = _maps(1)
    g = _t(gt).float()[None]
    loss = SaliencyLoss()
    assert float(loss(g, g)) == pytest.approx(-0.2, abs=1e-5)  # KL 0, CC 1, SIM 1
    worse = torch.rand_like(g)
    t = SaliencyLoss.terms(worse, g)
    assert float(loss(worse, g)) == pytest.approx(float(t["kl"] - 0.1 * t["cc"] - 0.1 * t["sim"]), abs=1e-6)
    # A target with no fixation is left out; an all-empty batch gives a zero loss with a graph.
    p = torch.rand(2, 8, 8, requires_grad=True)
    z = torch.zeros(2, 8, 8)
    out = loss(p, z)
    assert float(out.detach()) == 0.0 and out.requires_grad
    mixed = torch.stack([g[0, :8, :8], z[0]])
    assert float(loss(p, mixed)) == pytest.approx(float(loss(p[:1], mixed[:1])), abs=1e-6)

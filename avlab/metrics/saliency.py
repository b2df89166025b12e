"""Saliency metrics (MIT / DHF1K conventions), the AVRSP loss (eq. 16–19) and video averaging.

Evaluation protocol (fixed, and applied to every number avlab reports)
-------------------------------------------------------------------
1. The model's map (sigmoid output at the model resolution, e.g. 224×384) is **resized to the
   ground-truth size** with bicubic interpolation (antialiased when shrinking, like MATLAB's
   ``imresize``). Fixation maps are **never resized**; they stay binary at native resolution.
2. **Blur** (stated choice, the ViNet convention): Gaussian, 11×11 kernel, σ = 2 px, applied after
   the resize, borders reflected (OpenCV's default ``BORDER_REFLECT_101``). ``blur_sigma=0``
   disables it.
3. The map is min-max normalised to [0, 1] (as ViNet saves its maps); a constant map stays constant.
4. Per frame, the metrics are the MIT definitions (cvzoya/saliency ``code_forMetrics``):

   ======  ===================================================================================
   CC      Pearson correlation of prediction and continuous GT (``corr2`` of z-scored maps).
   NSS     prediction z-scored with the N−1 std (MATLAB ``std``), mean at fixated pixels.
   AUC-J   Judd's AUC: thresholds = prediction at fixated pixels, tp = i/Nfix,
           fp = (#{S ≥ thr} − i)/(Npix − Nfix), (0,0) and (1,1) added, trapezoid rule. No jitter
           (the MATLAB default adds ``rand/1e7`` to break ties; ties are handled exactly here
           because ``#{S ≥ thr}`` counts every tied pixel), so scores are deterministic.
   SIM     both maps min-max normalised (if non-zero) then divided by their sums; Σ min.
   KL      both maps divided by their sums (no min-max); Σ G·log(ε + G/(P + ε)), ε = 2.2204e-16.
   ======  ===================================================================================

   Undefined cases follow the MATLAB code and give NaN: NSS and AUC-J with no fixation; CC, NSS,
   AUC-J and SIM of a constant (non-zero) prediction; CC of a constant GT map. KL stays finite.
5. **Averaging**: NaN frames are dropped (not zeroed); frames → per-video mean → mean over videos
   (over all test videos for the overall score, over one dataset's videos for ``<dataset>/``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EPS_MATLAB",
    "METRICS",
    "SaliencyLoss",
    "auc_judd",
    "cc",
    "frame_metrics",
    "gaussian_blur",
    "kl_div",
    "nss",
    "postprocess",
    "similarity",
    "video_average",
]

#: MATLAB's ``eps`` (2^-52), used by the MIT KL code.
EPS_MATLAB = 2.220446049250313e-16
#: Metric names in the order avlab reports them.
METRICS = ("cc", "nss", "auc_j", "sim", "kl")


# --------------------------------------------------------------------------- post-processing
def gaussian_blur(x: Tensor, sigma: float = 2.0, ksize: int = 11) -> Tensor:
    """Separable Gaussian blur of ``[..., H, W]`` maps, borders reflected (reflect-101)."""
    if sigma <= 0:
        return x
    half = ksize // 2
    coords = torch.arange(ksize, dtype=x.dtype, device=x.device) - half
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    shape = x.shape
    y = x.reshape(-1, *shape[-2:])
    # 'reflect' in torch is OpenCV's BORDER_REFLECT_101; it needs the pad smaller than the side.
    mode = "reflect" if min(shape[-2:]) > half else "replicate"
    # unfold + matmul: ~2x faster than a 1-channel conv2d on the CPU, same result.
    y = F.pad(y[:, None], (half, half, 0, 0), mode=mode)[:, 0]
    y = y.unfold(-1, ksize, 1) @ kernel
    y = F.pad(y[:, None], (0, 0, half, half), mode=mode)[:, 0]
    y = y.unfold(-2, ksize, 1) @ kernel
    return y.reshape(shape)


def _minmax(x: Tensor) -> Tensor:
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    # A constant map stays as it is (min-max is undefined); the metrics then report NaN where MIT does.
    return torch.where(rng > 0, (x - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), x)


def postprocess(
    pred: Tensor,
    size: tuple[int, int],
    blur_sigma: float = 2.0,
    blur_ksize: int = 11,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Steps 1–3 of the protocol: resize ``[..., h, w]`` to ``size`` (bicubic), blur, min-max.

    Metrics use float64 (as MATLAB); writing maps (``avlab predict``) may use float32.
    """
    lead = pred.shape[:-2]
    x = pred.reshape(-1, 1, *pred.shape[-2:]).to(dtype)
    # A constant map must stay exactly constant: resampling noise (~1e-16) would otherwise be
    # stretched to [0, 1] by the min-max step and turn "no information" into random structure.
    constant = x.amax(dim=(-2, -1), keepdim=True) == x.amin(dim=(-2, -1), keepdim=True)
    if tuple(x.shape[-2:]) != tuple(size):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=shrink)
    x = gaussian_blur(x, blur_sigma, blur_ksize)
    x = torch.where(constant, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), x)
    return _minmax(x).reshape(*lead, *size)


# --------------------------------------------------------------------------- per-frame metrics
def _std(x: Tensor) -> Tensor:
    return x.std(dim=(-2, -1), unbiased=True, keepdim=True)


def cc(pred: Tensor, gt: Tensor) -> Tensor:
    """Linear correlation coefficient (MIT ``CC.m``), per map over the last two dims."""
    p = pred - pred.mean(dim=(-2, -1), keepdim=True)
    g = gt - gt.mean(dim=(-2, -1), keepdim=True)
    num = (p * g).sum(dim=(-2, -1))
    den = torch.sqrt((p * p).sum(dim=(-2, -1)) * (g * g).sum(dim=(-2, -1)))
    return num / den  # 0/0 = NaN for a constant map, as in MATLAB


def nss(pred: Tensor, fix: Tensor) -> Tensor:
    """Normalised scanpath saliency (MIT ``NSS.m``): N−1 std, mean at fixated pixels."""
    z = (pred - pred.mean(dim=(-2, -1), keepdim=True)) / _std(pred)
    mask = fix > 0
    n = mask.sum(dim=(-2, -1))
    total = torch.where(mask, z, torch.zeros_like(z)).sum(dim=(-2, -1))
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, math.nan))


def similarity(pred: Tensor, gt: Tensor) -> Tensor:
    """SIM (MIT ``similarity.m``): min-max (if non-zero) and sum-normalise both, Σ min."""

    def norm(x: Tensor) -> Tensor:
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        nonzero = (x != 0).any(dim=-1, keepdim=True).any(dim=-2, keepdim=True)
        y = (x - lo) / (hi - lo)  # NaN for a constant non-zero map, as in MATLAB
        y = y / y.sum(dim=(-2, -1), keepdim=True)
        return torch.where(nonzero, y, x)

    return torch.minimum(norm(pred), norm(gt)).sum(dim=(-2, -1))


def kl_div(pred: Tensor, gt: Tensor, eps: float = EPS_MATLAB) -> Tensor:
    """KL divergence of the prediction from the GT (MIT ``KLdiv.m``; eq. 16 with ε = MATLAB eps)."""

    def norm(x: Tensor) -> Tensor:
        s = x.sum(dim=(-2, -1), keepdim=True)
        return torch.where(s != 0, x / torch.where(s != 0, s, torch.ones_like(s)), x)

    p, g = norm(pred), norm(gt)
    return (g * torch.log(eps + g / (p + eps))).sum(dim=(-2, -1))


def auc_judd(pred: Tensor, fix: Tensor) -> Tensor:
    """AUC-Judd (MIT ``AUC_Judd.m`` without jitter) of one map ``[H, W]`` or a batch ``[..., H, W]``."""
    if pred.dim() > 2:
        flat_p = pred.reshape(-1, *pred.shape[-2:])
        flat_f = fix.reshape(-1, *fix.shape[-2:])
        out = torch.stack([auc_judd(p, f) for p, f in zip(flat_p, flat_f)])
        return out.reshape(pred.shape[:-2])
    s = pred.reshape(-1).to(torch.float64)
    f = fix.reshape(-1) > 0
    n_fix, n_pix = int(f.sum()), s.numel()
    # A NaN in the map (a diverged model) would sort anywhere and give an area above 1, not NaN.
    if n_fix == 0 or n_fix == n_pix or not bool(torch.isfinite(s).all()):
        return torch.tensor(math.nan, dtype=torch.float64, device=pred.device)
    lo, hi = s.min(), s.max()
    if hi == lo:  # MATLAB: (S - min) / 0 -> all NaN -> score NaN
        return torch.tensor(math.nan, dtype=torch.float64, device=pred.device)
    s = (s - lo) / (hi - lo)
    thresholds = torch.sort(s[f], descending=True).values
    sorted_all = torch.sort(s).values
    # #{S >= thr} for every threshold at once: pixels minus those strictly below.
    above = n_pix - torch.searchsorted(sorted_all, thresholds, right=False)
    i = torch.arange(1, n_fix + 1, dtype=torch.float64, device=s.device)
    tp = torch.cat([s.new_zeros(1), i / n_fix, s.new_ones(1)])
    fp = torch.cat([s.new_zeros(1), (above.to(torch.float64) - i) / (n_pix - n_fix), s.new_ones(1)])
    return torch.trapezoid(tp, fp)


def frame_metrics(
    pred: Tensor, gt: Tensor, fix: Tensor, *, blur_sigma: float = 2.0, blur_ksize: int = 11
) -> dict[str, Tensor]:
    """All metrics of one frame: ``pred [h, w]`` at model resolution, ``gt``/``fix`` native ``[H, W]``.

    The prediction is post-processed once per target size (continuous map and fixation map may
    differ in size in some layouts); the fixations are used as they are.
    """
    gt = gt.to(torch.float64)
    p_gt = postprocess(pred, tuple(gt.shape[-2:]), blur_sigma, blur_ksize)
    p_fix = (
        p_gt
        if tuple(fix.shape[-2:]) == tuple(gt.shape[-2:])
        else postprocess(pred, tuple(fix.shape[-2:]), blur_sigma, blur_ksize)
    )
    return {
        "cc": cc(p_gt, gt),
        "nss": nss(p_fix, fix),
        "auc_j": auc_judd(p_fix, fix),
        "sim": similarity(p_gt, gt),
        "kl": kl_div(p_gt, gt),
    }


# --------------------------------------------------------------------------- averaging
def video_average(
    values: np.ndarray, video: np.ndarray, groups: dict[str, Iterable[int]] | None = None
) -> dict[str, float]:
    """Frame values → per-video nan-mean → mean over videos (overall and per group of videos).

    Args:
        values: per-frame metric values (NaN frames are dropped).
        video: per-frame video ids.
        groups: optional ``{name: video ids}``; adds ``name`` → mean over those videos.

    A video whose frames are all NaN is left out of the mean over videos; the result is NaN when
    no video has a value.
    """
    values = np.asarray(values, dtype=np.float64)
    video = np.asarray(video)
    per_video: dict[int, float] = {}
    for v in np.unique(video):
        vals = values[video == v]
        vals = vals[~np.isnan(vals)]
        if vals.size:
            per_video[int(v)] = float(vals.mean())

    def mean_of(ids: Iterable[int]) -> float:
        got = [per_video[int(i)] for i in ids if int(i) in per_video]
        return float(np.mean(got)) if got else math.nan

    out = {"": mean_of(per_video)}
    for name, ids in (groups or {}).items():
        out[name] = mean_of(ids)
    return out


# --------------------------------------------------------------------------- loss
class SaliencyLoss(nn.Module):
    """AVRSP's training loss, eq. (19): ``KL + α1·CC + α2·SIM`` with α1 = α2 = −0.1.

    Computed per sample on maps at the model resolution and averaged over the batch:
    KL (eq. 16) on sum-normalised maps with ε = MATLAB eps; CC (eq. 17) is Pearson's correlation;
    SIM (eq. 18) on min-max then sum-normalised maps. Small floors keep the gradients finite for
    constant maps (a training-only guard; the evaluation metrics above keep MATLAB's NaNs).
    Targets whose map is all zero (no fixation in that frame) carry no information and are left
    out of the mean; a batch with only such targets gives a zero loss that still has a graph.
    """

    def __init__(self, w_kl: float = 1.0, w_cc: float = -0.1, w_sim: float = -0.1) -> None:
        super().__init__()
        self.w_kl, self.w_cc, self.w_sim = float(w_kl), float(w_cc), float(w_sim)

    @staticmethod
    def terms(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
        """Per-sample KL, CC and SIM of ``[B, H, W]`` maps."""
        tiny = 1e-8
        p = pred.flatten(1).float()
        g = gt.flatten(1).float()
        # eq. (16): KL(P, G) = Σ G_i log(ε + G_i / (ε + P_i)) on distributions.
        pn = p / p.sum(1, keepdim=True).clamp_min(tiny)
        gn = g / g.sum(1, keepdim=True).clamp_min(tiny)
        kl = (gn * torch.log(EPS_MATLAB + gn / (pn + EPS_MATLAB))).sum(1)
        # eq. (17): CC = cov(P, G) / (σ_P σ_G).
        pc, gc = p - p.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
        cc_ = (pc * gc).sum(1) / torch.sqrt((pc * pc).sum(1) * (gc * gc).sum(1)).clamp_min(tiny)

        # eq. (18): SIM = Σ min(P_i, G_i) on min-max then sum-normalised maps.
        def mm(x: Tensor) -> Tensor:
            lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(tiny)
            return x / x.sum(1, keepdim=True).clamp_min(tiny)

        sim = torch.minimum(mm(p), mm(g)).sum(1)
        return {"kl": kl, "cc": cc_, "sim": sim}

    def forward(self, pred: Tensor, gt: Tensor) -> Tensor:
        t = self.terms(pred, gt)
        loss = self.w_kl * t["kl"] + self.w_cc * t["cc"] + self.w_sim * t["sim"]  # eq. (19)
        valid = gt.flatten(1).amax(1) > 0
        if not bool(valid.any()):
            return (pred * 0).sum()
        return loss[valid].mean()

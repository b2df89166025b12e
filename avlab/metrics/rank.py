"""Differentiable rank losses of the UNQA training strategy (paper §IV, eq. 9–15).

* :func:`mae_rank_loss` — step one: ``L = L_MAE + L_rank`` (eq. 9–13).
* :func:`soft_rank` / :func:`soft_srcc` / :func:`srcc_loss` — steps two and three:
  ``L_SRCC = 1 − SRCC`` (eq. 14–15) with a differentiable *soft* rank of the predictions.

Why a soft rank: the exact rank is piecewise constant, so its gradient is zero almost everywhere
and eq. 15 cannot train anything as written. No public IQA/VQA toolkit ships a differentiable SRCC
loss; ``torchsort`` needs a C++ build, so this module uses the
pure-PyTorch pairwise-sigmoid soft rank ``r_i = ½ + Σ_j σ((x_i − x_j)/τ)``, which tends to the exact
(1-based) rank as τ → 0. The predictions are z-scored first so τ is a fraction of their spread
and the loss does not depend on the arbitrary scale of a modality head's output. O(B²) memory is
fine for mini-batches. The ground-truth ranks need no gradient and are exact (ties averaged).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["exact_rank", "mae_rank_loss", "pairwise_rank_loss", "soft_rank", "soft_srcc", "srcc_loss"]


def _flat(x: Tensor, what: str) -> Tensor:
    # At least float32: a bf16 head output (mixed precision) would quantise the pairwise differences
    # and give the soft-rank gradients ~20 % error; the cast keeps the gradient flowing back to it.
    x = x.reshape(-1).to(torch.promote_types(x.dtype, torch.float32))
    if x.numel() < 2:
        raise ValueError(f"{what} needs at least 2 samples in the batch, found {x.numel()}")
    return x


def exact_rank(x: Tensor) -> Tensor:
    """1-based ranks with ties averaged (``scipy.stats.rankdata(method='average')``), no gradient."""
    x = _flat(x.detach(), "exact_rank")
    less = (x[None, :] < x[:, None]).sum(dim=1).to(x.dtype)
    equal = (x[None, :] == x[:, None]).sum(dim=1).to(x.dtype)
    # rank_i = #(x_j < x_i) + (#(x_j == x_i) + 1) / 2 — the mean of the tied positions.
    return less + (equal + 1.0) / 2.0


def soft_rank(x: Tensor, temperature: float = 0.05, standardise: bool = True) -> Tensor:
    """Pairwise-sigmoid soft rank ``r_i = ½ + Σ_j σ((x_i − x_j)/τ)`` (1-based, differentiable).

    With ``standardise`` the input is z-scored first, so ``temperature`` is relative to its spread.
    """
    if temperature <= 0:
        raise ValueError(f"soft_rank: temperature must be > 0, found {temperature}")
    x = _flat(x, "soft_rank")
    if standardise:
        x = (x - x.mean()) / (x.std(unbiased=False) + 1e-8)
    diff = (x[:, None] - x[None, :]) / temperature
    # σ(0) = ½ on the diagonal, so the sum already counts the element itself by ½; +½ makes ranks start at 1.
    return 0.5 + torch.sigmoid(diff).sum(dim=1)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (torch.sqrt((a * a).sum() * (b * b).sum()) + 1e-12)


def soft_srcc(pred: Tensor, target: Tensor, temperature: float = 0.05) -> Tensor:
    """Eq. 15 with the soft rank of ``pred`` and the exact rank of ``target``."""
    pred, target = _flat(pred, "soft_srcc"), _flat(target, "soft_srcc")
    if pred.shape != target.shape:
        raise ValueError(f"soft_srcc: pred and target differ in length ({pred.numel()} vs {target.numel()})")
    return _pearson(soft_rank(pred, temperature), exact_rank(target).to(pred.dtype))  # pred: >= float32


def srcc_loss(pred: Tensor, target: Tensor, temperature: float = 0.05) -> Tensor:
    """``L_SRCC = 1 − SRCC`` (eq. 14), SRCC from :func:`soft_srcc` (eq. 15)."""
    return 1.0 - soft_srcc(pred, target, temperature)


def pairwise_rank_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 11–13: ``1/B² Σ_i Σ_j max(0, |s_i − s_j| − e(s_i, s_j)·(o_i − o_j))``,
    e = +1 if s_i ≥ s_j else −1."""
    o = _flat(pred, "pairwise_rank_loss")
    s = _flat(target, "pairwise_rank_loss").to(o.dtype)
    ds = s[:, None] - s[None, :]
    e = torch.where(ds >= 0, torch.ones_like(ds), -torch.ones_like(ds))  # eq. 13
    do = o[:, None] - o[None, :]
    per_pair = torch.relu(ds.abs() - e * do)  # eq. 12
    return per_pair.sum() / (o.numel() ** 2)  # eq. 11


def mae_rank_loss(pred: Tensor, target: Tensor, rank_weight: float = 1.0) -> Tensor:
    """Step-one loss ``L = L_MAE + L_rank`` (eq. 9, MAE eq. 10); ``rank_weight`` = 1 is the paper."""
    o = _flat(pred, "mae_rank_loss")
    s = _flat(target, "mae_rank_loss").to(o.dtype)
    return (o - s).abs().mean() + rank_weight * pairwise_rank_loss(o, s)

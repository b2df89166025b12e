"""UNQA rank losses: soft-rank SRCC against the exact SRCC, non-zero gradients, eq. 11-13 by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from avlab.metrics.rank import exact_rank, mae_rank_loss, pairwise_rank_loss, soft_rank, soft_srcc, srcc_loss


def test_exact_rank_matches_scipy_with_ties() -> None:
    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 1.0])
    np.testing.assert_allclose(exact_rank(x).numpy(), stats.rankdata(x.numpy(), method="average"))


def test_soft_rank_tends_to_exact_rank() -> None:
    x = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(soft_rank(x, temperature=1e-4).numpy(), stats.rankdata(x.numpy()), atol=1e-6)


@pytest.mark.parametrize("n, rho", [(200, 0.9), (64, 0.5), (16, -0.3)])
def test_soft_srcc_matches_exact_srcc(n: int, rho: float) -> None:
    g = torch.Generator().manual_seed(n)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    pred = rho * y + (1 - rho**2) ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    exact = stats.spearmanr(pred.numpy(), y.numpy()).statistic
    soft = float(soft_srcc(pred, y, temperature=0.01))
    assert abs(soft - exact) < 0.01, (soft, exact)
    # The default temperature (0.05 of the batch's std) stays close as well.
    assert abs(float(soft_srcc(pred, y)) - exact) < 0.03


def test_srcc_loss_gradients_are_nonzero_and_descend() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(32, generator=g)
    pred = torch.randn(32, generator=g, requires_grad=True)
    loss = srcc_loss(pred, y)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 1e-3 and (pred.grad != 0).sum() > 16
    # A few gradient steps raise the exact SRCC (the loss trains ranks, eq. 14).
    x = pred.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=1.0)
    before = stats.spearmanr(x.detach().numpy(), y.numpy()).statistic
    for _ in range(100):
        opt.zero_grad()
        srcc_loss(x, y).backward()
        opt.step()
    after = stats.spearmanr(x.detach().numpy(), y.numpy()).statistic
    assert after > before + 0.3 and after > 0.7


def test_pairwise_rank_loss_eq_11_to_13_by_hand() -> None:
    o = torch.tensor([0.2, 0.5, 0.1])
    s = torch.tensor([1.0, 3.0, 2.0])
    total = 0.0
    for i in range(3):
        for j in range(3):
            e = 1.0 if s[i] >= s[j] else -1.0
            total += max(0.0, abs(float(s[i] - s[j])) - e * float(o[i] - o[j]))
    assert float(pairwise_rank_loss(o, s)) == pytest.approx(total / 9)
    assert float(mae_rank_loss(o, s)) == pytest.approx(float((o - s).abs().mean()) + total / 9)
    # Perfectly ordered predictions with the same gaps cost nothing.
    assert float(pairwise_rank_loss(s, s)) == 0.0


def test_rank_losses_reject_single_item_batches() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        srcc_loss(torch.tensor([1.0]), torch.tensor([2.0]))

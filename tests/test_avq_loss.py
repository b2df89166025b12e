"""eq. (5) loss and Lin's CCC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional import concordance_corrcoef

from avlab.losses import CCCRMSELoss, concordance_cc, rmse


def _np_ccc(x: np.ndarray, y: np.ndarray, ddof: int = 0) -> float:
    cov = np.cov(x, y, ddof=ddof)
    return 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2)


def test_ccc_population_default_against_numpy_and_doc_example() -> None:
    p = torch.tensor([2.5, 0.0, 2.0, 8.0], dtype=torch.float64)
    t = torch.tensor([3.0, -0.5, 2.0, 7.0], dtype=torch.float64)
    assert concordance_cc(p, t).item() == pytest.approx(_np_ccc(p.numpy(), t.numpy(), ddof=0), abs=1e-12)
    assert concordance_cc(p, t).item() == pytest.approx(0.9768, abs=1e-4)  # population form
    assert concordance_cc(p, t, unbiased=True).item() == pytest.approx(0.9777, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccc_unbiased_matches_torchmetrics(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(17, generator=g, dtype=torch.float64) * 2 + 1
    t = 0.5 * p + torch.randn(17, generator=g, dtype=torch.float64)
    ours = concordance_cc(p, t, unbiased=True)
    theirs = concordance_corrcoef(p, t).reshape(())
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-10, atol=1e-10)
    # and the default (population) convention differs from torchmetrics for small n
    assert abs(concordance_cc(p, t).item() - theirs.item()) > 1e-6


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_loss_eq5_against_numpy(lam: float) -> None:
    rng = np.random.default_rng(3)
    y = rng.uniform(1, 5, 32)
    p = y + rng.normal(0, 0.5, 32) + 0.2
    expected = lam * (1 - _np_ccc(p, y)) + (1 - lam) * np.sqrt(np.mean((p - y) ** 2))  # eq. (5)
    got = CCCRMSELoss(lam=lam)(torch.tensor(p), torch.tensor(y)).item()
    assert got == pytest.approx(expected, abs=1e-10)


def test_perfect_prediction_gives_zero_loss_and_finite_gradient() -> None:
    y = torch.tensor([1.0, 2.5, 3.0, 4.5, 5.0])
    p = y.clone().requires_grad_(True)
    loss = CCCRMSELoss()(p, y)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    loss.backward()
    assert torch.isfinite(p.grad).all()


def test_batch_size_one_falls_back_to_rmse() -> None:
    p = torch.tensor([3.0], requires_grad=True)
    t = torch.tensor([2.0])
    loss = CCCRMSELoss(lam=0.6)(p, t)
    assert loss.item() == pytest.approx(1.0)  # RMSE only, not 0.6·(1 − CCC) + 0.4·RMSE
    loss.backward()
    assert torch.isfinite(p.grad).all()
    with pytest.raises(ValueError, match="at least 2"):
        concordance_cc(p, t)


def test_shapes_and_lambda_validation() -> None:
    # [B] vs [B, 1] is accepted (flattened); different sizes are not
    assert rmse(torch.zeros(4), torch.ones(4, 1)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number of elements"):
        CCCRMSELoss()(torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CCCRMSELoss(lam=1.5)


def test_loss_decreases_when_training() -> None:
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 16)[:, None]
    y = 1 + 4 * x[:, 0] ** 2
    lin = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    crit = CCCRMSELoss()
    first = crit(lin(x)[:, 0], y).item()
    for _ in range(50):
        opt.zero_grad()
        loss = crit(lin(x)[:, 0], y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first

"""Training losses.

``CCCRMSELoss`` is Attentive AV-FusionNet's objective, eq. (5): L = λ(1 − CCC) + (1 − λ)·RMSE.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CCCRMSELoss", "concordance_cc", "rmse"]

# Floor under variances / MSE: keeps the CCC denominator and the sqrt's gradient finite when a
# batch is (numerically) constant or perfectly predicted, without visibly changing the value.
_EPS = 1e-12


def _flat_pair(pred: Tensor, target: Tensor, what: str) -> tuple[Tensor, Tensor]:
    pred, target = pred.reshape(-1), target.reshape(-1)
    if pred.numel() != target.numel():
        raise ValueError(
            f"{what}: pred and target must have the same number of elements, "
            f"found {pred.numel()} and {target.numel()}"
        )
    return pred, target.to(pred.dtype)


def concordance_cc(pred: Tensor, target: Tensor, unbiased: bool = False) -> Tensor:
    """Lin's concordance correlation coefficient (Lin 1989, the paper's ref. [25]).

    ``CCC = 2·cov(x, y) / (σ_x² + σ_y² + (μ_x − μ_y)²)``.

    Variance convention: population moments (divide by n) by default, as in Lin's definition.
    ``unbiased=True`` divides covariance and variances by n − 1, which is what
    ``torchmetrics.functional.concordance_corrcoef`` (1.9) does; the two differ slightly because
    the (μ_x − μ_y)² term is not rescaled. Inputs are flattened; needs n ≥ 2.
    """
    x, y = _flat_pair(pred, target, "concordance_cc")
    n = x.numel()
    if n < 2:
        raise ValueError(f"concordance_cc needs at least 2 samples, found {n}")
    ddof = 1 if unbiased else 0
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    cov = (dx * dy).sum() / (n - ddof)
    vx = (dx * dx).sum() / (n - ddof)
    vy = (dy * dy).sum() / (n - ddof)
    return 2 * cov / (vx + vy + (mx - my) ** 2).clamp_min(_EPS)


def rmse(pred: Tensor, target: Tensor) -> Tensor:
    """Root mean squared error with a gradient that stays finite at zero error."""
    x, y = _flat_pair(pred, target, "rmse")
    # clamp before sqrt: d sqrt(u)/du is infinite at u = 0 (perfect prediction) → NaN gradients.
    return ((x - y) ** 2).mean().clamp_min(_EPS).sqrt()


class CCCRMSELoss(nn.Module):
    """eq. (5): ``L = λ(1 − CCC) + (1 − λ)·RMSE``, λ ∈ [0, 1] (the paper uses λ = 0.6).

    CCC is computed over the batch with population variances (see :func:`concordance_cc`).
    Batch-size guard: CCC is undefined for fewer than 2 samples (zero variances), so such a batch
    (e.g. a last batch of size 1) falls back to the RMSE term alone, ``L = RMSE``, instead of
    producing a NaN or an arbitrary CCC value.
    """

    def __init__(self, lam: float = 0.6, unbiased: bool = False) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"CCCRMSELoss: lam (λ of eq. (5)) must be in [0, 1], found {lam}")
        self.lam = float(lam)
        self.unbiased = unbiased

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss for predictions and targets of the same number of elements."""
        err = rmse(pred, target)
        if pred.numel() < 2:
            return err  # guard: CCC undefined for one sample
        ccc = concordance_cc(pred, target, unbiased=self.unbiased)
        return self.lam * (1 - ccc) + (1 - self.lam) * err  # eq. (5)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"

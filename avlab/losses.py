"""Training losses.

``CCCRMSELoss`` is Attentive AV-FusionNet's objective, eq. (5): L = λ(1 − CCC) + (1 − λ)·RMSE.

The mixed database training (MDT) losses of Li, Jiang and Jiang, "Unified quality assessment of
in-the-wild videos with mixed datasets training" (IJCV 2021, §3 "loss functions"), which UNQA's
Table V compares with (UNQA ref. [17]): :func:`monotonicity_loss` on the relative quality,
:func:`linearity_loss` on the nonlinearly mapped quality, :func:`scaled_l1_loss` on the
database-aligned score, summed by :func:`mdt_loss`. The equation numbers of the IJCV paper could not
be checked against its text here, so these functions cite its sections and the loss names; the
formulas are the ones of the authors' public release (``loss_m``, ``loss_a`` and the scaled L1 term).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "CCCRMSELoss",
    "concordance_cc",
    "linearity_loss",
    "mdt_loss",
    "monotonicity_loss",
    "rmse",
    "scaled_l1_loss",
]

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
    # At least float32: under bf16 mixed precision the head's output is bf16, and casting the
    # targets down to it would quantise the MOS (3.21 -> 3.219) and the loss's sums.
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return pred.to(dtype), target.to(dtype)


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


# =========================================================================== mixed database training
def monotonicity_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Monotonicity-induced loss (Li et al. 2021, §3, "monotonicity-induced loss").

    ``L_mono = 1/(n(n−1)) Σ_i Σ_j max(0, (q_i − q_j)·sign(y_j − y_i))``: every pair that the
    prediction ``q`` orders against the subjective score ``y`` costs its prediction gap; pairs with
    equal scores (and the diagonal) cost nothing. Needs n ≥ 2.
    """
    q, y = _flat_pair(pred, target, "monotonicity_loss")
    n = q.numel()
    if n < 2:
        raise ValueError(f"monotonicity_loss needs at least 2 samples, found {n}")
    gaps = q[:, None] - q[None, :]  # q_i − q_j
    order = torch.sign(y[None, :] - y[:, None])  # sign(y_j − y_i)
    return torch.relu(gaps * order).sum() / (n * (n - 1))


def linearity_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Linearity-induced loss (Li et al. 2021, §3, "linearity-induced loss"): ``(1 − PLCC)/2``.

    In [0, 1]; 0 when the prediction is an increasing linear function of the score. A constant
    prediction (or score) has no defined PLCC; the floor under the norms makes it count as
    PLCC = 0, i.e. a loss of ½, so the gradient stays finite. Needs n ≥ 2.
    """
    q, y = _flat_pair(pred, target, "linearity_loss")
    if q.numel() < 2:
        raise ValueError(f"linearity_loss needs at least 2 samples, found {q.numel()}")
    dq, dy = q - q.mean(), y - y.mean()
    plcc = (dq * dy).sum() / ((dq * dq).sum() * (dy * dy).sum()).clamp_min(_EPS).sqrt()
    return (1.0 - plcc) / 2.0


def scaled_l1_loss(pred: Tensor, target: Tensor, scale: float) -> Tensor:
    """Error-induced loss (Li et al. 2021, §3, "error-induced loss"): ``mean |Q − y| / scale``.

    ``scale`` is the width of the database's score range, so that databases rated on 0–5 and on
    0–100 weigh alike.
    """
    q, y = _flat_pair(pred, target, "scaled_l1_loss")
    if not scale > 0:
        raise ValueError(f"scaled_l1_loss: scale must be > 0, found {scale}")
    return (q - y).abs().mean() / scale


def mdt_loss(relative: Tensor, mapped: Tensor, aligned: Tensor, target: Tensor, scale: float) -> Tensor:
    """MDT's loss on one database's batch, as UNQA describes it (§V-C: "the sum of the
    monotonicity-induced loss, linearity-induced loss, and error-induced loss").

    ``relative`` is the relative quality assessor's output (monotonicity), ``mapped`` the output of
    the shared nonlinear mapping (linearity), ``aligned`` the database-specific perceptual scale
    alignment of ``mapped`` (error, on the database's own score scale ``target``).

    Batch-size guard: the two pairwise terms need n ≥ 2, so a batch of one item is scored by the
    error-induced term alone.
    """
    err = scaled_l1_loss(aligned, target, scale)
    if relative.numel() < 2:
        return err
    return monotonicity_loss(relative, target) + linearity_loss(mapped, target) + err

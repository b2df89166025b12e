"""Quality-assessment metrics shared by every quality task (numpy / scipy).

Conventions (those of the VQEG reports and the public IQA/VQA toolkits):

* SRCC and KRCC are computed on the raw predictions (rank measures are invariant to any
  monotone mapping, so a logistic fit cannot change them).
* PLCC and RMSE are reported raw and, when ``logistic`` is set, also after a monotone
  logistic mapping of the predictions fitted with ``scipy.optimize.curve_fit`` on the evaluated
  split itself (``plcc_logistic``, ``rmse_logistic``), the VQEG-style convention.
* 4-parameter logistic: ``ŷ = (β1 − β2) / (1 + exp(−(x − β3)/|β4|)) + β2``,
  init ``[max y, min y, mean x, std(x)/4]`` (``0.5`` when x is constant).
* 5-parameter logistic: ``ŷ = β1(½ − 1/(1 + exp(β2(x − β3)))) + β4·x + β5``,
  init ``[10, 0, mean x, 0.1, 0.1]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "fit_logistic",
    "ibm_rescale",
    "krcc",
    "logistic_4",
    "logistic_5",
    "plcc",
    "quality_metrics",
    "rmse",
    "srcc",
]


def _pair(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both to float64 1-D arrays; reject length mismatches, NaN and too few points."""
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"pred and target must have the same length, found {x.size} and {y.size}")
    n_nan_x, n_nan_y = int(np.isnan(x).sum()), int(np.isnan(y).sum())
    if n_nan_x or n_nan_y:
        raise ValueError(
            f"NaN in quality-metric inputs: {n_nan_x} of {x.size} predictions and {n_nan_y} of {y.size} "
            f"targets are NaN; drop or impute them before scoring"
        )
    if x.size < 2:
        raise ValueError(f"quality metrics need at least 2 samples, found {x.size}")
    return x, y


def srcc(pred: object, target: object) -> float:
    """Spearman rank-order correlation (``scipy.stats.spearmanr``)."""
    x, y = _pair(pred, target)
    return float(stats.spearmanr(x, y).statistic)


def krcc(pred: object, target: object) -> float:
    """Kendall rank-order correlation, tau-b (``scipy.stats.kendalltau``)."""
    x, y = _pair(pred, target)
    return float(stats.kendalltau(x, y).statistic)


def plcc(pred: object, target: object) -> float:
    """Pearson linear correlation (``scipy.stats.pearsonr``) on the values as given."""
    x, y = _pair(pred, target)
    return float(stats.pearsonr(x, y).statistic)


def rmse(pred: object, target: object) -> float:
    """Root mean squared error."""
    x, y = _pair(pred, target)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """4-parameter logistic ``(β1 − β2)/(1 + exp(−(x − β3)/|β4|)) + β2``."""
    # expit is the overflow-free 1/(1 + exp(−z)); |β4| keeps the curve monotone increasing.
    return (b1 - b2) * special.expit((np.asarray(x) - b3) / (np.abs(b4) + 1e-12)) + b2


def logistic_5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """5-parameter logistic ``β1(½ − 1/(1 + exp(β2(x − β3)))) + β4·x + β5``."""
    x = np.asarray(x)
    # 1/(1 + exp(z)) = expit(−z), written with expit to avoid overflow warnings.
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 * x + b5


def fit_logistic(
    pred: object, target: object, kind: str = "4", maxfev: int = 20000
) -> Callable[[np.ndarray], np.ndarray]:
    """Fit a 4- or 5-parameter logistic mapping predictions to targets; return the mapping.

    ``kind`` is ``"4"`` or ``"5"`` (also accepted: 4, 5, ``"logistic_4"``, ``"logistic_5"``).
    If the predictions are constant, ``curve_fit`` fails to converge within ``maxfev`` function
    evaluations, or it returns non-finite parameters, a :class:`RuntimeWarning` is issued and a
    least-squares *linear* map is returned instead, so PLCC after the fallback equals the raw
    PLCC rather than the evaluation crashing.
    The returned callable has attributes ``kind`` (``"4"``, ``"5"`` or ``"linear"``) and ``params``.
    """
    x, y = _pair(pred, target)
    key = str(kind).removeprefix("logistic_").removeprefix("logistic")
    if key == "4":
        func: Callable[..., np.ndarray] = logistic_4
        sx = float(np.std(x))
        p0 = [float(y.max()), float(y.min()), float(x.mean()), sx / 4 if sx > 0 else 0.5]
    elif key == "5":
        func = logistic_5
        p0 = [10.0, 0.0, float(x.mean()), 0.1, 0.1]
    else:
        raise ValueError(f"fit_logistic: kind must be '4' or '5', found {kind!r}")

    params: np.ndarray | None = None
    reason = "constant predictions"
    if np.ptp(x) > 0:
        params, reason = _curve_fit(func, x, y, p0, maxfev)
    if params is not None and np.all(np.isfinite(params)) and np.all(np.isfinite(func(x, *params))):
        fitted = lambda v: func(np.asarray(v, dtype=np.float64), *params)
        fitted.kind, fitted.params = key, np.asarray(params)  # type: ignore[attr-defined]
        return fitted

    warnings.warn(
        f"{key}-parameter logistic fit did not converge ({reason}); falling back to a linear fit",
        RuntimeWarning,
        stacklevel=2,
    )
    slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
    linear = lambda v: slope * np.asarray(v, dtype=np.float64) + intercept
    linear.kind, linear.params = "linear", np.array([slope, intercept])  # type: ignore[attr-defined]
    return linear


def _curve_fit(
    func: Callable[..., np.ndarray], x: np.ndarray, y: np.ndarray, p0: list[float], maxfev: int
) -> tuple[np.ndarray | None, str]:
    """``curve_fit`` returning (params or None, reason for failure)."""
    with warnings.catch_warnings():
        # OptimizeWarning only says the covariance could not be estimated; we do not use it.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        try:
            params, _ = optimize.curve_fit(func, x, y, p0=p0, maxfev=maxfev)
        except (RuntimeError, ValueError) as exc:
            return None, str(exc)
    return params, "non-finite parameters or predictions"


def quality_metrics(pred: object, target: object, logistic: str | None = None) -> dict[str, float]:
    """``plcc``, ``srcc``, ``krcc``, ``rmse`` on raw predictions; with ``logistic`` = ``"4"`` or ``"5"``
    also ``plcc_logistic`` and ``rmse_logistic`` after :func:`fit_logistic` on these same data."""
    x, y = _pair(pred, target)
    out = {"plcc": plcc(x, y), "srcc": srcc(x, y), "krcc": krcc(x, y), "rmse": rmse(x, y)}
    if logistic is not None:
        mapped = fit_logistic(x, y, kind=logistic)(x)
        out["plcc_logistic"] = plcc(mapped, y)
        out["rmse_logistic"] = rmse(mapped, y)
    return out


def ibm_rescale(
    x: float | np.ndarray,
    src: tuple[float, float] = (0.0, 100.0),
    dst: tuple[float, float] = (1.0, 5.0),
) -> float | np.ndarray:
    """IBM Likert-scale transformation ``Y = (B − A)(x − a)/(b − a) + A`` from [a, b] to [A, B].

    Use the scales' *nominal* ends (e.g. LIVE-SJTU 0–100 → 1–5 gives ``Y = 0.04x + 1``, 50 → 3),
    not observed minima/maxima. Scalars in, scalar out; arrays in, array out.
    """
    a, b = map(float, src)
    lo, hi = map(float, dst)
    if a == b:
        raise ValueError(f"ibm_rescale: source scale {src} has zero width")
    y = (hi - lo) * (np.asarray(x, dtype=np.float64) - a) / (b - a) + lo
    return float(y) if np.ndim(y) == 0 else y

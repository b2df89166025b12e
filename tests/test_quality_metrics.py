"""Quality metrics: parity with scipy.stats, logistic fits, IBM rescaling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from avlab.metrics.quality import (
    fit_logistic,
    ibm_rescale,
    krcc,
    logistic_4,
    logistic_5,
    plcc,
    quality_metrics,
    rmse,
    srcc,
)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 120)
    x[::10] = x[1::10]  # ties, so the Kendall variant (tau-b) matters
    y = 1 + 4 / (1 + np.exp(-(x - 0.5) * 8)) + rng.normal(0, 0.15, 120)
    return x, y


def test_parity_with_scipy(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-10)
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-10)
    assert krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-10)
    assert rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), abs=1e-10)
    m = quality_metrics(list(x), list(y))
    assert set(m) == {"plcc", "srcc", "krcc", "rmse"}
    assert m["plcc"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-10)


@pytest.mark.parametrize("kind", ["4", "5"])
def test_logistic_fit_improves_plcc_on_monotone_nonlinear(
    kind: str, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fit must converge without the fallback warning
        m = quality_metrics(x, y, logistic=kind)
    assert m["plcc_logistic"] >= m["plcc"]
    assert m["plcc_logistic"] > 0.98
    assert m["rmse_logistic"] < m["rmse"]
    # rank measures are unaffected by the monotone map
    f = fit_logistic(x, y, kind=kind)
    assert srcc(f(x), y) == pytest.approx(m["srcc"], abs=1e-12)


def test_logistic_formulas() -> None:
    x = np.array([0.0, 1.0, 2.0])
    # 4-param: midpoint at β3 is (β1 + β2)/2; |β4| makes the sign of β4 irrelevant
    expected4 = [1 + 4 / (1 + np.exp(2)), 3.0, 1 + 4 / (1 + np.exp(-2))]
    np.testing.assert_allclose(logistic_4(x, 5, 1, 1, 0.5), expected4)
    np.testing.assert_allclose(logistic_4(x, 5, 1, 1, -0.5), logistic_4(x, 5, 1, 1, 0.5))
    expected5 = 2 * (0.5 - 1 / (1 + np.exp(3 * (x - 1)))) + 0.5 * x + 1
    np.testing.assert_allclose(logistic_5(x, 2, 3, 1, 0.5, 1), expected5)


def test_logistic_fallback_warns(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    with pytest.warns(RuntimeWarning, match="did not converge.*falling back"):
        f = fit_logistic(x, y, kind="4", maxfev=2)  # too few evaluations to converge
    assert f.kind == "linear"
    assert plcc(f(x), y) == pytest.approx(plcc(x, y), abs=1e-12)  # linear map keeps raw PLCC
    const = np.ones(4)  # constant predictions: no curve to fit
    with pytest.warns(RuntimeWarning, match="constant predictions"):
        g = fit_logistic(const, [1.0, 2.0, 3.0, 4.0], kind="5")
    np.testing.assert_allclose(g(const), 2.5)
    with pytest.raises(ValueError, match="'4' or '5'"):
        fit_logistic([0, 1], [0, 1], kind="3")


def test_nan_raises_with_count() -> None:
    x = np.array([1.0, np.nan, 3.0, np.nan])
    y = np.array([1.0, 2.0, np.nan, 4.0])
    with pytest.raises(ValueError, match="2 of 4 predictions and 1 of 4 targets are NaN"):
        quality_metrics(x, y)
    with pytest.raises(ValueError, match="same length"):
        plcc([1, 2, 3], [1, 2])


def test_ibm_rescale_examples() -> None:
    assert ibm_rescale(50, (0, 100), (1, 5)) == pytest.approx(3.0)
    assert ibm_rescale(50) == pytest.approx(3.0)  # defaults: 0–100 → 1–5
    np.testing.assert_allclose(ibm_rescale(np.array([0.0, 25.0, 100.0])), [1.0, 2.0, 5.0])  # 0.04x + 1
    # IBM page example: 1–5 → 1–7 is 6(x − 1)/4 + 1
    np.testing.assert_allclose(ibm_rescale(np.arange(1, 6), (1, 5), (1, 7)), [1.0, 2.5, 4.0, 5.5, 7.0])
    with pytest.raises(ValueError, match="zero width"):
        ibm_rescale(1.0, (3, 3), (1, 5))

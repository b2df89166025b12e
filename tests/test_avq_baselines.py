"""Weighted-product (eq. 9) and SVR baselines of the avq task."""

from __future__ import annotations

import numpy as np
import pytest

from avlab.baselines.avq import FEATURE_SETS, SVRBaseline, WeightedProduct
from avlab.errors import FeatureError


def _features(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "q_audio": rng.uniform(1, 5, n),
        "q_video": rng.uniform(1, 5, n),
        "vmaf": rng.uniform(0, 1, (n, 6)),
        "audio_bitrate_kbps": rng.choice([16.0, 32.0, 64.0, 96.0, 256.0], n),
    }


def test_fixed_product_equals_formula() -> None:
    f = _features()
    model = WeightedProduct()  # Q-Random: 0.3 / 0.7
    assert model.name == "Q-Random"
    pred = model.fit(f, np.zeros(60)).predict(f)  # fit must not move fixed weights
    np.testing.assert_allclose(pred, f["q_audio"] ** 0.3 * f["q_video"] ** 0.7, rtol=1e-12)
    assert (model.w_audio, model.w_video) == (0.3, 0.7)


def test_fitted_weights_recover_truth() -> None:
    f = _features(200, seed=1)
    mos = f["q_audio"] ** 0.23 * f["q_video"] ** 0.76
    model = WeightedProduct(fit_weights=True, name="Q-External").fit(f, mos)
    assert model.name == "Q-External"
    assert model.w_audio == pytest.approx(0.23, abs=1e-3)
    assert model.w_video == pytest.approx(0.76, abs=1e-3)


def test_product_rejects_nonpositive_quality() -> None:
    f = _features(5)
    f["q_video"][2] = 0.0
    with pytest.raises(FeatureError, match="positive"):
        WeightedProduct().predict(f)


@pytest.mark.parametrize(
    "name,columns",
    [
        ("2F", lambda f: np.c_[f["q_audio"], f["q_video"]]),
        ("3F", lambda f: np.c_[f["q_audio"], f["q_video"], f["audio_bitrate_kbps"]]),
        ("7F", lambda f: np.c_[f["q_audio"], f["vmaf"]]),
        ("8F", lambda f: np.c_[f["q_audio"], f["vmaf"], f["audio_bitrate_kbps"]]),
    ],
)
def test_svr_feature_set_columns(name: str, columns) -> None:
    f = _features()
    model = SVRBaseline(features=name.lower())
    assert model.name == f"SVR-{name}"
    np.testing.assert_array_equal(model.design_matrix(f), columns(f))


def test_svr_unknown_set_and_missing_feature() -> None:
    with pytest.raises(ValueError, match=r"valid sets are 2F, 3F, 7F, 8F.*Did you mean `8F`"):
        SVRBaseline(features="9F")
    f = _features()
    del f["vmaf"]
    with pytest.raises(FeatureError, match="'vmaf' is missing"):
        SVRBaseline("7F").fit(f, np.ones(60))
    f = _features()
    f["vmaf"] = f["vmaf"][:, :5]
    with pytest.raises(FeatureError, match=r"expected shape \[n, 6\], found \[60, 5\]"):
        SVRBaseline("8F").design_matrix(f)


def test_svr_scaler_fitted_on_training_only() -> None:
    train, test = _features(80, seed=2), _features(40, seed=3)
    test["audio_bitrate_kbps"] = test["audio_bitrate_kbps"] * 4  # outside the training range
    mos = 1 + 0.5 * train["q_audio"] + 2 * train["vmaf"][:, 0]
    model = SVRBaseline("8F").fit(train, mos)
    scaler = model.pipeline.named_steps["scale"]
    X_train = model.design_matrix(train)
    np.testing.assert_allclose(scaler.data_min_, X_train.min(axis=0))
    np.testing.assert_allclose(scaler.data_max_, X_train.max(axis=0))
    before = (scaler.data_min_.copy(), scaler.data_max_.copy())
    pred = model.predict(test)
    assert pred.shape == (40,)
    np.testing.assert_array_equal(scaler.data_min_, before[0])  # predict does not refit
    np.testing.assert_array_equal(scaler.data_max_, before[1])
    # test features are scaled with the training range, so they may leave [0, 1]
    assert scaler.transform(model.design_matrix(test)).max() > 1


def test_svr_learns_a_smooth_relation() -> None:
    f = _features(150, seed=4)
    mos = 1 + 0.5 * f["q_audio"] + 0.5 * f["q_video"]
    model = SVRBaseline("2F", C=10.0, epsilon=0.01).fit(f, mos)
    held = _features(50, seed=5)
    err = model.predict(held) - (1 + 0.5 * held["q_audio"] + 0.5 * held["q_video"])
    assert np.sqrt(np.mean(err**2)) < 0.15
    with pytest.raises(RuntimeError, match="fit"):
        SVRBaseline("2F").predict(f)


def test_feature_sets_match_table1() -> None:
    widths = {k: sum(6 if c == "vmaf" else 1 for c in cols) for k, cols in FEATURE_SETS.items()}
    assert widths == {"2F": 2, "3F": 3, "7F": 7, "8F": 8}

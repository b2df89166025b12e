"""Non-deep baselines of the ``avq`` task (Attentive AV-FusionNet §5.1, Table 1).

Common interface (:class:`avlab.baselines.base.ClosedFormEstimator`)::

    model.fit(features, mos) -> model
    model.predict(features) -> np.ndarray [n]
    model.evaluate(stage, samples, table, outputs, info) -> metrics   # the deep models' evaluation
    model.name

``features`` is a dict of numpy arrays over n stimuli:

* ``q_audio`` [n]: unimodal audio quality (GML in the paper), 1–5
* ``q_video`` [n]: unimodal video quality (VMAF mapped to 1–5), 1–5
* ``vmaf`` [n, 6]: the six VMAF features (vif_scale0..3, motion2, adm2)
* ``audio_bitrate_kbps`` [n]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import optimize
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVR

from avlab.baselines.base import ClosedFormEstimator
from avlab.errors import FeatureError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

    from avlab.datamodules.base import DatasetInfo
    from avlab.lightningmodules.base import EvalOutputs

__all__ = ["FEATURE_SETS", "AVQEstimator", "SVRBaseline", "WeightedProduct"]

#: Table 1's SVR feature sets: name → ordered feature keys ("vmaf" expands to 6 columns).
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "2F": ("q_audio", "q_video"),
    "3F": ("q_audio", "q_video", "audio_bitrate_kbps"),
    "7F": ("q_audio", "vmaf"),
    "8F": ("q_audio", "vmaf", "audio_bitrate_kbps"),
}
_WIDTH = {"q_audio": 1, "q_video": 1, "audio_bitrate_kbps": 1, "vmaf": 6}


def _column(features: dict[str, Any], key: str, n: int | None = None) -> np.ndarray:
    """One feature as a float64 [n, width] array, with a clear error when missing or misshaped."""
    if key not in features:
        raise FeatureError(
            f"feature {key!r} is missing; found keys {sorted(features)}." + did_you_mean(key, features)
        )
    arr = np.asarray(features[key], dtype=np.float64)
    width = _WIDTH[key]
    if arr.ndim == 1 and width == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != width:
        expected = "[n]" if width == 1 else f"[n, {width}]"
        raise FeatureError(f"feature {key!r}: expected shape {expected}, found {list(arr.shape)}")
    if n is not None and arr.shape[0] != n:
        raise FeatureError(f"feature {key!r}: expected {n} rows (one per stimulus), found {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise FeatureError(f"feature {key!r}: {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _targets(mos: Any, n: int) -> np.ndarray:
    y = np.asarray(mos, dtype=np.float64).reshape(-1)
    if y.size != n:
        raise ValueError(f"mos has {y.size} values, expected one per stimulus ({n})")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"mos has {int((~np.isfinite(y)).sum())} non-finite values")
    return y


class AVQEstimator(ClosedFormEstimator):
    """An avq baseline, evaluated exactly like the deep models
    (:func:`avlab.lightningmodules.avq.evaluate_quality`)."""

    name: str = ""

    def evaluate(
        self,
        stage: str,
        samples: dict[str, np.ndarray],
        table: pd.DataFrame | None,
        outputs: EvalOutputs,
        info: DatasetInfo,
    ) -> dict[str, float]:
        from avlab.lightningmodules.avq import evaluate_quality

        return evaluate_quality(stage, samples, table, outputs, info, name=self.name)


class WeightedProduct(AVQEstimator):
    """eq. (9): ``Q_av = Q_a^{w_a} · Q_v^{w_v}``.

    With ``fit_weights=False`` (Q-Random, the paper's best guess w_a = 0.3, w_v = 0.7) ``fit`` does
    nothing. With ``fit_weights=True`` (Q-Internal / Q-External) the weights minimise the mean
    squared error between ``Q_av`` and MOS (``scipy.optimize.least_squares``, started from the
    given weights), as in the paper ("minimizing mean squared error").
    Q values must be positive (a real power of a non-positive number is undefined).
    """

    def __init__(
        self, w_audio: float = 0.3, w_video: float = 0.7, fit_weights: bool = False, name: str | None = None
    ) -> None:
        self.w_audio, self.w_video = float(w_audio), float(w_video)
        self.fit_weights = fit_weights
        self._name = name

    @property
    def name(self) -> str:
        """``name`` if given (e.g. "Q-Internal", "Q-External"), else "Q-Fitted" / "Q-Random"."""
        if self._name:
            return self._name
        return "Q-Fitted" if self.fit_weights else "Q-Random"

    @staticmethod
    def _q(features: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        qa = _column(features, "q_audio")[:, 0]
        qv = _column(features, "q_video", qa.size)[:, 0]
        for key, q in (("q_audio", qa), ("q_video", qv)):
            if np.any(q <= 0):
                raise FeatureError(
                    f"feature {key!r}: eq. (9) needs positive qualities, found {int((q <= 0).sum())} ≤ 0"
                )
        return qa, qv

    def fit(self, features: dict[str, Any], mos: Any) -> WeightedProduct:
        """Fit w_a, w_v by least squares when ``fit_weights``; otherwise keep the fixed weights."""
        qa, qv = self._q(features)
        y = _targets(mos, qa.size)
        if self.fit_weights:
            la, lv = np.log(qa), np.log(qv)

            def residual(w: np.ndarray) -> np.ndarray:
                return np.exp(w[0] * la + w[1] * lv) - y  # eq. (9) minus MOS

            sol = optimize.least_squares(residual, x0=[self.w_audio, self.w_video], xtol=1e-12, ftol=1e-12)
            self.w_audio, self.w_video = map(float, sol.x)
        return self

    def predict(self, features: dict[str, Any]) -> np.ndarray:
        qa, qv = self._q(features)
        return qa**self.w_audio * qv**self.w_video  # eq. (9)

    def __repr__(self) -> str:
        return (
            f"WeightedProduct(w_audio={self.w_audio:.4g}, w_video={self.w_video:.4g}, "
            f"fit_weights={self.fit_weights})"
        )


class SVRBaseline(AVQEstimator):
    """RBF support-vector regression on Table 1's feature sets (SVR-2F/3F/7F/8F).

    A :class:`sklearn.pipeline.Pipeline` of ``MinMaxScaler`` (features to [0, 1], as in the
    paper's §5; fitted on the training features only, so test features may fall outside [0, 1])
    and ``SVR(kernel="rbf")``.

    Args:
        features: ``"2F"`` (Q_a, Q_v), ``"3F"`` (Q_a, Q_v, audio bitrate), ``"7F"`` (Q_a, 6 VMAF),
            ``"8F"`` (Q_a, 6 VMAF, audio bitrate).
        C, gamma, epsilon: ``sklearn.svm.SVR`` hyper-parameters (the paper does not report its
            values; sklearn's defaults here).
    """

    def __init__(
        self, features: str = "8F", C: float = 1.0, gamma: str | float = "scale", epsilon: float = 0.1
    ) -> None:
        key = str(features).upper()
        if key not in FEATURE_SETS:
            raise ValueError(
                f"unknown SVR feature set {features!r}; valid sets are {', '.join(FEATURE_SETS)}."
                + did_you_mean(key, FEATURE_SETS)
            )
        self.features = key
        self.C, self.gamma, self.epsilon = C, gamma, epsilon
        self.pipeline = Pipeline(
            [
                ("scale", MinMaxScaler(feature_range=(0.0, 1.0))),
                ("svr", SVR(kernel="rbf", C=C, gamma=gamma, epsilon=epsilon)),
            ]
        )
        self._fitted = False

    @property
    def name(self) -> str:
        return f"SVR-{self.features}"

    def design_matrix(self, features: dict[str, Any]) -> np.ndarray:
        """The [n, k] matrix of this feature set's columns, in ``FEATURE_SETS`` order."""
        keys = FEATURE_SETS[self.features]
        first = _column(features, keys[0])
        cols = [first] + [_column(features, k, first.shape[0]) for k in keys[1:]]
        return np.hstack(cols)

    def fit(self, features: dict[str, Any], mos: Any) -> SVRBaseline:
        X = self.design_matrix(features)
        self.pipeline.fit(X, _targets(mos, X.shape[0]))
        self._fitted = True
        return self

    def predict(self, features: dict[str, Any]) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        return self.pipeline.predict(self.design_matrix(features))

    def __repr__(self) -> str:
        return (
            f"SVRBaseline(features={self.features!r}, C={self.C}, gamma={self.gamma!r}, "
            f"epsilon={self.epsilon})"
        )

"""What a closed-form estimator offers the runner (fitted on arrays, without a Trainer).

A config whose ``model`` target is not a LightningModule names a :class:`ClosedFormEstimator`.
The runner fits it on ``SupportsArrays.arrays("train")`` of the DataModule, predicts
``arrays("test")`` and hands the predictions to the estimator's :meth:`~ClosedFormEstimator.evaluate`,
which has the signature of the LightningModule's evaluation hook, so a task evaluates deep models
and baselines with one function and the runner knows nothing task-specific.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from avlab.datamodules.base import DatasetInfo
    from avlab.lightningmodules.base import EvalOutputs

__all__ = ["ClosedFormEstimator"]


class ClosedFormEstimator(ABC):
    """Fit on whole arrays, predict, evaluate like the task's LightningModule does."""

    @abstractmethod
    def fit(self, features: dict[str, Any], target: Any) -> ClosedFormEstimator:
        """Fit on ``features`` (``{name: array [n, ...]}``) and ``target`` ``[n]``; returns self."""

    @abstractmethod
    def predict(self, features: dict[str, Any]) -> np.ndarray:
        """Predictions ``[n]``."""

    @abstractmethod
    def evaluate(
        self,
        stage: str,
        samples: dict[str, np.ndarray],
        table: pd.DataFrame | None,
        outputs: EvalOutputs,
        info: DatasetInfo,
    ) -> dict[str, float]:
        """Metrics of ``samples`` (``index``, ``pred``, ``target``); files go through ``outputs``."""

    def describe(self) -> str:
        """A line for the run summary printed after the metrics; empty for none."""
        return ""

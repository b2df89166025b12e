"""avlab: audio-visual deep-learning experiments on PyTorch Lightning.

``from avlab import train, test, predict, load_experiment`` is the Python API (:mod:`avlab.api`).
The names load on first use, so ``import avlab`` (the CLI, sweep workers) stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "test", "predict", "load_experiment", "Prediction")

__all__ = ["Prediction", "__version__", "load_experiment", "predict", "test", "train"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from avlab import api

        return getattr(api, name)
    if name == "RunResult":
        from avlab.runner import RunResult

        return RunResult
    raise AttributeError(f"module 'avlab' has no attribute {name!r}")

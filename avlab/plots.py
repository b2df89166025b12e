"""Figures written to a run directory's ``plots/`` folder (PNG, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def scatter_prediction(
    pred: np.ndarray,
    target: np.ndarray,
    path: Path,
    *,
    title: str,
    xlabel: str = "subjective score",
    ylabel: str = "predicted score",
    groups: Sequence[str] | None = None,
) -> Path:
    """Predicted against subjective score, one colour per group (e.g. source), with the identity line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    if groups is None:
        ax.scatter(target, pred, s=14, alpha=0.8)
    else:
        groups = np.asarray(groups)
        for g in sorted(set(groups.tolist())):
            mask = groups == g
            ax.scatter(target[mask], pred[mask], s=14, alpha=0.8, label=str(g))
        if len(set(groups.tolist())) <= 12:
            ax.legend(fontsize=7, loc="upper left")
    lo = float(min(np.min(target), np.min(pred)))
    hi = float(max(np.max(target), np.max(pred)))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def grouped_bars(
    labels: Sequence[str], series: dict[str, Sequence[float]], path: Path, *, title: str, ylabel: str
) -> Path:
    """One group of bars per label (e.g. per source: audio vs video importance)."""
    plt = _pyplot()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(labels) + 2), 4), dpi=110)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

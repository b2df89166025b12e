"""Trainable parameters of every yt8m experiment next to the paper's (Attend-Fusion, Tables 1 and 3).

The expected counts live in the configs, not here: each ``experiments/yt8m/*.yaml`` states the
paper's count as ``paper.params_m`` and, where the paper pins the architecture down well enough
for a strict check, the accepted relative deviation as ``paper.params_tolerance`` (0.02). A new
model's config joins the table by existing; a config without ``paper.params_m`` is listed with
its count only.

Every config's ``model.net`` is built on the ``meta`` device (no memory is allocated, so the
8000 × 4716 layers cost nothing) under :data:`PAPER_SETUP`: mean-only inputs (1024 visual, 128
audio) and the 2017 vocabulary's 4716 classes, with the widths the configs set ("8K" = 8000,
"2K" = 2048). This is the one setup under which the FC models land on the paper's counts: FC
Visual − FC Audio = 7M ≈ (1024 − 128) · 8000 and FC Early − FC Visual = 1M ≈ 128 · 8000 fix the
inputs at 128/1024 (MF+STD inputs would double both differences), and with 8000-wide layers
only C = 4716 gives FC Audio's 103M. The paper itself states MF+STD inputs; training uses what
``data.features`` selects.

``python -m avlab.models.yt8m [key=value ...]`` prints the table; the overrides (OmegaConf
dot-list, e.g. ``model.net.hidden=8192``) apply to every config after :data:`PAPER_SETUP`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from avlab.config import list_experiments, load_experiment
from avlab.instantiate import instantiate
from avlab.models.blocks import count_trainable_parameters

__all__ = ["PAPER_SETUP", "main", "parameter_table", "yt8m_experiments"]

#: Overrides under which the paper's parameter counts are reproduced (see the module docstring).
PAPER_SETUP: tuple[str, ...] = (
    "data.num_classes=4716",
    "model.net.visual_dim=1024",
    "model.net.audio_dim=128",
)


def yt8m_experiments() -> list[str]:
    """Names (``yt8m/<name>``) of every yt8m experiment config."""
    return [name for name in list_experiments() if name.startswith("yt8m/")]


def parameter_table(
    experiments: Sequence[str] | None = None, overrides: Sequence[str] = PAPER_SETUP
) -> list[dict[str, Any]]:
    """One row per experiment (default: :func:`yt8m_experiments`; names or YAML paths).

    Row keys: ``name`` (config name without the ``yt8m/`` prefix), ``params`` (trainable
    parameters of ``model.net`` under ``overrides``), ``paper_m`` (``paper.params_m`` or ``None``),
    ``deviation`` (``params / (paper_m · 1e6) − 1`` or ``None``) and ``tolerance``
    (``paper.params_tolerance``; ``None``: the count is reported, not checked).
    """
    rows = []
    for experiment in experiments if experiments is not None else yt8m_experiments():
        cfg = load_experiment(experiment, list(overrides))
        with torch.device("meta"):
            net = instantiate(cfg.model.net)
        n = count_trainable_parameters(net)
        paper = cfg.paper.params_m
        rows.append(
            {
                "name": str(cfg.experiment).removeprefix("yt8m/"),
                "params": n,
                "paper_m": paper,
                "deviation": None if paper is None else n / (paper * 1e6) - 1,
                "tolerance": cfg.paper.params_tolerance,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Print the parameter table (``python -m avlab.models.yt8m [key=value ...]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m avlab.models.yt8m",
        description="Parameter counts of the yt8m experiments next to the paper's Tables 1 and 3.",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every experiment")
    args = parser.parse_args(argv)
    overrides = [*PAPER_SETUP, *args.overrides]
    rows = parameter_table(overrides=overrides)
    print("setup: " + " ".join(overrides))
    print(f"{'model':34s} {'params (M)':>11s} {'paper (M)':>10s} {'Δ':>8s}  check")
    for r in rows:
        if r["paper_m"] is None:
            print(f"{r['name']:34s} {r['params'] / 1e6:11.2f} {'-':>10s} {'-':>8s}  not in the paper")
            continue
        check = "reported" if r["tolerance"] is None else f"within ±{100 * r['tolerance']:g}%"
        deviation = f"{100 * r['deviation']:+7.1f}%"
        print(f"{r['name']:34s} {r['params'] / 1e6:11.2f} {r['paper_m']:10.0f} {deviation}  {check}")

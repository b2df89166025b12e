"""Modality importance of an AVQ model (Attentive AV-FusionNet §3, eq. (6)–(8)).

Works with any model following the ``avq`` interface: ``model(video, audio) -> Tensor[B]`` and
``model.intermediates(video, audio)`` returning ``phi_pre_{audio,video}`` and
``phi_post_{audio,video}`` (see :mod:`avlab.models.avq`).

All functions evaluate the model in ``eval()`` mode (dropout off, so the scores are
deterministic) under ``torch.no_grad()``, and restore the model's previous mode afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import torch
from torch import Tensor, nn

__all__ = [
    "MODALITIES",
    "ablation_sensitivity",
    "combined_importance",
    "feature_change_norm",
    "min_max",
    "modality_importance",
]

MODALITIES = ("audio", "video")

# Denominator floor for the relative norms: a prediction or embedding of exactly zero would
# otherwise give inf/NaN; with the floor the ratio is large but finite.
_EPS = 1e-12


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def ablation_sensitivity(model: nn.Module, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
    """eq. (6): ``I_m^abl = ‖f(x) − f(x∖m)‖₂ / ‖f(x)‖₂`` per stimulus, for m ∈ {audio, video}.

    ``f(x∖m)`` is the model output with modality m's *input features* set to zero (the paper:
    "the output with m zeroed"); for video this is before the eq. (1) projection, so the model
    sees σ(bias) rather than an all-zero embedding. The model outputs one scalar per stimulus,
    so per stimulus the 2-norm is the absolute value: ``|f(x) − f(x∖m)| / |f(x)|``.

    Returns ``{"audio": Tensor[B], "video": Tensor[B]}``.
    """
    with _evaluating(model):
        full = model(video, audio).reshape(video.shape[0], -1)
        masked = {
            "audio": model(video, torch.zeros_like(audio)).reshape(video.shape[0], -1),
            "video": model(torch.zeros_like(video), audio).reshape(video.shape[0], -1),
        }
    denom = full.norm(dim=1).clamp_min(_EPS)
    return {m: (full - masked[m]).norm(dim=1) / denom for m in MODALITIES}  # eq. (6)


def feature_change_norm(model: nn.Module, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
    """eq. (7): ``I_m^norm = ‖φ_m^pre − φ_m^post‖₂ / ‖φ_m^pre‖₂`` per stimulus.

    φ^pre / φ^post are the embeddings before and after cross-attention from
    ``model.intermediates``; the 2-norm runs over all N×D entries of one stimulus. Models without
    cross-attention (``SimpleAVFusion``) have φ^post = φ^pre and get 0.

    Returns ``{"audio": Tensor[B], "video": Tensor[B]}``.
    """
    with _evaluating(model):
        inter = model.intermediates(video, audio)
    out = {}
    for m in MODALITIES:
        pre = inter[f"phi_pre_{m}"].reshape(video.shape[0], -1)
        post = inter[f"phi_post_{m}"].reshape(video.shape[0], -1)
        out[m] = (pre - post).norm(dim=1) / pre.norm(dim=1).clamp_min(_EPS)  # eq. (7)
    return out


def min_max(x: Tensor) -> Tensor:
    """Min–max normalisation to [0, 1] over all entries of ``x``.

    Constant input (max = min, including a single value) has no spread to normalise; it maps to
    all zeros instead of dividing by zero.
    """
    lo, hi = x.min(), x.max()
    span = hi - lo
    if not torch.isfinite(span) or span <= 0:
        return torch.zeros_like(x)
    return (x - lo) / span


def combined_importance(
    abl: dict[str, Tensor],
    norm: dict[str, Tensor],
    alpha: float = 0.7,
    beta: float = 0.3,
    scope: str = "joint",
) -> dict[str, Tensor]:
    """eq. (8): ``I_m^final = α·norm(I_m^abl) + β·[1 − norm(I_m^norm)]``, α > β.

    ``norm(·)`` is min–max normalisation over the stimuli evaluated (the B entries passed in):

    * ``scope="joint"`` (default): one min and max over all stimuli *and both modalities* per
      measure, so audio and video importances stay comparable (needed to call a clip
      audio- or video-dominant, as in the paper's Fig. 2).
    * ``scope="per_modality"``: each modality normalised over the stimuli on its own.

    Constant input normalises to 0 (see :func:`min_max`). The result depends on which stimuli
    are evaluated together.

    Raises:
        ValueError: if ``alpha <= beta`` (the paper requires α > β: ablation sensitivity weighs
            more), or on unknown scope / mismatched modality keys.
    """
    if not alpha > beta:
        raise ValueError(
            f"combined_importance: eq. (8) requires alpha > beta, found alpha={alpha}, beta={beta}"
        )
    for name, d in (("abl", abl), ("norm", norm)):
        if set(d) != set(MODALITIES):
            raise ValueError(
                f"combined_importance: {name} must have keys {list(MODALITIES)}, found {sorted(d)}"
            )
    if scope == "joint":
        b = abl["audio"].numel()
        abl_n = min_max(torch.cat([abl["audio"].reshape(-1), abl["video"].reshape(-1)]))
        nrm_n = min_max(torch.cat([norm["audio"].reshape(-1), norm["video"].reshape(-1)]))
        abl_mm = {"audio": abl_n[:b], "video": abl_n[b:]}
        nrm_mm = {"audio": nrm_n[:b], "video": nrm_n[b:]}
    elif scope == "per_modality":
        abl_mm = {m: min_max(abl[m].reshape(-1)) for m in MODALITIES}
        nrm_mm = {m: min_max(norm[m].reshape(-1)) for m in MODALITIES}
    else:
        raise ValueError(f"combined_importance: scope must be 'joint' or 'per_modality', found {scope!r}")
    return {m: alpha * abl_mm[m] + beta * (1 - nrm_mm[m]) for m in MODALITIES}  # eq. (8)


def modality_importance(
    model: nn.Module,
    video: Tensor,
    audio: Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    scope: str = "joint",
) -> pd.DataFrame:
    """Per-stimulus eq. (6)–(8) as a table.

    Columns ``abl_audio, abl_video, norm_audio, norm_video, importance_audio, importance_video``;
    one row per stimulus in input order (index 0..B−1).
    """
    abl = ablation_sensitivity(model, video, audio)
    nrm = feature_change_norm(model, video, audio)
    imp = combined_importance(abl, nrm, alpha=alpha, beta=beta, scope=scope)
    cols = {}
    for prefix, d in (("abl", abl), ("norm", nrm), ("importance", imp)):
        for m in MODALITIES:
            cols[f"{prefix}_{m}"] = d[m].detach().cpu().double().numpy()
    return pd.DataFrame(cols)

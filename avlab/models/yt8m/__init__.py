"""The Attend-Fusion paper's YouTube-8M models (Awan et al., arXiv 2408.14441): 15 + 3 ablations.

One module per architecture family; each config under ``experiments/yt8m/`` names its class by
import path (``avlab.models.yt8m.attend_fusion.AttendFusion``), so there is no registry: a new
model is one file and one config.

=============================== ==============================================================
:mod:`.base`                    :class:`~.base.YT8MModel` (the input contract), FC stacks, the
                                classifier, the attention layer shared by the proposed models
:mod:`.fc`                      FC Audio / Visual / Early Fusion / Late Fusion (Fig. 2a–d)
:mod:`.fc_residual`             FC Residual (Gated) Early / Late Fusion (Fig. 2e–h, eqs. 1–3)
:mod:`.attention_fusion`        FC Attention, Residual Attention Early / Late (Fig. 3a–c)
:mod:`.attend_fusion`           Attend-Fusion and its three ablations (Fig. 3d, Table 3)
:mod:`.cross_modal`             Audio-Visual Attention, Self and Cross Modal Attention,
                                Self-Attended Cross-Modal FCRN (Fig. 3e–g, eqs. 6–9)
:mod:`.params`                  parameter counts of every yt8m config next to the paper's
                                (``python -m avlab.models.yt8m``)
=============================== ==============================================================

Attention over video-level features: each modality is **one token** (the paper's inputs are
video-level vectors), so inside a single modality's self-attention, and in cross-modal attention
with one key, the softmax of eqs. 5/7/9 is over a single key and equals 1: the layer reduces to
its value/output projections, residual paths and feed-forward layers. Only the models that put
several tokens in one sequence (Residual Attention Early; the token averaging in AV Attention
is a pooling, not attention) have non-trivial attention weights. This follows the paper's
description and parameter counts; it is stated here so nobody reads more into "attention".
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

#: Where each of the paper's models lived before the package was split by family: configs and
#: checkpoints written earlier name ``avlab.models.yt8m.<Class>`` and keep loading. Frozen: new
#: models are named by their own module path and never added here.
_MOVED = {
    "FCAudio": "fc",
    "FCVisual": "fc",
    "FCEarlyFusion": "fc",
    "FCLateFusion": "fc",
    "FCResidualEarlyFusion": "fc_residual",
    "FCResidualLateFusion": "fc_residual",
    "FCResidualGatedEarlyFusion": "fc_residual",
    "FCResidualGatedLateFusion": "fc_residual",
    "FCAttention": "attention_fusion",
    "ResidualAttentionEarlyFusion": "attention_fusion",
    "ResidualAttentionLateFusion": "attention_fusion",
    "AttendFusion": "attend_fusion",
    "AudioVisualAttention": "cross_modal",
    "SelfCrossModalAttention": "cross_modal",
    "SelfAttendedCrossModalFCRN": "cross_modal",
    "YT8MModel": "base",
    "AttentionBlock": "base",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    # The family modules (found on disk, so a new file shows up in "did you mean" hints).
    return sorted({info.name for info in pkgutil.iter_modules(__path__)} | set(_MOVED))

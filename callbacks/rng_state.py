"""Checkpoint the random number generators so a resumed run continues the same random sequence.

Lightning restores weights, optimiser and loop counters, but not the RNGs that drive data
shuffling and dropout. Without them a run resumed from ``last.ckpt`` diverges from the run that
was never interrupted. States are stored as tensors and plain lists, so checkpoints still load
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer


class RNGStateCheckpoint(Callback):
    """Saves and restores the Python, NumPy, torch CPU and CUDA generator states."""

    key = "avlab_rng_state"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        py_version, py_state, py_gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        checkpoint[self.key] = {
            "python": [py_version, list(py_state), py_gauss],
            "numpy": [
                np_name,
                torch.as_tensor(np_keys.astype(np.int64)),
                int(np_pos),
                int(np_has_gauss),
                float(np_gauss),
            ],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(self.key)
        if not state:
            return
        version, py_state, gauss = state["python"]
        random.setstate((version, tuple(py_state), gauss))
        name, keys, pos, has_gauss, np_gauss = state["numpy"]
        np.random.set_state(
            (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, np_gauss)
        )
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

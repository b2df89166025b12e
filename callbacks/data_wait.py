"""How much of each training step is spent waiting for the next batch.

A step is the time from the end of the previous step (``on_train_batch_end``, or the start of
the epoch for the first step) to the end of this one. Its data wait is the part before
``on_train_batch_start``: fetching and collating the batch, or waiting for the loader's workers.
Lightning's own bookkeeping between two steps (logging, progress bar) falls into the wait too,
so the figure is an upper bound; it is small next to a real model's step.

``train/data_wait_fraction`` is an epoch's total wait over its total step time (the mean of the
per-step fractions, each weighted by its step's length), logged once per epoch and averaged over
DDP ranks. A fraction near 0 means the model never waits; near 1, the loader is the bottleneck.
Switched on with ``callbacks.data_wait=true``; the runner then adds the mean over epochs to
``metrics.json`` and prints it.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

METRIC = "train/data_wait_fraction"


class DataWait(Callback):
    """Records, per training step, the seconds spent waiting for data and the step's total."""

    def __init__(self) -> None:
        #: Per epoch: (wait seconds, step seconds) for every step, in order.
        self.steps: list[tuple[float, float]] = []
        #: ``train/data_wait_fraction`` of every finished epoch (mean over DDP ranks).
        self.epoch_fractions: list[float] = []
        self._last_end: float | None = None
        self._wait = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.steps = []
        self._last_end = time.perf_counter()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._wait = now - self._last_end if self._last_end is not None else 0.0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self.steps.append((self._wait, now - self._last_end))
        self._last_end = now

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A validation pass inside the epoch (val_check_interval < 1) is not time spent on data.
        if not trainer.sanity_checking:
            self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = sum(step for _, step in self.steps)
        if total <= 0:
            return
        local = torch.tensor(
            sum(wait for wait, _ in self.steps) / total, dtype=torch.float32, device=pl_module.device
        )
        # The mean over ranks, here rather than through log(sync_dist=True), so that
        # epoch_fractions (which the runner reports) holds the same figure as the loggers.
        fraction = float(trainer.strategy.reduce(local, reduce_op="mean"))
        self.epoch_fractions.append(fraction)
        pl_module.log(METRIC, fraction, on_step=False, on_epoch=True)

    def mean_fraction(self) -> float | None:
        """Mean of the epochs' fractions; ``None`` before any training step."""
        if not self.epoch_fractions:
            return None
        return sum(self.epoch_fractions) / len(self.epoch_fractions)

    def summary_line(self) -> str | None:
        fraction = self.mean_fraction()
        if fraction is None:
            return None
        return (
            f"data wait: {100 * fraction:.1f}% of training step time spent waiting for batches "
            f"(mean over {len(self.epoch_fractions)} epoch(s))"
        )

"""Adaptive weighted task sampling (UNQA paper §IV-A, Fig. 7), DDP-safe and resumable.

Each optimisation step trains on a mini-batch of **one** database. Database d is drawn with
probability ``p_d = steps_d / Σ steps`` where ``steps_d = ⌈N_train,d / (B · world)⌉`` is the number
of steps one epoch of that database alone takes; audio databases' steps are multiplied by
``audio_repeat`` (Fig. 7: 2 → 8 with a factor 4) so the audio extractor learns in step with the
visual ones. An epoch has ``Σ steps`` steps.

Why not ``WeightedRandomSampler``: under DDP Lightning replaces a custom sampler with a
``DistributedSampler`` (or fails to shard it), which would break the per-step database choice.
Here every rank owns an identical ``numpy.random.Generator`` (same seed, same state), so all ranks
draw the same database at every step (one gradient all-reduce per step stays consistent) and the
same per-database permutation; rank r then takes the items ``r, r + world, …`` of the step's
global batch of ``B · world`` items, so ranks see distinct samples. When a database's permutation
runs out it is reshuffled (a new permutation from the same generator), so small databases cycle.

The whole epoch plan is drawn at the start of the epoch, in the main process, by
:meth:`WeightedTaskSampling.on_train_epoch_start`; the generator state is in the callback's
``state_dict`` and so in every checkpoint: a run resumed from an epoch-end checkpoint draws exactly
the sequence the uninterrupted run draws.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from lightning import Callback, LightningModule, Trainer

from avlab.datamodules.base import SupportsTaskSampling
from avlab.errors import ConfigError

__all__ = ["TaskSampler", "WeightedTaskSampling"]


class TaskSampler:
    """Draws per-epoch plans ``[(database index, item indices of this rank)]``.

    Args:
        seed: seed of the shared generator (the same on every rank).
        audio_repeat: factor on the steps of audio databases (1 = plain weighted task sampling).
        mode: ``weighted`` (paper: i.i.d. draws with p_d ∝ steps_d), ``shuffle`` (a random order of
            exactly steps_d steps per database) or ``uniform`` (i.i.d., equal probabilities).
    """

    MODES = ("weighted", "shuffle", "uniform")

    def __init__(self, seed: int = 0, audio_repeat: int = 4, mode: str = "weighted") -> None:
        if mode not in self.MODES:
            raise ConfigError(f"task sampling mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if int(audio_repeat) < 1:
            raise ConfigError(f"audio_repeat must be >= 1, got {audio_repeat}")
        self.seed, self.audio_repeat, self.mode = int(seed), int(audio_repeat), mode
        self.rng = np.random.default_rng(self.seed)

    def steps_per_database(self, sizes: list[int], modalities: list[str], global_batch: int) -> list[int]:
        """``steps_d`` of Fig. 7, audio databases repeated ``audio_repeat`` times."""
        steps = [max(1, math.ceil(n / global_batch)) if n > 0 else 0 for n in sizes]
        return [s * (self.audio_repeat if m == "audio" else 1) for s, m in zip(steps, modalities)]

    def probabilities(self, steps: list[int]) -> np.ndarray:
        w = np.asarray(steps, dtype=float)
        if self.mode == "uniform":
            w = (w > 0).astype(float)
        return w / w.sum()

    def plan_epoch(
        self,
        train_indices: list[np.ndarray],
        modalities: list[str],
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
    ) -> list[tuple[int, np.ndarray]]:
        """The epoch's steps for ``rank``; identical database sequence on every rank."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        sizes = [len(ix) for ix in train_indices]
        if not any(sizes):
            raise ConfigError(
                "no database has training items; check data.databases (role: train) and the splits"
            )
        gb = batch_size * world_size
        steps = self.steps_per_database(sizes, modalities, gb)
        total = int(sum(steps))
        if self.mode == "shuffle":
            sequence = self.rng.permutation(np.repeat(np.arange(len(steps)), steps))
        else:
            sequence = self.rng.choice(len(steps), size=total, p=self.probabilities(steps))
        # Per-database item streams, drawn from the shared generator in a fixed order → same on all ranks.
        buffers = [self.rng.permutation(ix) if len(ix) else ix for ix in train_indices]
        plan = []
        for d in sequence:
            d = int(d)
            if len(buffers[d]) < gb:
                # Exhausted: drop the remainder (as drop_last does) and start a fresh permutation, so
                # a global batch never holds an item twice. A database smaller than B·world has to
                # repeat items; small databases cycle through several permutations per epoch.
                buffers[d] = self.rng.permutation(train_indices[d])
                while len(buffers[d]) < gb:
                    buffers[d] = np.concatenate([buffers[d], self.rng.permutation(train_indices[d])])
            batch, buffers[d] = buffers[d][:gb], buffers[d][gb:]
            plan.append((d, batch[rank::world_size]))  # rank-strided: distinct items per rank
        return plan

    def state_dict(self) -> dict[str, Any]:
        # Big integers as strings: checkpoints must load with torch.load(weights_only=True).
        st = self.rng.bit_generator.state
        return {
            "bit_generator": st["bit_generator"],
            "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]),
            "uinteger": int(st["uinteger"]),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = {
            "bit_generator": state["bit_generator"],
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }


class WeightedTaskSampling(Callback):
    """Lightning callback that owns the :class:`TaskSampler` and logs the realised task mix.

    The datamodule must implement :class:`avlab.datamodules.base.SupportsTaskSampling`
    (``attach_task_sampler``, ``train_plan_inputs``, ``set_train_plan``), as the unqa one does.
    Each epoch logs ``train/task_mix/<db>`` (fraction of steps); at the end of fit the sequence
    is written to ``<run dir>/task_sequence.csv`` and plotted to ``plots/task_sampling.png``.
    """

    def __init__(self, seed: int = 0, audio_repeat: int = 4, mode: str = "weighted") -> None:
        super().__init__()
        self.sampler = TaskSampler(seed=seed, audio_repeat=audio_repeat, mode=mode)
        self.history: list[dict[str, Any]] = []
        self._epoch_plan: list[int] = []

    @property
    def state_key(self) -> str:
        return "WeightedTaskSampling"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before the dataloaders exist: the datamodule needs the sampler for the epoch length.
        if isinstance(trainer.datamodule, SupportsTaskSampling):
            trainer.datamodule.attach_task_sampler(self.sampler)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, SupportsTaskSampling):
            raise ConfigError(
                "callbacks.extra: WeightedTaskSampling needs a DataModule that supports task "
                "sampling (avlab.datamodules.base.SupportsTaskSampling, e.g. the unqa one); "
                f"got {type(dm).__name__}"
            )
        indices, modalities, names = dm.train_plan_inputs()
        plan = self.sampler.plan_epoch(
            indices, modalities, dm.batch_size, trainer.world_size, trainer.global_rank
        )
        dm.set_train_plan(plan)
        self._epoch_plan = [d for d, _ in plan]
        step = int(getattr(pl_module, "step_index", -1))
        counts = Counter(self._epoch_plan)
        for i, d in enumerate(self._epoch_plan):
            self.history.append(
                {
                    "global_step": trainer.global_step + i,
                    "epoch": trainer.current_epoch,
                    "schedule_step": step + 1,
                    "database": names[d],
                }
            )
        total = max(1, len(self._epoch_plan))
        for d, name in enumerate(names):
            pl_module.log(
                f"train/task_mix/{name}",
                counts.get(d, 0) / total,
                on_step=False,
                on_epoch=True,
                add_dataloader_idx=False,
                sync_dist=False,
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = getattr(pl_module, "run_dir", None)
        if not trainer.is_global_zero or run_dir is None or not self.history:
            return
        path = Path(run_dir) / "task_sequence.csv"
        write_header = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.history[0]))
            if write_header:
                w.writeheader()
            w.writerows(self.history)
        try:
            plot_task_sequence(self.history, Path(run_dir) / "plots" / "task_sampling.png")
        except Exception:  # noqa: BLE001, S110 - a plotting problem must not fail the run
            pass

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "sampler" in state_dict:
            self.sampler.load_state_dict(state_dict["sampler"])


def plot_task_sequence(history: list[dict[str, Any]], path: Path, max_steps: int = 400) -> Path:
    """A strip chart: which database each optimisation step trained on (first ``max_steps``)."""
    from avlab.plots import _pyplot

    plt = _pyplot()
    names = sorted({h["database"] for h in history})
    rows = history[:max_steps]
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.4 * len(names)))
    for i, name in enumerate(names):
        xs = [h["global_step"] for h in rows if h["database"] == name]
        ax.scatter(xs, [i] * len(xs), marker="|", s=120)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("optimisation step")
    ax.set_title("Adaptive weighted task sampling: database per step")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Shared behaviour of every avlab LightningDataModule, and the contract it offers the rest of avlab.

``data.root`` is the dataset folder.  When it is unset, the task's demo dataset is built once
under the cache folder (``$AVLAB_CACHE`` or ``~/.cache/avlab``) and used, so every experiment runs
out of the box on real on-disk formats.

The contract (see ``docs/architecture.md``): a DataModule owns all data work — reading the
dataset folder, decoding, feature extraction (frozen backbones included) and caching. What the
runner, the callbacks and the LightningModules may use is declared here and nowhere else:

* every :class:`AvlabDataModule` offers :meth:`~AvlabDataModule.extract_features` (``avlab
  features``), :meth:`~AvlabDataModule.sample_table` (per-sample metadata for evaluation) and
  :meth:`~AvlabDataModule.dataset_info` (name and evaluation settings of the dataset);
* optional capabilities are abstract mixins, checked with ``isinstance``:
  :class:`SupportsTaskSampling` (the UNQA task-sampling callback drives the training batches) and
  :class:`SupportsArrays` (closed-form estimators fit on whole arrays instead of batches).

Batches are dicts of tensors that carry each sample's dataset index under ``index`` (the row of
``sample_table``), so evaluation can gather them across DDP ranks and look their metadata up.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from lightning import LightningDataModule

from avlab.errors import ConfigError, DataError
from avlab.paths import cache_dir

if TYPE_CHECKING:  # the sampler lives with its callback; only its type is needed here
    from avlab.callbacks.task_sampling import TaskSampler

__all__ = ["ArraySplit", "AvlabDataModule", "DatasetInfo", "SupportsArrays", "SupportsTaskSampling"]


@dataclass(frozen=True)
class DatasetInfo:
    """What evaluation needs to know about a dataset besides its samples.

    Attributes:
        name: short name; when set, test metrics of a second (cross-dataset) DataModule are
            reported as ``test/<name>/<metric>`` and its output files are prefixed ``<name>_``.
        score_scale: (low, high) of the target scores the model is trained on (quality tasks).
        logistic: ``None``, ``"4"`` or ``"5"``: also report PLCC/RMSE after a logistic fit.
        class_names: name of each class by class index (classification tasks, e.g. yt8m's
            ``vocabulary.csv``), for per-class outputs; ``None`` when the dataset names none.
    """

    name: str | None = None
    score_scale: tuple[float, float] | None = None
    logistic: str | None = None
    class_names: tuple[str, ...] | None = None


@dataclass
class ArraySplit:
    """One split as whole arrays, for closed-form estimators (see :class:`SupportsArrays`).

    Attributes:
        features: ``{name: array [n, ...]}``, one row per sample.
        target: ``[n]`` target scores.
        index: ``[n]`` dataset indices of the rows (the index of :meth:`AvlabDataModule.sample_table`).
    """

    features: dict[str, np.ndarray]
    target: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.index)
        bad = {k: len(v) for k, v in self.features.items() if len(v) != n}
        if len(self.target) != n or bad:
            raise DataError(
                f"ArraySplit: {n} indices but target has {len(self.target)} rows "
                f"and features {bad or 'match'}"
            )


#: ``data.num_workers: auto`` uses at most this many workers per process: beyond it, more workers
#: cost memory (each holds its own copies and prefetched batches) for little more throughput.
MAX_AUTO_WORKERS = 8


def auto_workers(devices: int = 1) -> int:
    """``data.num_workers: auto`` for a process that shares this node's CPUs with ``devices - 1``
    others: its share of the CPUs it may run on, minus one for the main process, capped."""
    try:
        cpus = len(os.sched_getaffinity(0))  # what a cgroup / SLURM allocation allows, not the host's total
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(1, int(devices)) - 1))


class AvlabDataModule(LightningDataModule):
    """Base DataModule: dataset folder resolution, demo fallback, split protocols, checks, and the
    contract methods (:meth:`extract_features`, :meth:`sample_table`, :meth:`dataset_info`)."""

    #: Task name, used for the demo cache folder (``<cache>/demo/<task>/<size>``).
    task: str = ""

    def __init__(
        self,
        root: str | None = None,
        demo_size: str = "small",
        batch_size: int = 32,
        num_workers: int | str = 0,
    ) -> None:
        super().__init__()
        self.root = root
        self.demo_size = demo_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split_kind: str | None = None
        self.split_index = 0
        self.split_count = 1

    # ------------------------------------------------------------------ loader workers
    @property
    def num_workers(self) -> int:
        """DataLoader worker processes per training process. ``data.num_workers: auto`` means the
        CPUs this process may use, shared among the trainer's devices on this node, one left for
        the main process, at most :data:`MAX_AUTO_WORKERS`; 0 on a machine with one CPU per device."""
        if self._num_workers != "auto":
            return self._num_workers
        devices = getattr(getattr(self, "trainer", None), "num_devices", None) or 1
        return auto_workers(devices)

    @num_workers.setter
    def num_workers(self, value: int | str) -> None:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            self._num_workers = value
            return
        raise ConfigError(f"data.num_workers must be a whole number >= 0 or `auto`, got {value!r}")

    # ------------------------------------------------------------------ dataset folder
    @property
    def uses_demo(self) -> bool:
        return self.root in (None, "")

    def demo_dir(self) -> Path:
        return cache_dir() / "demo" / self.task / self.demo_size

    def dataset_root(self, *, build: bool = False) -> Path:
        """The dataset folder; builds the demo data first when ``data.root`` is unset and ``build``."""
        if self.uses_demo:
            path = self.demo_dir()
            if build:
                self.build_demo(path, size=self.demo_size)
            return path
        path = Path(str(self.root)).expanduser()
        if not path.exists():
            raise DataError(
                f"data.root {path} does not exist; point data.root at your dataset folder, "
                "or unset it to use the demo data"
            )
        return path

    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        """Write the task's demo dataset in its real on-disk format to ``out_dir``."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place that may write the demo data or caches,
        # so it fills the same feature cache that `avlab features` fills and setup() reads. Progress
        # shows here too (a first run may extract for minutes); --quiet silences it.
        self.extract_features(progress=True)

    # ------------------------------------------------------------------ the contract
    def extract_features(self, progress: bool = True) -> dict[str, Any]:
        """Compute and cache every feature training reads; return a JSON-able summary.

        ``avlab features EXPERIMENT`` and :meth:`prepare_data` call this, so both fill the one cache
        that training then reads (a second call does no repeated work). Tasks with features to
        extract (avq's VMAF and audio features, unqa's frozen SlowFast motion features) override it;
        the default only makes sure the dataset folder (or the demo data) exists.
        """
        root = self.dataset_root(build=True)
        return {"root": str(root), "features": f"none: {type(self).__name__} reads its inputs directly"}

    def sample_table(self, split: str) -> pd.DataFrame:
        """Per-sample metadata of ``split`` (``train``/``val``/``test``), indexed by dataset index.

        The index values are those that batches carry under ``index``; evaluation looks gathered
        samples up here (``table.loc[indices]``) to name them in prediction CSVs and group them
        (by source, dataset, video ...). Available after ``setup()``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement sample_table(split)")

    def dataset_info(self) -> DatasetInfo:
        """Name and evaluation settings of the dataset (see :class:`DatasetInfo`)."""
        return DatasetInfo()

    # ------------------------------------------------------------------ protocols
    def configure_split(self, kind: str | None, index: int = 0, count: int = 1) -> None:
        """Select fold ``index`` of ``count`` (``kind='fold'``) or random split ``index`` (``'repeat'``)."""
        if kind is not None and kind not in self.supported_protocols:
            key = "cv.folds" if kind == "fold" else "splits.repeats"
            raise ConfigError(
                f"{type(self).__name__} does not support `{key}`;"
                f" it supports: {', '.join(self.supported_protocols) or 'none'}"
            )
        self.split_kind, self.split_index, self.split_count = kind, index, count

    supported_protocols: tuple[str, ...] = ()

    # ------------------------------------------------------------------ validation
    def check(self) -> list[str]:
        """Every problem found in the dataset folder (empty when it is valid)."""
        return []

    def describe(self) -> dict[str, Any]:
        """A short summary printed by ``avlab data check``."""
        return {"root": str(self.dataset_root())}


# --------------------------------------------------------------------------- capabilities
class SupportsTaskSampling(ABC):
    """A DataModule whose training batches follow a plan drawn by a task sampler.

    :class:`avlab.callbacks.task_sampling.WeightedTaskSampling` attaches its sampler in ``setup``
    (before the dataloaders exist, since the epoch length depends on it), then, at the start of
    every training epoch, draws a plan from :meth:`train_plan_inputs` and hands it over with
    :meth:`set_train_plan`. Without the callback the DataModule draws plans itself.
    """

    @abstractmethod
    def attach_task_sampler(self, sampler: TaskSampler) -> None:
        """Use ``sampler`` (whose state the callback checkpoints) for epoch lengths and plans."""

    @abstractmethod
    def train_plan_inputs(self) -> tuple[list[np.ndarray], list[str], list[str]]:
        """Per task (database), in a fixed order: training dataset indices, modality, name."""

    @abstractmethod
    def set_train_plan(self, plan: Sequence[tuple[int, np.ndarray]]) -> None:
        """The coming epoch's steps: ``[(task number, dataset indices of this rank's batch)]``."""


class SupportsArrays(ABC):
    """A DataModule that serves whole splits as arrays, for closed-form estimators (weighted
    product, SVR) that the runner fits without a Trainer."""

    @abstractmethod
    def arrays(self, split: str) -> ArraySplit:
        """Features, targets and dataset indices of ``split`` (after ``setup``).

        ``train`` may include the validation part: closed-form estimators need no validation set.
        """

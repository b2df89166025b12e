"""Shared behaviour of every avlab LightningDataModule.

``data.root`` is the dataset folder.  When it is unset, the task's demo dataset is built once
under the cache folder (``$AVLAB_CACHE`` or ``~/.cache/avlab``) and used, so every experiment runs
out of the box on real on-disk formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import LightningDataModule

from avlab.errors import ConfigError, DataError
from avlab.paths import cache_dir


class AvlabDataModule(LightningDataModule):
    """Base DataModule: dataset folder resolution, demo fallback, split protocols, checks."""

    #: Task name, used for the demo cache folder (``<cache>/demo/<task>/<size>``).
    task: str = ""

    def __init__(self, root: str | None = None, demo_size: str = "small", batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__()
        self.root = root
        self.demo_size = demo_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split_kind: str | None = None
        self.split_index = 0
        self.split_count = 1

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
            raise DataError(f"data.root {path} does not exist; point data.root at your dataset folder, or unset it to use the demo data")
        return path

    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        """Write the task's demo dataset in its real on-disk format to ``out_dir``."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place that may write the demo data or caches.
        self.dataset_root(build=True)

    # ------------------------------------------------------------------ protocols
    def configure_split(self, kind: str | None, index: int = 0, count: int = 1) -> None:
        """Select fold ``index`` of ``count`` (``kind='fold'``) or random split ``index`` (``'repeat'``)."""
        if kind is not None and kind not in self.supported_protocols:
            raise ConfigError(
                f"{type(self).__name__} does not support `{'cv.folds' if kind == 'fold' else 'splits.repeats'}`;"
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

"""The ``yt8m`` LightningDataModule: YouTube-8M TFRecord splits as train / validation / test streams."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from avlab.datamodules.base import AvlabDataModule, DatasetInfo
from avlab.datamodules.yt8m.feature_cache import (
    YT8MFeatureCacheDataset,
    batch_as_is,
    build_feature_cache,
    densify_labels,
    feature_cache_key,
)
from avlab.datamodules.yt8m.records import YT8MRecordDataset
from avlab.datamodules.yt8m.schema import check_schema, read_vocabulary, resolve_split, split_record_key
from avlab.datamodules.yt8m.shard_check import scan_shards
from avlab.demo.yt8m import build_yt8m_demo
from avlab.errors import ConfigError, DataError
from avlab.paths import cache_dir

__all__ = ["YT8MDataModule"]


class YT8MDataModule(AvlabDataModule):
    """YouTube-8M TFRecords as train / validation / test streams.

    Args:
        root: dataset folder; ``None`` builds the demo data under the cache folder and uses it.
        demo_size: ``tiny`` or ``small`` demo (only when ``root`` is unset).
        batch_size, num_workers: DataLoader settings (workers are persistent, so each worker's
            shuffling advances per epoch).
        schema: ``video`` (video-level ``Example`` files) or ``frame`` (``SequenceExample``).
        features: ``mf`` (means) or ``mf_std`` (means + population std; needs ``schema=frame``).
        num_classes: 3862 for the 2018 data (key ``id``), 4716 for 2017 (key ``video_id``).
        train_pattern, val_pattern, test_pattern: shard globs relative to ``root``; ``{schema}``
            is replaced by the schema. The defaults mirror the official layout and names
            (``video/train0000.tfrecord`` …). The official *test* split has no labels, so point
            ``test_pattern`` at a held-out part of ``validate`` to get test metrics on real data.
        vocabulary: ``vocabulary.csv`` relative to ``root`` (class names for plots; optional).
        skip_corrupt: skip damaged records / shard tails instead of failing (counted and logged).
        verify_crc: check TFRecord CRCs.
        max_frames: use at most this many frames per video (frame-level; ``None`` = all).
        shuffle_buffer: training shuffle buffer (shard order is shuffled per epoch too).
        seed: shuffling seed.
        check_records: records per split fully decoded by ``avlab data check`` (every record's
            framing and CRCs are verified regardless).
        feature_cache: decode every split once into memory-mapped columns under the avlab cache
            folder (:func:`build_feature_cache`) and train/evaluate from those. Worth it for
            frame-level MF+STD, where decoding costs far more than the training step; the cache
            is keyed by the shards (path, size, mtime) and the feature settings. Batches are read
            from it whole (:meth:`YT8MFeatureCacheDataset.read_rows`).
        labels_on: where the dense float32 multi-hot ``labels`` ``[B, num_classes]`` are built.
            ``loader``: in the DataLoader, as part of the batch. ``device``: with
            ``feature_cache``, the loader carries each example's classes in CSR form
            (``label_offsets``, ``label_classes``; a few int64 per video instead of 15 KB of
            mostly zeros through the loader and the host-to-device copy) and
            :meth:`on_after_batch_transfer` builds ``labels`` on the training device, so the
            model receives the same batch either way. Meant for GPU training: with the CPU as the
            training device, densifying there costs more than the loader saves. The TFRecord
            stream (no feature cache) and :meth:`shard_loader` always yield dense labels.
    """

    task = "yt8m"

    def __init__(
        self,
        root: str | None = None,
        demo_size: str = "small",
        batch_size: int = 256,
        num_workers: int | str = 0,
        schema: str = "video",
        features: str = "mf",
        num_classes: int = 3862,
        train_pattern: str = "{schema}/train*.tfrecord",
        val_pattern: str = "{schema}/validate*.tfrecord",
        test_pattern: str = "{schema}/test*.tfrecord",
        vocabulary: str | None = "vocabulary.csv",
        skip_corrupt: bool = False,
        verify_crc: bool = True,
        max_frames: int | None = None,
        shuffle_buffer: int = 2048,
        seed: int = 0,
        check_records: int = 64,
        feature_cache: bool = False,
        labels_on: str = "loader",
    ) -> None:
        super().__init__(root=root, demo_size=demo_size, batch_size=batch_size, num_workers=num_workers)
        self.visual_dim, self.audio_dim = check_schema(schema, features)
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive; found {batch_size}")
        self.schema, self.features, self.num_classes = schema, features, int(num_classes)
        self.patterns = {"train": train_pattern, "val": val_pattern, "test": test_pattern}
        self.vocabulary_file = vocabulary
        self.skip_corrupt, self.verify_crc, self.max_frames = skip_corrupt, verify_crc, max_frames
        self.shuffle_buffer, self.seed, self.check_records = shuffle_buffer, seed, check_records
        self.feature_cache = feature_cache
        if labels_on not in ("loader", "device"):
            raise ConfigError(f"data.labels_on must be one of loader, device; got {labels_on!r}")
        self.labels_on = labels_on
        self.datasets: dict[str, YT8MRecordDataset | YT8MFeatureCacheDataset] = {}
        self._vocab: pd.DataFrame | None = None
        self._tables: dict[str, pd.DataFrame] = {}

    # ------------------------------------------------------------------ data
    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        """The yt8m demo (:func:`avlab.demo.yt8m.build_yt8m_demo`): both schemas + vocabulary.csv."""
        return build_yt8m_demo(out_dir, size=size)

    def pattern(self, split: str) -> str:
        """The shard glob of ``split`` (``train``, ``val``, ``test``) with ``{schema}`` filled in."""
        return self.patterns[split].replace("{schema}", self.schema)

    def shards(self, split: str) -> list[Path]:
        """Sorted shard paths of ``split``; raises :class:`DataError` naming the glob if none."""
        return resolve_split(self.dataset_root(), self.pattern(split))

    def make_dataset(
        self, paths: Sequence[Path], *, train: bool = False, source: str | None = None
    ) -> YT8MRecordDataset:
        """A :class:`YT8MRecordDataset` over ``paths`` with this module's settings."""
        return YT8MRecordDataset(
            paths,
            schema=self.schema,
            features=self.features,
            num_classes=self.num_classes,
            skip_corrupt=self.skip_corrupt,
            verify_crc=self.verify_crc,
            max_frames=self.max_frames,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=self.seed,
            # Equal numbers of training steps on every DDP rank (no effect on one process).
            balance_batch_size=self.batch_size if train else None,
            source=source,
        )

    def _cache_path(self, records: YT8MRecordDataset) -> Path:
        return cache_dir() / "yt8m_features" / feature_cache_key(records)

    def extract_features(self, progress: bool = True) -> dict[str, Any]:
        """With ``data.feature_cache=true``, convert every split once to the memory-mapped cache
        that :meth:`setup` reads (:func:`build_feature_cache`; a second call finds it complete).

        ``avlab features`` and ``prepare_data`` (one process per node; the others wait at
        Lightning's barrier) call this. Without the cache there is nothing to extract: the
        records are decoded while they stream.
        """
        root = self.dataset_root(build=True)
        summary: dict[str, Any] = {"root": str(root), "schema": self.schema, "features": self.features}
        if not self.feature_cache:
            summary["cache"] = (
                "none: records are decoded on the fly (data.feature_cache=true converts them once)"
            )
            return summary
        for split in ("train", "val", "test"):
            records = self.make_dataset(
                resolve_split(root, self.pattern(split)), source=str(root / self.pattern(split))
            )
            cache = build_feature_cache(records, self._cache_path(records), progress=progress)
            summary[f"{split} cache"] = str(cache)
        return summary

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        root = self.dataset_root(build=self.uses_demo)
        for split in wanted:
            if split in self.datasets:
                continue
            train = split == "train"
            paths = resolve_split(root, self.pattern(split))
            records = self.make_dataset(paths, train=train, source=str(root / self.pattern(split)))
            if self.feature_cache:
                cache = build_feature_cache(records, self._cache_path(records))  # no-op when prepared
                self.datasets[split] = YT8MFeatureCacheDataset(
                    cache,
                    shuffle=train,
                    seed=self.seed,
                    balance_batch_size=self.batch_size if train else None,
                    batch_size=self.batch_size,  # whole batches per read: see _loader
                    sparse_labels=self.labels_on == "device",  # see on_after_batch_transfer
                )
            else:
                self.datasets[split] = records

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        # The feature cache yields whole batches (one read per column instead of one per example),
        # the same batches this DataLoader would collate from single examples.
        batched = isinstance(dataset, YT8MFeatureCacheDataset) and dataset.batch_size is not None
        return DataLoader(
            dataset,
            batch_size=None if batched else self.batch_size,
            collate_fn=batch_as_is if batched else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # workers keep their epoch counter (shuffling)
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``labels_on=device``: the cached batches' sparse labels become the dense float32
        ``labels`` ``[B, num_classes]`` on the device Lightning moved the batch to
        (:func:`densify_labels`); other batches pass unchanged. Lightning calls this for training,
        validation and test batches alike; code that iterates these loaders itself calls
        :func:`densify_labels` too."""
        if isinstance(batch, dict) and "label_offsets" in batch:
            return densify_labels(batch, self.num_classes)
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def shard_loader(self, spec: str) -> DataLoader:
        """Unshuffled batches of the shards that ``spec`` names, in this module's schema and features.

        ``spec`` is a ``.tfrecord`` file, a folder (every ``*.tfrecord`` in it) or a glob: what
        ``avlab predict ... input=SPEC`` passes. Labels in the shards, if any, are read but not needed.

        Raises:
            DataError: nothing matches ``spec``.
        """
        path = Path(spec).expanduser()
        if path.is_dir():
            paths = sorted(path.glob("*.tfrecord"))
        else:
            paths = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        if not paths:
            raise DataError(
                f"no TFRecord shards match input={spec} (a .tfrecord file, a folder of them, or a glob)"
            )
        return DataLoader(
            self.make_dataset(paths, source=str(path)), batch_size=self.batch_size, num_workers=0
        )

    # ------------------------------------------------------------------ the contract
    def dataset_info(self) -> DatasetInfo:
        """Class names from ``vocabulary.csv`` (the class index where it names none)."""
        vocab = self.vocabulary
        if vocab is None:
            return DatasetInfo()
        return DatasetInfo(class_names=tuple(self.class_names(range(self.num_classes))))

    def sample_table(self, split: str) -> pd.DataFrame:
        """``video_id``, ``labels`` (space-separated class indices), ``shard`` and ``record`` of every
        video of ``split``, indexed by the record key that batches carry as ``index``.

        Read from the feature cache when there is one; otherwise one pass over the split's shards
        (decoding every record: on the full dataset that takes as long as an epoch's reading). The
        table is kept, so the pass happens once per split.
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"sample_table: split must be train, val or test, found {split!r}")
        if split not in self._tables:
            if split not in self.datasets:
                self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
            dataset = self.datasets[split]
            if isinstance(dataset, YT8MFeatureCacheDataset):
                self._tables[split] = dataset.table()
            else:
                self._tables[split] = _scan_table(dataset)
        return self._tables[split]

    @property
    def vocabulary(self) -> pd.DataFrame | None:
        """``vocabulary.csv`` as read by :func:`read_vocabulary`, or ``None`` when absent."""
        if self._vocab is None and self.vocabulary_file:
            path = self.dataset_root() / self.vocabulary_file
            if path.is_file():
                self._vocab = read_vocabulary(path)
        return self._vocab

    def class_names(self, classes: Sequence[int]) -> list[str]:
        """Vocabulary names of class indices (the index itself when unknown)."""
        vocab = self.vocabulary
        if vocab is None:
            return [str(int(c)) for c in classes]
        names = vocab["Name"]
        return [str(names.get(int(c), int(c))) for c in classes]

    @property
    def skipped_corrupt(self) -> int:
        """Damaged records/shard tails skipped so far (``skip_corrupt=true``) over all splits."""
        return sum(ds.skipped_corrupt for ds in self.datasets.values())

    # ------------------------------------------------------------------ avlab data check
    def check(self) -> list[str]:
        """Every problem found: missing splits, damaged shards, bad records, vocabulary mismatch.

        Every record of every shard is read with both CRCs verified (when ``verify_crc``), and
        each damaged record is reported with its file and byte offset; shards are scanned by
        several processes when there are many. The first ``check_records`` records of each
        split's intact shards are also fully decoded and validated (ids, label range, widths).
        """
        problems: list[str] = []
        try:
            root = self.dataset_root(build=self.uses_demo)
        except DataError as exc:
            return [str(exc)]
        split_paths: dict[str, list[Path]] = {}
        for split in ("train", "val", "test"):
            try:
                split_paths[split] = resolve_split(root, self.pattern(split))
            except DataError as exc:
                problems.append(str(exc))
        # Patterns may overlap (a test split carved out of validate): scan each shard once.
        unique = list(dict.fromkeys(p for paths in split_paths.values() for p in paths))
        damage = scan_shards(unique, verify_crc=self.verify_crc)
        for path in unique:
            problems.extend(damage[path])
        for paths in split_paths.values():
            intact = [p for p in paths if not damage[p]]
            if not intact:
                continue
            ds = YT8MRecordDataset(
                intact,
                schema=self.schema,
                features=self.features,
                num_classes=self.num_classes,
                verify_crc=self.verify_crc,
                max_frames=self.max_frames,
            )
            try:
                for i, _ in enumerate(ds):
                    if i + 1 >= self.check_records:
                        break
            except DataError as exc:
                problems.append(str(exc))
        if self.vocabulary_file and (root / self.vocabulary_file).is_file():
            try:
                vocab = read_vocabulary(root / self.vocabulary_file)
                if int(vocab["Index"].max()) >= self.num_classes:
                    problems.append(
                        f"{root / self.vocabulary_file} has class index {int(vocab['Index'].max())} but "
                        f"data.num_classes={self.num_classes} (2018: 3862, 2017: 4716)"
                    )
            except DataError as exc:
                problems.append(str(exc))
        return problems

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "root": str(self.dataset_root()),
            "schema": self.schema,
            "features": f"{self.features} (visual {self.visual_dim}, audio {self.audio_dim})",
            "num_classes": self.num_classes,
        }
        for split in ("train", "val", "test"):
            paths = sorted(self.dataset_root().glob(self.pattern(split)))
            out[f"{split} shards"] = f"{len(paths)} ({self.pattern(split)})"
        return out


def _scan_table(dataset: YT8MRecordDataset) -> pd.DataFrame:
    """The :meth:`YT8MDataModule.sample_table` of a record stream: one unshuffled single-process pass."""
    reader = dataset.whole_stream()
    rows = []
    for sample in reader:
        shard, record = split_record_key(sample["index"])
        labels = " ".join(str(c) for c in np.flatnonzero(sample["labels"].numpy()))
        rows.append((sample["index"], sample["video_id"], labels, shard, record))
    frame = pd.DataFrame(rows, columns=["index", "video_id", "labels", "shard", "record"])
    return frame.set_index("index")

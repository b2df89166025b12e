"""The YouTube-8M record stream: TFRecord shards decoded into model inputs, each record once per epoch.

Sharding (:class:`YT8MRecordDataset`): the epoch's records are split over
``P = world_size × num_workers`` *consumers* (DDP rank × DataLoader worker), so each record is
read by exactly one consumer:

* **≥ P shards** — shards are dealt round-robin (consumer ``c`` reads shards ``c, c+P, …``);
  each shard is opened by one consumer only. This is the normal case for the real dataset
  (3844 video-level shards in 2018).
* **< P shards** — every consumer walks all shards and keeps the records whose running position
  ``i`` (counted over the epoch's shard order) has ``i % P == c``. Records are still read exactly
  once as *samples*; the cost is that each consumer scans (not decodes) every shard.

Frame-level features: mean and std are taken over the uint8 codes ``q`` in exact integer
arithmetic and mapped through the dequantisation's affine function (:mod:`.schema`), which is
exactly (not approximately) the mean/std of the dequantised values, without materialising them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from avlab.datamodules.yt8m.counts import cached_count
from avlab.datamodules.yt8m.schema import (
    AUDIO_DIM,
    ID_KEYS,
    Q_BIAS,
    Q_SCALE,
    RECORD_KEY_SHIFT,
    RGB_DIM,
    check_schema,
    feature_dims,
)
from avlab.datamodules.yt8m.sharding import buffer_shuffle, equal_batches_quota, resolve_dist, take
from avlab.errors import ConfigError, DataError
from avlab.io.tf_example import parse_example, parse_sequence_example
from avlab.io.tfrecord import CorruptRecord, iter_records

__all__ = ["YT8MRecordDataset"]


class YT8MRecordDataset(IterableDataset):
    """Stream YouTube-8M TFRecord shards as samples, each record exactly once per epoch.

    Yields ``{"index": int, "video_id": str, "rgb": float32[d_v], "audio": float32[d_a],
    "labels": float32[num_classes]}`` (multi-hot), with ``d_v, d_a = 1024, 128`` for ``"mf"`` and
    ``2048, 256`` for ``"mf_std"``.

    Args:
        paths: shard files (order does not matter; they are sorted).
        schema: ``"video"`` (``tf.train.Example``) or ``"frame"`` (``tf.train.SequenceExample``).
        features: ``"mf"`` or ``"mf_std"`` (needs ``schema="frame"``).
        num_classes: vocabulary size (3862 for 2018, 4716 for 2017); a larger label is an error.
        skip_corrupt: skip damaged records/shard tails instead of failing (counted, see
            :attr:`skipped_corrupt`).
        verify_crc: check TFRecord CRCs.
        max_frames: use at most the first ``max_frames`` frames of frame-level records
            (``None``: all; the starter frame reader uses 300).
        shuffle: shuffle the shard order every epoch (same permutation on every rank, so the
            split stays exact) and mix samples through a buffer of ``shuffle_buffer``.
        seed: base seed of that shuffling; epoch ``e`` uses ``seed + e``.
        rank, world_size: DDP position; default: ``torch.distributed`` when initialised,
            else ``(0, 1)``. Passing them explicitly simulates ranks (tests).
        balance_batch_size: when set and ``world_size > 1``, every rank yields the same number of
            full batches of this size (surplus records are left out this epoch) — DDP training
            hangs if ranks run different numbers of steps. Needs every shard's record count
            (header scan, cached under the avlab cache folder). Leave unset for evaluation,
            where every record must count.
        source: how the shards were found (a glob), used in error messages.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        schema: str = "video",
        features: str = "mf",
        num_classes: int = 3862,
        skip_corrupt: bool = False,
        verify_crc: bool = True,
        max_frames: int | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        balance_batch_size: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        check_schema(schema, features)
        if num_classes < 1:
            raise ConfigError(f"data.num_classes must be positive; found {num_classes}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"data.max_frames must be ≥ 1 or null; found {max_frames}")
        self.paths = sorted(Path(p) for p in paths)
        if not self.paths:
            raise DataError(f"no TFRecord shards for this split ({source or 'empty path list'})")
        self.schema, self.features, self.num_classes = schema, features, int(num_classes)
        self.skip_corrupt, self.verify_crc, self.max_frames = skip_corrupt, verify_crc, max_frames
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, int(shuffle_buffer), int(seed)
        self.rank, self.world_size = rank, world_size
        self.balance_batch_size = balance_batch_size
        self.source = source
        self.visual_dim, self.audio_dim = feature_dims(features)
        self._epoch = 0
        # Skips are counted in shared memory so that DataLoader worker processes' counts are
        # visible in the main process: one row per worker, so no two processes write one cell.
        self._corrupt_counts = torch.zeros(64, 2, dtype=torch.int64).share_memory_()

    def whole_stream(self) -> YT8MRecordDataset:
        """The same records, unshuffled, as one reader over every shard whatever the DDP/worker
        context of the caller: for passes that must see each record once (tables, caches)."""
        return YT8MRecordDataset(
            self.paths,
            schema=self.schema,
            features=self.features,
            num_classes=self.num_classes,
            skip_corrupt=self.skip_corrupt,
            verify_crc=self.verify_crc,
            max_frames=self.max_frames,
            rank=0,
            world_size=1,
            source=self.source,
        )

    # ------------------------------------------------------------------ bookkeeping
    @property
    def skipped_corrupt(self) -> int:
        """Damaged spots skipped so far (``skip_corrupt=True``), summed over worker processes."""
        return int(self._corrupt_counts[:, 0].sum())

    @property
    def skipped_shard_tails(self) -> int:
        """How many of those skips dropped the rest of a shard (truncation / bad header)."""
        return int(self._corrupt_counts[:, 1].sum())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shuffling (call before iterating)."""
        self._epoch = int(epoch)

    def _dist(self) -> tuple[int, int]:
        return resolve_dist(self.rank, self.world_size)

    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.paths)))
        if self.shuffle:
            # Same seed on every rank and worker ⇒ same permutation ⇒ the split stays exact.
            np.random.default_rng(self.seed + epoch).shuffle(order)
        return order

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Not a generator function: the epoch is read (and advanced, for persistent workers and
        # the no-worker case) when iteration starts, not lazily at the first sample.
        epoch = self._epoch
        self._epoch += 1
        rank, world = self._dist()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._generate(epoch, rank, world, worker, workers)

    def _plan(
        self, epoch: int, rank: int, world: int, worker: int, workers: int
    ) -> tuple[list[int], int, int]:
        """``(shards to open, record stride, record phase)`` for consumer ``rank*workers+worker``."""
        consumers = world * workers
        me = rank * workers + worker
        order = self._shard_order(epoch)
        if len(order) >= consumers:
            return order[me::consumers], 1, 0
        return order, consumers, me

    def _quota(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> int | None:
        """Records this consumer may yield so every rank runs the same number of full batches."""
        bs = self.balance_batch_size
        if not bs or world <= 1:
            return None
        counts = [cached_count(p) for p in self.paths]
        total = sum(counts)

        def consumer_records(r: int, w: int) -> int:
            shards, stride, phase = self._plan(epoch, r, world, w, workers)
            if stride == 1:
                return sum(counts[s] for s in shards)
            return total // stride + (1 if phase < total % stride else 0)

        return equal_batches_quota(consumer_records, rank, world, worker, workers, bs)

    def _generate(
        self, epoch: int, rank: int, world: int, worker: int, workers: int
    ) -> Iterator[dict[str, Any]]:
        shards, stride, phase = self._plan(epoch, rank, world, worker, workers)
        quota = self._quota(epoch, rank, world, worker, workers)
        samples = self._records(shards, stride, phase, worker)
        if quota is not None:
            samples = take(samples, quota)
        if self.shuffle and self.shuffle_buffer > 1:
            consumer = rank * workers + worker
            rng = np.random.default_rng([self.seed, epoch, consumer])
            samples = buffer_shuffle(samples, self.shuffle_buffer, rng)
        yield from samples

    def _records(self, shards: list[int], stride: int, phase: int, worker: int) -> Iterator[dict[str, Any]]:
        slot = worker % self._corrupt_counts.shape[0]

        def on_corrupt(event: CorruptRecord) -> None:
            self._corrupt_counts[slot, 0] += 1
            self._corrupt_counts[slot, 1] += int(event.rest_skipped)

        position = 0
        for shard in shards:
            path = self.paths[shard]
            for record, (offset, data) in enumerate(
                iter_records(
                    path, verify_crc=self.verify_crc, skip_corrupt=self.skip_corrupt, on_corrupt=on_corrupt
                )
            ):
                mine = position % stride == phase
                position += 1
                if not mine:
                    continue  # another consumer's record: skip decoding entirely
                sample = self._decode(data, path, record, offset)
                sample["index"] = (shard << RECORD_KEY_SHIFT) | record
                yield sample

    # ------------------------------------------------------------------ decoding
    def _where(self, path: Path, record: int, offset: int) -> str:
        return f"{path}: record {record} (byte offset {offset})"

    def _decode(self, data: bytes, path: Path, record: int, offset: int) -> dict[str, Any]:
        try:
            if self.schema == "video":
                feats = parse_example(data)
                context = feats
            else:
                context, lists = parse_sequence_example(data, {"rgb": RGB_DIM, "audio": AUDIO_DIM})
        except ValueError as exc:
            what = "tf.train.Example" if self.schema == "video" else "tf.train.SequenceExample"
            hint = (
                " (is this a frame-level shard? set data.schema=frame)"
                if self.schema == "video"
                else " (is this a video-level shard? set data.schema=video)"
            )
            raise DataError(f"{self._where(path, record, offset)}: not a valid {what}: {exc}{hint}") from exc

        video_id = self._video_id(context, path, record, offset)
        labels = self._labels(context, path, record, offset, video_id)
        if self.schema == "video":
            rgb = self._mean_feature(feats, "mean_rgb", RGB_DIM, path, record, offset)
            audio = self._mean_feature(feats, "mean_audio", AUDIO_DIM, path, record, offset)
        else:
            rgb = self._frame_feature(lists, "rgb", path, record, offset)
            audio = self._frame_feature(lists, "audio", path, record, offset)
        return {
            "video_id": video_id,
            "rgb": torch.from_numpy(rgb),
            "audio": torch.from_numpy(audio),
            "labels": torch.from_numpy(labels),
        }

    def _video_id(self, context: dict[str, Any], path: Path, record: int, offset: int) -> str:
        for key in ID_KEYS:
            value = context.get(key)
            if isinstance(value, list) and value:
                return value[0].decode("utf-8", errors="replace")
        raise DataError(
            f"{self._where(path, record, offset)}: no video id; expected a bytes feature 'id' (2018 data) "
            f"or 'video_id' (2017 data), found keys {sorted(context) or 'none'}"
            + (
                " (a frame-level record? set data.schema=frame)"
                if self.schema == "video" and not context
                else ""
            )
        )

    def _labels(
        self, context: dict[str, Any], path: Path, record: int, offset: int, video_id: str
    ) -> np.ndarray:
        raw = context.get("labels")
        y = np.zeros(self.num_classes, np.float32)
        if raw is None or (isinstance(raw, list) and not raw):
            return y  # unlabelled (e.g. the Kaggle test split)
        if not isinstance(raw, np.ndarray) or raw.dtype != np.int64:
            raise DataError(f"{self._where(path, record, offset)}: 'labels' must be an int64 list")
        if raw.size:
            bad = raw[(raw < 0) | (raw >= self.num_classes)]
            if bad.size:
                raise DataError(
                    f"{self._where(path, record, offset)}, video {video_id!r}: label {int(bad[0])} "
                    f"is outside 0..{self.num_classes - 1} (data.num_classes={self.num_classes}). "
                    "The 2018 vocabulary has 3862 classes and the 2017 one 4716: set data.num_classes "
                    "to match your data."
                )
            y[raw] = 1.0
        return y

    def _mean_feature(
        self, feats: dict[str, Any], key: str, width: int, path: Path, record: int, offset: int
    ) -> np.ndarray:
        value = feats.get(key)
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            found = "missing" if value is None else "not a float list"
            raise DataError(
                f"{self._where(path, record, offset)}: feature {key!r} is {found}; video-level records need "
                f"float lists mean_rgb[{RGB_DIM}] and mean_audio[{AUDIO_DIM}]"
                + (" (a frame-level record? set data.schema=frame)" if value is None else "")
            )
        if value.shape[0] != width:
            raise DataError(
                f"{self._where(path, record, offset)}: feature {key!r} has {value.shape[0]} values, "
                f"expected {width}"
            )
        return value.copy()  # own the memory (the parsed view is read-only)

    def _frame_feature(
        self, lists: dict[str, Any], key: str, path: Path, record: int, offset: int
    ) -> np.ndarray:
        q = lists.get(key)
        if q is None:
            raise DataError(
                f"{self._where(path, record, offset)}: feature list {key!r} is missing; "
                "frame-level records need feature lists rgb and audio"
            )
        if self.max_frames is not None:
            q = q[: self.max_frames]
        if q.shape[0] == 0:
            raise DataError(f"{self._where(path, record, offset)}: feature list {key!r} has no frames")
        # Exact integer moments of the uint8 codes (no T×D float temporaries: measured ~10×
        # faster than numpy's float64 mean/std here). int32 holds Σq² for up to 33k frames.
        t = q.shape[0]
        qi = q.astype(np.int32 if t < 33_000 else np.int64)
        s1 = qi.sum(axis=0, dtype=np.int64)
        mean = s1 / t * Q_SCALE + Q_BIAS
        if self.features == "mf":
            return mean.astype(np.float32)
        s2 = np.einsum("ij,ij->j", qi, qi).astype(np.int64)
        var_q = (t * s2 - s1 * s1) / (t * t)  # exact integers until this division
        std = np.sqrt(var_q) * Q_SCALE  # population std (ddof=0) of the dequantised values
        return np.concatenate([mean, std]).astype(np.float32)

"""YouTube-8M data: TFRecord shards in the official video-level and frame-level schemas.

Formats (``shared/reference/youtube8m.md`` §1, google/youtube-8m ``readers.py``):

* **video-level** ``tf.train.Example``: ``id`` (2018) or ``video_id`` (2017) bytes, ``labels``
  int64 list, ``mean_rgb`` float[1024], ``mean_audio`` float[128];
* **frame-level** ``tf.train.SequenceExample``: the same id/labels in the context, and feature
  lists ``rgb`` / ``audio`` with one uint8-quantised ``bytes`` value per second (1024 / 128 bytes).

Input features (``features``):

* ``"mf"`` — mean features: ``mean_rgb``/``mean_audio`` from video-level records, or the mean of
  the dequantised frames from frame-level records (which is how the released means were made);
* ``"mf_std"`` — mean and standard deviation (MF+STD): ``[mean_rgb, std_rgb]`` (2048) and
  ``[mean_audio, std_audio]`` (256). Video-level files hold no std, so this needs frame-level
  records. The std is the **population** std (``ddof=0``) over the video's frames: nothing public
  defines it for the Attend-Fusion paper, and ``ddof=0`` is defined for one-frame videos.

Dequantisation is the starter code's ``utils.Dequantize`` with its defaults
(``max_quantized_value=2``, ``min_quantized_value=-2``): ``x = q * 4/255 + (4/512 - 2)``.
Mean and std are taken over ``q`` in float64 and mapped through that affine function, which is
exactly (not approximately) the mean/std of the dequantised values, without materialising them.

Sharding (:class:`YT8MRecordDataset`): the epoch's records are split over
``P = world_size × num_workers`` *consumers* (DDP rank × DataLoader worker), so each record is
read by exactly one consumer:

* **≥ P shards** — shards are dealt round-robin (consumer ``c`` reads shards ``c, c+P, …``);
  each shard is opened by one consumer only. This is the normal case for the real dataset
  (3844 video-level shards in 2018).
* **< P shards** — every consumer walks all shards and keeps the records whose running position
  ``i`` (counted over the epoch's shard order) has ``i % P == c``. Records are still read exactly
  once as *samples*; the cost is that each consumer scans (not decodes) every shard.

``index`` in each sample is a global record key, unique within the epoch and stable across
epochs and runs: ``shard_number * 2**32 + record_number`` where ``shard_number`` is the shard's
position in the sorted path list. It is not a dense 0..N-1 position because that would need every
shard's record count before the first sample (a full scan of all shards); use
:func:`split_record_key` to get ``(shard_number, record_number)`` back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avlab.datamodules.base import AvlabDataModule
from avlab.errors import ConfigError, DataError
from avlab.io.tfrecord import CorruptRecord, count_records, iter_records, parse_example, parse_sequence_example
from avlab.paths import cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_DIM",
    "RGB_DIM",
    "VOCABULARY_COLUMNS",
    "YT8MDataModule",
    "YT8MFeatureCacheDataset",
    "build_feature_cache",
    "YT8MRecordDataset",
    "dequantize",
    "feature_dims",
    "read_vocabulary",
    "resolve_split",
    "split_record_key",
]

#: Per-second feature widths of the released data (Inception-v3 PCA rgb, VGGish audio).
RGB_DIM = 1024
AUDIO_DIM = 128
#: Column order of the official 2018 ``vocabulary.csv``.
VOCABULARY_COLUMNS = (
    "Index",
    "TrainVideoCount",
    "KnowledgeGraphId",
    "Name",
    "WikiUrl",
    "Vertical1",
    "Vertical2",
    "Vertical3",
    "WikiDescription",
)
#: Context keys holding the video id: 2018 uses ``id``, 2017 ``video_id``.
ID_KEYS = ("id", "video_id")
SCHEMAS = ("video", "frame")
FEATURES = ("mf", "mf_std")
_RECORD_KEY_SHIFT = 32

# starter code utils.Dequantize(feat_vector, max_quantized_value=2, min_quantized_value=-2)
_MAX_Q, _MIN_Q = 2.0, -2.0
_Q_SCALE = (_MAX_Q - _MIN_Q) / 255.0
_Q_BIAS = (_MAX_Q - _MIN_Q) / 512.0 + _MIN_Q


def dequantize(q: np.ndarray, max_quantized_value: float = _MAX_Q, min_quantized_value: float = _MIN_Q) -> np.ndarray:
    """The starter code's dequantisation of uint8 features: ``q * scalar + bias`` (float32)."""
    scalar = (max_quantized_value - min_quantized_value) / 255.0
    bias = (max_quantized_value - min_quantized_value) / 512.0 + min_quantized_value
    return (np.asarray(q, np.float32) * np.float32(scalar) + np.float32(bias)).astype(np.float32)


def feature_dims(features: str) -> tuple[int, int]:
    """``(visual_dim, audio_dim)`` of the model inputs for ``features`` (``mf`` or ``mf_std``)."""
    if features not in FEATURES:
        raise ConfigError(f"data.features must be one of {', '.join(FEATURES)}; found {features!r}")
    k = 2 if features == "mf_std" else 1
    return RGB_DIM * k, AUDIO_DIM * k


def check_schema(schema: str, features: str) -> tuple[int, int]:
    """Validate a (schema, features) pair; returns the model's ``(visual_dim, audio_dim)``."""
    if schema not in SCHEMAS:
        raise ConfigError(f"data.schema must be one of {', '.join(SCHEMAS)}; found {schema!r}")
    dims = feature_dims(features)
    if schema == "video" and features == "mf_std":
        raise ConfigError(
            "data.features=mf_std needs frame-level records: video-level files hold only the means "
            "(mean_rgb, mean_audio). Set data.schema=frame and point data.root at the frame-level shards."
        )
    return dims


def split_record_key(index: int) -> tuple[int, int]:
    """``(shard_number, record_number)`` of a sample's ``index`` (see the module docstring)."""
    return index >> _RECORD_KEY_SHIFT, index & ((1 << _RECORD_KEY_SHIFT) - 1)


def resolve_split(root: str | os.PathLike[str], pattern: str) -> list[Path]:
    """Sorted shard paths matching ``pattern`` (a glob relative to ``root``).

    Raises:
        DataError: nothing matches; the message names the full glob.
    """
    root = Path(root)
    paths = sorted(p for p in root.glob(pattern) if p.is_file())
    if not paths:
        raise DataError(
            f"no TFRecord shards match {root / pattern}; check data.root and the split's file pattern "
            "(official names are train*.tfrecord, validate*.tfrecord, test*.tfrecord)"
        )
    return paths


def read_vocabulary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the official ``vocabulary.csv`` (one row per class, ``Index`` = class index).

    Only ``Index`` and ``Name`` are required; other official columns are kept when present.
    The frame is indexed by ``Index`` (sorted).

    Raises:
        DataError: missing file or columns, or duplicate / negative indices.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vocabulary file {path} not found (the official file is vocabulary.csv)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot parse as CSV ({exc})") from exc
    missing = [c for c in ("Index", "Name") if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the official header "
            f"{','.join(VOCABULARY_COLUMNS)}"
        )
    if not pd.api.types.is_integer_dtype(df["Index"]):
        raise DataError(f"{path}: column Index must hold integers")
    if (df["Index"] < 0).any():
        raise DataError(f"{path}: negative class index {int(df['Index'].min())}")
    dup = df["Index"][df["Index"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: class index {int(dup.iloc[0])} appears more than once")
    return df.set_index("Index", drop=False).sort_index()


# ------------------------------------------------------------------------------ record counts
def _cached_count(path: Path) -> int:
    """Record count of a shard, cached on disk by (path, size, mtime) so scans happen once."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cache = cache_dir() / "tfrecord_counts" / f"{key}.json"
    try:
        return int(json.loads(cache.read_text())["count"])
    except (OSError, ValueError, KeyError):
        pass
    n = count_records(path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(path), "count": n}))
        os.replace(tmp, cache)  # atomic: concurrent workers never read half a file
    except OSError:
        pass
    return n


def _resolve_dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world)``: explicit values, else ``torch.distributed`` when initialised, else ``(0, 1)``."""
    if world_size is not None:
        r, w = int(rank or 0), int(world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = 0, 1
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is outside world_size {w}")
    return r, w


def _equal_batches_quota(
    records: Any, rank: int, world: int, worker: int, workers: int, batch_size: int
) -> int:
    """Records consumer ``(rank, worker)`` may yield so that every rank yields the same number
    of *full* batches (``records(r, w)`` = records available to consumer ``(r, w)``).

    DataLoader workers batch separately, so quotas are whole batches per worker; a rank's
    surplus batches are trimmed from its fullest workers first (deterministic, so every process
    computes the same plan without communicating).
    """
    per_rank = [[records(r, w) // batch_size for w in range(workers)] for r in range(world)]
    target = min(sum(batches) for batches in per_rank)
    mine = per_rank[rank]
    surplus = sum(mine) - target
    while surplus > 0:
        w = max(range(workers), key=lambda i: (mine[i], -i))
        mine[w] -= 1
        surplus -= 1
    if target == 0:
        log.warning("YT8M: fewer than one batch of %d per rank; this epoch yields nothing", batch_size)
    return mine[worker] * batch_size


# ------------------------------------------------------------------------------ the dataset
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
        return _resolve_dist(self.rank, self.world_size)

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

    def _plan(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> tuple[list[int], int, int]:
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
        counts = [_cached_count(p) for p in self.paths]
        total = sum(counts)

        def consumer_records(r: int, w: int) -> int:
            shards, stride, phase = self._plan(epoch, r, world, w, workers)
            if stride == 1:
                return sum(counts[s] for s in shards)
            return total // stride + (1 if phase < total % stride else 0)

        return _equal_batches_quota(consumer_records, rank, world, worker, workers, bs)

    def _generate(self, epoch: int, rank: int, world: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        shards, stride, phase = self._plan(epoch, rank, world, worker, workers)
        quota = self._quota(epoch, rank, world, worker, workers)
        samples = self._records(shards, stride, phase, worker)
        if quota is not None:
            samples = _take(samples, quota)
        if self.shuffle and self.shuffle_buffer > 1:
            consumer = rank * workers + worker
            rng = np.random.default_rng([self.seed, epoch, consumer])
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
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
                iter_records(path, verify_crc=self.verify_crc, skip_corrupt=self.skip_corrupt, on_corrupt=on_corrupt)
            ):
                mine = position % stride == phase
                position += 1
                if not mine:
                    continue  # another consumer's record: skip decoding entirely
                sample = self._decode(data, path, record, offset)
                sample["index"] = (shard << _RECORD_KEY_SHIFT) | record
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
            + (" (a frame-level record? set data.schema=frame)" if self.schema == "video" and not context else "")
        )

    def _labels(self, context: dict[str, Any], path: Path, record: int, offset: int, video_id: str) -> np.ndarray:
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
                    f"{self._where(path, record, offset)}, video {video_id!r}: label {int(bad[0])} is outside "
                    f"0..{self.num_classes - 1} (data.num_classes={self.num_classes}). The 2018 vocabulary has "
                    "3862 classes and the 2017 one 4716: set data.num_classes to match your data."
                )
            y[raw] = 1.0
        return y

    def _mean_feature(self, feats: dict[str, Any], key: str, width: int, path: Path, record: int, offset: int) -> np.ndarray:
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
                f"{self._where(path, record, offset)}: feature {key!r} has {value.shape[0]} values, expected {width}"
            )
        return value.copy()  # own the memory (the parsed view is read-only)

    def _frame_feature(self, lists: dict[str, Any], key: str, path: Path, record: int, offset: int) -> np.ndarray:
        q = lists.get(key)
        if q is None:
            raise DataError(
                f"{self._where(path, record, offset)}: feature list {key!r} is missing; frame-level records need "
                "feature lists rgb and audio"
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
        mean = s1 / t * _Q_SCALE + _Q_BIAS
        if self.features == "mf":
            return mean.astype(np.float32)
        s2 = np.einsum("ij,ij->j", qi, qi).astype(np.int64)
        var_q = (t * s2 - s1 * s1) / (t * t)  # exact integers until this division
        std = np.sqrt(var_q) * _Q_SCALE  # population std (ddof=0) of the dequantised values
        return np.concatenate([mean, std]).astype(np.float32)


def _take(it: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    for i, item in enumerate(it):
        if i >= n:
            return
        yield item


def _buffer_shuffle(it: Iterator[dict[str, Any]], size: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """Approximate shuffle with a fixed-size buffer (streams cannot be shuffled globally)."""
    buf: list[dict[str, Any]] = []
    for item in it:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)  # type: ignore[arg-type]
    yield from buf


# =============================================================================================
# One-time conversion to memory-mapped columns (data.feature_cache=true)
# =============================================================================================
FEATURE_CACHE_VERSION = 1
_CACHE_FILES = ("rgb.npy", "audio.npy", "index.npy", "video_id.npy", "labels.npy", "label_offsets.npy", "meta.json")


def feature_cache_key(dataset: YT8MRecordDataset) -> str:
    """Identity of a split's decoded features: the shards (path, size, mtime) and the settings."""
    sources = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in dataset.paths]
    ident = {
        "version": FEATURE_CACHE_VERSION, "sources": sources, "schema": dataset.schema, "features": dataset.features,
        "num_classes": dataset.num_classes, "max_frames": dataset.max_frames, "skip_corrupt": dataset.skip_corrupt,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def build_feature_cache(dataset: YT8MRecordDataset, out_dir: str | os.PathLike[str]) -> Path:
    """Decode every record of ``dataset`` once and store the model inputs column-wise.

    Writes ``out_dir/`` with ``rgb.npy`` / ``audio.npy`` (float32 ``[N, d]``, memory-mappable),
    ``labels.npy`` + ``label_offsets.npy`` (labels in CSR form, so storage does not grow with
    the vocabulary), ``index.npy`` (record keys), ``video_id.npy`` and ``meta.json``. Frame-level
    MF+STD is the main beneficiary: decoding 300 frames per video happens once instead of every
    epoch. The folder appears atomically (built under a temporary name, then renamed); an
    existing complete cache is returned as is.
    """
    out = Path(out_dir)
    if (out / "meta.json").is_file():
        return out
    # One reader over everything, whatever the DDP/worker context of the caller.
    src = YT8MRecordDataset(
        dataset.paths, schema=dataset.schema, features=dataset.features, num_classes=dataset.num_classes,
        skip_corrupt=dataset.skip_corrupt, verify_crc=dataset.verify_crc, max_frames=dataset.max_frames,
        rank=0, world_size=1, source=dataset.source,
    )
    capacity = sum(_cached_count(p) for p in src.paths)  # upper bound: skipped records leave rows unused
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rgb = np.lib.format.open_memmap(tmp / "rgb.npy", mode="w+", dtype=np.float32, shape=(capacity, src.visual_dim))
    audio = np.lib.format.open_memmap(tmp / "audio.npy", mode="w+", dtype=np.float32, shape=(capacity, src.audio_dim))
    index = np.zeros(capacity, np.int64)
    ids: list[bytes] = []
    labels: list[np.ndarray] = []
    n = 0
    for n, sample in enumerate(src, start=1):
        rgb[n - 1] = sample["rgb"].numpy()
        audio[n - 1] = sample["audio"].numpy()
        index[n - 1] = sample["index"]
        ids.append(sample["video_id"].encode())
        labels.append(np.flatnonzero(sample["labels"].numpy()).astype(np.int32))
    rgb.flush()
    audio.flush()
    del rgb, audio
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(lab) for lab in labels])
    np.save(tmp / "index.npy", index[:n])
    np.save(tmp / "video_id.npy", np.array(ids, dtype=f"S{max((len(i) for i in ids), default=1)}"))
    np.save(tmp / "labels.npy", np.concatenate(labels) if labels else np.zeros(0, np.int32))
    np.save(tmp / "label_offsets.npy", offsets)
    meta = {
        "version": FEATURE_CACHE_VERSION, "count": n, "schema": src.schema, "features": src.features,
        "num_classes": src.num_classes, "visual_dim": src.visual_dim, "audio_dim": src.audio_dim,
        "skipped_corrupt": src.skipped_corrupt, "sources": [str(p) for p in src.paths],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks a complete cache
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same cache first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


class YT8MFeatureCacheDataset(IterableDataset):
    """Samples from a :func:`build_feature_cache` folder, with the same output and the same
    exactly-once sharding over (DDP rank × DataLoader worker) as :class:`YT8MRecordDataset`.

    Rows are dealt to consumers in blocks of ``block`` consecutive rows (round-robin), so each
    consumer reads mostly sequential memory; with ``shuffle`` the block order is permuted per
    epoch (same permutation everywhere) and rows are shuffled inside each consumer's share.
    """

    def __init__(
        self,
        cache: str | os.PathLike[str],
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        balance_batch_size: int | None = None,
        block: int = 256,
    ) -> None:
        super().__init__()
        self.cache = Path(cache)
        meta_path = self.cache / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.cache} is not a complete YouTube-8M feature cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        self.count = int(self.meta["count"])
        self.num_classes = int(self.meta["num_classes"])
        self.visual_dim, self.audio_dim = int(self.meta["visual_dim"]), int(self.meta["audio_dim"])
        self.shuffle, self.seed, self.block = shuffle, int(seed), int(block)
        self.rank, self.world_size, self.balance_batch_size = rank, world_size, balance_batch_size
        self.skipped_corrupt = int(self.meta.get("skipped_corrupt", 0))
        self._epoch = 0
        self._arrays: dict[str, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shuffling."""
        self._epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memmaps are reopened in each worker process
        return state

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            load = {name: np.load(self.cache / f"{name}.npy", mmap_mode="r") for name in ("rgb", "audio")}
            for name in ("index", "video_id", "labels", "label_offsets"):
                load[name] = np.load(self.cache / f"{name}.npy")
            self._arrays = load
        return self._arrays

    def _rows(self, epoch: int, consumer: int, consumers: int) -> np.ndarray:
        blocks = np.arange(0, self.count, self.block)
        if self.shuffle:
            blocks = blocks[np.random.default_rng(self.seed + epoch).permutation(len(blocks))]
        mine = blocks[consumer::consumers]
        if not len(mine):
            return np.zeros(0, np.int64)
        rows = np.concatenate([np.arange(b, min(b + self.block, self.count)) for b in mine])
        if self.shuffle:
            np.random.default_rng([self.seed, epoch, consumer]).shuffle(rows)
        return rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self._epoch
        self._epoch += 1
        rank, world = _resolve_dist(self.rank, self.world_size)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        consumers = world * workers
        rows = self._rows(epoch, rank * workers + worker, consumers)
        if self.balance_batch_size and world > 1:
            quota = _equal_batches_quota(lambda r, w: len(self._rows(epoch, r * workers + w, consumers)),
                                         rank, world, worker, workers, self.balance_batch_size)
            rows = rows[:quota]
        return self._generate(rows)

    def _generate(self, rows: np.ndarray) -> Iterator[dict[str, Any]]:
        a = self._open()
        for i in rows:
            y = np.zeros(self.num_classes, np.float32)
            y[a["labels"][a["label_offsets"][i] : a["label_offsets"][i + 1]]] = 1.0
            yield {
                "index": int(a["index"][i]),
                "video_id": a["video_id"][i].decode(),
                "rgb": torch.from_numpy(np.array(a["rgb"][i])),
                "audio": torch.from_numpy(np.array(a["audio"][i])),
                "labels": torch.from_numpy(y),
            }


# =============================================================================================
# YT8MDataModule: the LightningDataModule used by experiments/yt8m/*.yaml
# =============================================================================================
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
        check_records: records per split fully decoded by ``avlab data check`` (every shard's
            framing is scanned regardless).
        feature_cache: decode every split once into memory-mapped columns under the avlab cache
            folder (:func:`build_feature_cache`) and train/evaluate from those. Worth it for
            frame-level MF+STD, where decoding costs far more than the training step; the cache
            is keyed by the shards (path, size, mtime) and the feature settings.
    """

    task = "yt8m"

    def __init__(
        self,
        root: str | None = None,
        demo_size: str = "small",
        batch_size: int = 256,
        num_workers: int = 0,
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
        self.datasets: dict[str, YT8MRecordDataset | YT8MFeatureCacheDataset] = {}
        self._vocab: pd.DataFrame | None = None

    # ------------------------------------------------------------------ data
    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        """The yt8m demo (:func:`avlab.demo.yt8m.build_yt8m_demo`): both schemas + vocabulary.csv."""
        from avlab.demo.yt8m import build_yt8m_demo

        return build_yt8m_demo(out_dir, size=size)

    def pattern(self, split: str) -> str:
        """The shard glob of ``split`` (``train``, ``val``, ``test``) with ``{schema}`` filled in."""
        return self.patterns[split].replace("{schema}", self.schema)

    def shards(self, split: str) -> list[Path]:
        """Sorted shard paths of ``split``; raises :class:`DataError` naming the glob if none."""
        return resolve_split(self.dataset_root(), self.pattern(split))

    def make_dataset(self, paths: Sequence[Path], *, train: bool = False, source: str | None = None) -> YT8MRecordDataset:
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

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.feature_cache:
            # One process per node converts; the others wait at Lightning's barrier.
            for split in ("train", "val", "test"):
                records = self.make_dataset(self.shards(split), source=self.pattern(split))
                build_feature_cache(records, self._cache_path(records))

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ("train", "val", "test"))
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
                    cache, shuffle=train, seed=self.seed, balance_batch_size=self.batch_size if train else None
                )
            else:
                self.datasets[split] = records

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # workers keep their epoch counter (shuffling)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

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

        All shards' framing is scanned (headers and lengths); the first ``check_records``
        records of each split are fully decoded and validated (ids, label range, widths).
        """
        problems: list[str] = []
        try:
            root = self.dataset_root(build=self.uses_demo)
        except DataError as exc:
            return [str(exc)]
        for split in ("train", "val", "test"):
            try:
                paths = resolve_split(root, self.pattern(split))
            except DataError as exc:
                problems.append(str(exc))
                continue
            intact = []
            for path in paths:
                try:
                    count_records(path, verify_crc=self.verify_crc)
                    intact.append(path)
                except DataError as exc:
                    problems.append(str(exc))
            if not intact:
                continue
            ds = YT8MRecordDataset(intact, schema=self.schema, features=self.features, num_classes=self.num_classes,
                                   verify_crc=self.verify_crc, max_frames=self.max_frames)
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

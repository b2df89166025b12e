"""The YouTube-8M feature cache: every split decoded once into memory-mapped columns.

``data.feature_cache=true`` converts each split's shards with :func:`build_feature_cache` and then
trains and evaluates from :class:`YT8MFeatureCacheDataset`. Worth it for frame-level MF+STD, where
decoding 300 frames per video costs far more than the training step. With ``batch_size`` the
dataset reads whole batches (one indexed read of each column per batch) instead of assembling
examples one at a time in Python, and yields exactly the batches a ``DataLoader(batch_size=...)``
would collate from its per-example stream. With ``sparse_labels`` those batches carry each
example's classes (``label_offsets`` / ``label_classes``) instead of the dense multi-hot matrix,
and :func:`densify_labels` rebuilds it wherever the batch is (the DataModule's
``data.labels_on=device`` does so on the training device).

The cache folder's name is its provenance (:func:`feature_cache_key`): the shards' paths, sizes
and modification times, the feature settings and the format version, so changed shards or
settings never read stale rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, get_worker_info

from avlab.datamodules.yt8m.counts import cached_count
from avlab.datamodules.yt8m.records import YT8MRecordDataset
from avlab.datamodules.yt8m.schema import RECORD_KEY_SHIFT
from avlab.datamodules.yt8m.sharding import equal_batches_quota, resolve_dist
from avlab.errors import DataError
from avlab.features.cache import mark_used
from avlab.progress import progress_task

__all__ = [
    "FEATURE_CACHE_VERSION",
    "YT8MFeatureCacheDataset",
    "batch_as_is",
    "build_feature_cache",
    "densify_labels",
    "feature_cache_key",
]

FEATURE_CACHE_VERSION = 1


def feature_cache_key(dataset: YT8MRecordDataset) -> str:
    """Identity of a split's decoded features: the shards (path, size, mtime) and the settings."""
    sources = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in dataset.paths]
    ident = {
        "version": FEATURE_CACHE_VERSION,
        "sources": sources,
        "schema": dataset.schema,
        "features": dataset.features,
        "num_classes": dataset.num_classes,
        "max_frames": dataset.max_frames,
        "skip_corrupt": dataset.skip_corrupt,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def build_feature_cache(
    dataset: YT8MRecordDataset, out_dir: str | os.PathLike[str], *, progress: bool = True
) -> Path:
    """Decode every record of ``dataset`` once and store the model inputs column-wise.

    Writes ``out_dir/`` with ``rgb.npy`` / ``audio.npy`` (float32 ``[N, d]``, memory-mappable),
    ``labels.npy`` + ``label_offsets.npy`` (labels in CSR form, so storage does not grow with
    the vocabulary), ``index.npy`` (record keys), ``video_id.npy`` and ``meta.json``. Frame-level
    MF+STD is the main beneficiary: decoding 300 frames per video happens once instead of every
    epoch. The folder appears atomically (built under a temporary name, then renamed); an
    existing complete cache is returned as is. ``progress`` shows videos decoded so far
    (:mod:`avlab.progress`): on the full dataset this takes as long as an epoch of decoding.
    """
    out = Path(out_dir)
    if (out / "meta.json").is_file():
        return out
    # One reader over everything, whatever the DDP/worker context of the caller.
    src = dataset.whole_stream()
    capacity = sum(cached_count(p) for p in src.paths)  # upper bound: skipped records leave rows unused
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rgb = np.lib.format.open_memmap(
        tmp / "rgb.npy", mode="w+", dtype=np.float32, shape=(capacity, src.visual_dim)
    )
    audio = np.lib.format.open_memmap(
        tmp / "audio.npy", mode="w+", dtype=np.float32, shape=(capacity, src.audio_dim)
    )
    index = np.zeros(capacity, np.int64)
    ids: list[bytes] = []
    labels: list[np.ndarray] = []
    n = 0
    # The total is the record count, an upper bound when skip_corrupt drops damaged records.
    with progress_task(
        f"yt8m feature cache ({dataset.source or out.name})",
        total=capacity,
        unit="video",
        disable=not progress,
    ) as task:
        for n, sample in enumerate(src, start=1):
            rgb[n - 1] = sample["rgb"].numpy()
            audio[n - 1] = sample["audio"].numpy()
            index[n - 1] = sample["index"]
            ids.append(sample["video_id"].encode())
            labels.append(np.flatnonzero(sample["labels"].numpy()).astype(np.int32))
            task.advance()
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
        "version": FEATURE_CACHE_VERSION,
        "count": n,
        "schema": src.schema,
        "features": src.features,
        "num_classes": src.num_classes,
        "visual_dim": src.visual_dim,
        "audio_dim": src.audio_dim,
        "skipped_corrupt": src.skipped_corrupt,
        "sources": [str(p) for p in src.paths],
        # What the key is made of, so `avlab cache prune` can tell when a shard was rewritten.
        "source_stats": [
            {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for p in src.paths
        ],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks a complete cache
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def batch_as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The ``collate_fn`` for batches that :class:`YT8MFeatureCacheDataset` already made.

    DataLoader's default (``default_convert``) would walk every ``video_id`` string through
    its type checks: measured, that took two thirds of the loader's time.
    """
    return batch


def densify_labels(batch: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Replace a batch's sparse labels (``label_offsets`` int64 ``[n + 1]``, ``label_classes``
    int64 ``[nnz]``: example ``i`` has classes ``label_classes[offsets[i]:offsets[i + 1]]``) by
    the dense float32 multi-hot ``labels`` ``[n, num_classes]``, built on the device the sparse
    tensors are on, with one ``index_put_``. Every other key is left as it is, and ``labels`` ends
    up last, where :meth:`YT8MFeatureCacheDataset.read_rows` puts it without ``sparse_labels``.

    Sync-free on a GPU: ``repeat_interleave`` is told its output size (the classes' count, known
    from the tensor's shape), so nothing waits for the device.
    """
    offsets, classes = batch.pop("label_offsets"), batch.pop("label_classes")
    n = offsets.numel() - 1
    labels = torch.zeros((n, num_classes), dtype=torch.float32, device=classes.device)
    rows = torch.repeat_interleave(
        torch.arange(n, device=classes.device), torch.diff(offsets), output_size=classes.numel()
    )
    labels.index_put_((rows, classes), torch.ones((), dtype=torch.float32, device=classes.device))
    batch["labels"] = labels
    return batch


class _BatchBuffers:
    """Output arrays of earlier batches, reused once nothing refers to them any more.

    A fresh 256 x 3862 float32 label matrix is 4 MB of new pages per batch, and faulting them in
    cost more than the rest of the batch (measured: the loader ran 1.4x faster with reuse). An
    entry is reused only when this pool holds the sole reference to each of its arrays. Tensors
    made by ``torch.from_numpy`` keep their array referenced, and so do their views, ``.numpy()``
    and autograd's saved tensors, so a batch that anyone still holds is never written to.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        # (rgb, audio, labels), and the flat positions of the labels' ones (to clear them).
        self._pool: list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = []

    @staticmethod
    def _unused(entry: tuple[tuple[np.ndarray, ...], np.ndarray]) -> bool:
        # entry[1] is referenced by the pool alone, and counted the same way as the arrays, so
        # the comparison holds whatever an interpreter version adds to getrefcount.
        alone = sys.getrefcount(entry[1])
        return all(sys.getrefcount(entry[0][j]) <= alone for j in range(len(entry[0])))

    def get(self, n: int, visual_dim: int, audio_dim: int, num_classes: int) -> tuple[np.ndarray, ...]:
        """``rgb`` and ``audio`` (contents undefined) and all-zero ``labels`` for ``n`` rows
        (``num_classes=0``: an empty ``[n, 0]`` matrix, for batches that carry sparse labels)."""
        for k, entry in enumerate(self._pool):
            if entry[0][2].shape == (n, num_classes) and self._unused(entry):
                (rgb, audio, labels), ones = self._pool.pop(k)
                labels.reshape(-1)[ones] = 0.0
                return rgb, audio, labels
        return (
            np.empty((n, visual_dim), np.float32),
            np.empty((n, audio_dim), np.float32),
            np.zeros((n, num_classes), np.float32),
        )

    def put(self, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], ones: np.ndarray) -> None:
        """Offer a batch's arrays for reuse (``ones``: flat positions of the labels' ones)."""
        self._pool.append((arrays, ones))
        if len(self._pool) > self.keep:
            self._pool.pop(0)


class YT8MFeatureCacheDataset(IterableDataset):
    """Samples from a :func:`build_feature_cache` folder, with the same output and the same
    exactly-once sharding over (DDP rank × DataLoader worker) as :class:`YT8MRecordDataset`.

    Rows are dealt to consumers in blocks of ``block`` consecutive rows (round-robin), so each
    consumer reads mostly sequential memory; with ``shuffle`` the block order is permuted per
    epoch (same permutation everywhere) and rows are shuffled inside each consumer's share.

    ``batch_size=None`` yields one example at a time. With ``batch_size=B`` it yields batches:
    consecutive runs of ``B`` rows of each consumer's share (the last one shorter), each read at
    once by :meth:`read_rows`. They equal, tensor for tensor, what ``DataLoader(per-example
    dataset, batch_size=B)`` collates from the same share, so use them with
    ``DataLoader(dataset, batch_size=None, collate_fn=batch_as_is)``.

    ``sparse_labels=True`` (needs ``batch_size``) leaves the dense ``labels`` out of the batches
    and carries ``label_offsets`` / ``label_classes`` instead (see :meth:`read_rows`): a 3862-wide
    float32 label matrix is 3.4x the bytes of the video-level features, almost all zeros.
    :func:`densify_labels` turns such a batch into the dense one, equal tensor for tensor.
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
        batch_size: int | None = None,
        sparse_labels: bool = False,
    ) -> None:
        super().__init__()
        self.cache = Path(cache)
        meta_path = self.cache / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.cache} is not a complete YouTube-8M feature cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        mark_used(meta_path)
        self.count = int(self.meta["count"])
        self.num_classes = int(self.meta["num_classes"])
        self.visual_dim, self.audio_dim = int(self.meta["visual_dim"]), int(self.meta["audio_dim"])
        self.shuffle, self.seed, self.block = shuffle, int(seed), int(block)
        self.rank, self.world_size, self.balance_batch_size = rank, world_size, balance_batch_size
        self.skipped_corrupt = int(self.meta.get("skipped_corrupt", 0))
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None; found {batch_size}")
        self.batch_size = batch_size
        if sparse_labels and batch_size is None:
            raise ValueError("sparse_labels needs batch_size: single examples always carry dense labels")
        self.sparse_labels = bool(sparse_labels)
        self._epoch = 0
        self._arrays: dict[str, np.ndarray] | None = None
        self._buffers = _BatchBuffers()

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shuffling."""
        self._epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memmaps are reopened in each worker process
        state["_buffers"] = _BatchBuffers()
        return state

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            # Plain ndarray views of the maps: np.memmap's subclass hooks cost more than the copy
            # of a 256-row batch.
            load = {
                name: np.load(self.cache / f"{name}.npy", mmap_mode="r").view(np.ndarray)
                for name in ("rgb", "audio")
            }
            for name in ("index", "video_id", "labels", "label_offsets"):
                load[name] = np.load(self.cache / f"{name}.npy")
            self._arrays = load
        return self._arrays

    def table(self) -> pd.DataFrame:
        """``video_id``, ``labels`` (space-separated class indices), ``shard``, ``record`` of every
        cached video, indexed by its record key (the ``index`` of its samples)."""
        a = self._open()
        index = np.asarray(a["index"], np.int64)
        offsets = a["label_offsets"]
        labels = [" ".join(map(str, a["labels"][offsets[i] : offsets[i + 1]])) for i in range(self.count)]
        return pd.DataFrame(
            {
                "video_id": [v.decode() for v in a["video_id"]],
                "labels": labels,
                "shard": index >> RECORD_KEY_SHIFT,
                "record": index & ((1 << RECORD_KEY_SHIFT) - 1),
            },
            index=pd.Index(index, name="index"),
        )

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
        rank, world = resolve_dist(self.rank, self.world_size)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        consumers = world * workers
        rows = self._rows(epoch, rank * workers + worker, consumers)
        if self.balance_batch_size and world > 1:
            quota = equal_batches_quota(
                lambda r, w: len(self._rows(epoch, r * workers + w, consumers)),
                rank,
                world,
                worker,
                workers,
                self.balance_batch_size,
            )
            rows = rows[:quota]
        if self.batch_size is not None:
            return self._generate_batches(rows, self.batch_size)
        return self._generate(rows)

    def _generate_batches(self, rows: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
        for start in range(0, len(rows), batch_size):
            yield self.read_rows(rows[start : start + batch_size])

    def read_rows(self, rows: np.ndarray) -> dict[str, Any]:
        """The examples at cache ``rows`` (in that order) as one batch: what the default collate
        makes of the per-example samples (``index`` int64, ``video_id`` a list of str, ``rgb`` /
        ``audio`` / ``labels`` float32 ``[len(rows), d]``). With ``sparse_labels``, ``labels`` is
        replaced by ``label_offsets`` int64 ``[len(rows) + 1]`` and ``label_classes`` int64
        ``[nnz]`` (the CSR form of the same matrix; :func:`densify_labels` expands it).

        Each column is read once: a slice when the rows are consecutive (unshuffled reading), else
        one ``np.take`` in the requested order. Reading in ascending order and then reordering was
        measured 1.4x slower: it copies twice, and a shuffled batch's rows are spread over the
        consumer's whole share, so sorting them gains no locality. Output memory of batches that
        nobody holds any more is reused (:class:`_BatchBuffers`).
        """
        a = self._open()
        rows = np.asarray(rows, np.int64)
        n = len(rows)
        width = 0 if self.sparse_labels else self.num_classes
        rgb, audio, y = self._buffers.get(n, self.visual_dim, self.audio_dim, width)
        if n and rows[-1] - rows[0] == n - 1 and (n == 1 or bool(np.all(np.diff(rows) == 1))):
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            np.copyto(rgb, a["rgb"][lo:hi])
            np.copyto(audio, a["audio"][lo:hi])
        else:
            # mode="clip" writes straight into `out` (the default "raise" buffers it); the rows
            # are in range by construction.
            np.take(a["rgb"], rows, axis=0, out=rgb, mode="clip")
            np.take(a["audio"], rows, axis=0, out=audio, mode="clip")
        # Multi-hot labels from the CSR columns without a Python loop: every label position of
        # every requested row, offset by that row's place in the batch.
        offsets = a["label_offsets"]
        starts, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
        ends = np.cumsum(counts)
        positions = np.arange(int(ends[-1]) if n else 0) + np.repeat(starts - (ends - counts), counts)
        classes = a["labels"][positions]
        batch: dict[str, Any] = {
            "index": torch.from_numpy(a["index"][rows].astype(np.int64)),
            "video_id": [v.decode() for v in a["video_id"][rows]],
            "rgb": torch.from_numpy(rgb),
            "audio": torch.from_numpy(audio),
        }
        if self.sparse_labels:
            self._buffers.put((rgb, audio, y), np.zeros(0, np.int64))
            label_offsets = np.zeros(n + 1, np.int64)
            label_offsets[1:] = ends
            batch["label_offsets"] = torch.from_numpy(label_offsets)
            batch["label_classes"] = torch.from_numpy(classes.astype(np.int64))
            return batch
        ones = np.repeat(np.arange(n) * self.num_classes, counts) + classes
        y.reshape(-1)[ones] = 1.0
        self._buffers.put((rgb, audio, y), ones)
        batch["labels"] = torch.from_numpy(y)
        return batch

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

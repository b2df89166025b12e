"""Benchmark: the yt8m DataModule's train loader over the memory-mapped feature cache.

``data.feature_cache=true`` stores every split as memory-mapped columns; the cached dataset reads
a whole batch per column read (``YT8MFeatureCacheDataset.read_rows``). Measured, in examples/s
(median of ``repeats`` interleaved rounds after one warm-up epoch, files in the page cache, one process):

* ``datamodule_train_cached`` — ``YT8MDataModule(feature_cache=True).train_dataloader()``: the
  shuffled training batches that Lightning receives (``num_workers=0``), with the dense
  ``[256, 3862]`` float32 labels built in the loader (``data.labels_on=loader``, the default);
* ``datamodule_train_cached_labels_on_device`` — the same loader with ``data.labels_on=device``:
  its batches carry each video's classes (``label_offsets`` / ``label_classes``) and the
  DataModule's ``on_after_batch_transfer`` builds the dense labels on the training device, so
  that step is not part of the loader (on a GPU it is one ``index_put_`` on the device);
* ``labels_on_device_densified_on_cpu`` — that loader plus ``densify_labels`` on the CPU: what
  ``labels_on=device`` costs when the training device is the CPU itself;
* ``to_cuda_labels_on_loader`` / ``to_cuda_labels_on_device`` — on a machine with CUDA only: each
  mode's train batches moved to the GPU as Lightning moves them (plain ``.to``; the loader does
  not pin memory) with, for ``device``, ``densify_labels`` there, synchronised per batch. This is
  where the dense mode's 4 MB of mostly-zero labels per batch cost a host-to-device copy;
* ``datamodule_val_cached`` — its validation loader (unshuffled: contiguous slices);
* ``per_example_cached`` — the same cache read one example at a time and collated by the
  DataLoader (how the cache was read before batched reading), for the speed-up;
* ``memmap_floor`` — contiguous ``[i : i + batch]`` row slices of the same ``rgb`` / ``audio``
  arrays copied into tensors: what reading the cache costs with no sampling, labels or ids;
* ``tensorflow_video_mf_batched256`` — TensorFlow's batched ``tf.io.parse_example`` on the same
  video-level shards, measured by ``bench/yt8m_reader.py``'s TensorFlow runner in the bench
  interpreter (``.venv-bench``); ``"not installed"`` without one.

Goal (``goal``): the cached train loader at ≥ 5 × TensorFlow's batched parse, or ≥ 0.5 × the
memmap floor, in the better of the two documented modes (``labels_on`` ``loader`` / ``device``);
``goal.mode`` names it, and ``vs_memmap_floor`` gives both modes' ratios.

The data is a generated video-level split (``videos`` training videos in 8 shards, 1–4 labels each
out of 3862, random features) in the official layout, so the DataModule reads it as it would the
real data. Usage: ``python bench/yt8m_loader.py [--videos 20000] [--repeats 5]``; prints one JSON
object. :func:`yt8m_loader_figures` is what ``bench/loaders.py`` imports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
BATCH = 256
#: The train loader's figure per documented ``data.labels_on`` mode.
MODES = {"loader": "datamodule_train_cached", "device": "datamodule_train_cached_labels_on_device"}


def _reader_bench() -> Any:
    """``bench/yt8m_reader.py`` as a module (its TensorFlow runner), however this file was imported."""
    spec = importlib.util.spec_from_file_location("_avlab_bench_yt8m_reader", BENCH / "yt8m_reader.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_split(root: Path, split: str, videos: int, shards: int, seed: int) -> list[Path]:
    from avlab.io.tf_example import encode_example
    from avlab.io.tfrecord import TFRecordWriter

    rng = np.random.default_rng(seed)
    (root / "video").mkdir(parents=True, exist_ok=True)
    paths = []
    for s, part in enumerate(np.array_split(np.arange(videos), shards)):
        path = root / "video" / f"{split}{s:04d}.tfrecord"
        rgb = rng.normal(size=(len(part), 1024)).astype(np.float32)
        audio = rng.normal(size=(len(part), 128)).astype(np.float32)
        with TFRecordWriter(path) as w:
            for j, v in enumerate(part):
                labels = rng.choice(3862, size=int(rng.integers(1, 5)), replace=False)
                w.write(
                    encode_example(
                        {
                            "id": [f"{split}{v:07d}".encode()],
                            "labels": ("int64", sorted(labels.tolist())),
                            "mean_rgb": rgb[j],
                            "mean_audio": audio[j],
                        }
                    )
                )
        paths.append(path)
    return paths


def _rates(
    readers: dict[str, tuple[Callable[[], Iterable[Any]], Callable[[Any], int]]], repeats: int
) -> dict[str, list[float]]:
    """Examples/s of each ``(make, count)`` reader per round, after one warm-up pass of each.

    Readers alternate within every round, so load from other processes hits all of them alike.
    """
    for make, count in readers.values():
        sum(count(b) for b in make())
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, (make, count) in readers.items():
            t0 = time.perf_counter()
            n = sum(count(b) for b in make())
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def yt8m_loader_figures(
    work_dir: Path, *, videos: int = 20000, repeats: int = 5, tf_python: str | None = None, cpu: int = -1
) -> dict:
    """Examples/s of the cached yt8m train loader, the memmap floor and TensorFlow's batched parse.

    ``work_dir/yt8m_loader`` receives the generated shards and the cache. ``tf_python`` is the interpreter
    with TensorFlow (default: ``.venv-bench`` if present); ``cpu`` pins its process (-1: no pinning).
    """
    import torch
    from torch.utils.data import DataLoader

    from avlab.datamodules.yt8m import YT8MDataModule, YT8MFeatureCacheDataset
    from avlab.datamodules.yt8m.feature_cache import densify_labels
    from avlab.progress import set_quiet

    work_dir = Path(work_dir) / "yt8m_loader"  # its own folder: bench/loaders.py shares work_dir
    root = work_dir / "data"
    train = _write_split(root, "train", videos, 8, seed=0)
    _write_split(root, "validate", 4096, 1, seed=1)
    _write_split(root, "test", 512, 1, seed=2)

    was_quiet = os.environ.get("AVLAB_QUIET")
    set_quiet(True)  # a progress line would be timed too
    try:
        with _env("AVLAB_CACHE", str(work_dir / "cache")):
            dm = YT8MDataModule(root=str(root), feature_cache=True, batch_size=BATCH, vocabulary=None)
            t0 = time.perf_counter()
            dm.extract_features(progress=False)
            build_s = time.perf_counter() - t0
            dm.setup("fit")
            cached = dm.datasets["train"]
            assert isinstance(cached, YT8MFeatureCacheDataset)
            rgb = np.load(cached.cache / "rgb.npy", mmap_mode="r")
            audio = np.load(cached.cache / "audio.npy", mmap_mode="r")

            def floor() -> Iterator[int]:
                for start in range(0, cached.count, BATCH):
                    a = torch.from_numpy(np.array(rgb[start : start + BATCH]))
                    b = torch.from_numpy(np.array(audio[start : start + BATCH]))
                    yield min(len(a), len(b))

            per_example = YT8MFeatureCacheDataset(
                cached.cache, shuffle=True, seed=dm.seed, balance_batch_size=BATCH
            )
            loader = dm.train_dataloader()  # one loader over epochs, as Lightning uses it
            val_loader = dm.val_dataloader()
            # Same cache (same shards and settings), labels left sparse for the device.
            device_dm = YT8MDataModule(
                root=str(root), feature_cache=True, batch_size=BATCH, vocabulary=None, labels_on="device"
            )
            device_loader = device_dm.train_dataloader()
            densified_loader = device_dm.train_dataloader()
            n_batch: Callable[[Any], int] = lambda batch: len(batch["video_id"])
            n_dense: Callable[[Any], int] = lambda batch: len(
                densify_labels(batch, device_dm.num_classes)["labels"]
            )
            readers: dict[str, tuple[Callable[[], Iterable[Any]], Callable[[Any], int]]] = {}
            if torch.cuda.is_available():
                cuda_loader, cuda_device_loader = dm.train_dataloader(), device_dm.train_dataloader()

                def to_cuda(batch: dict[str, Any], densify: bool) -> int:
                    moved = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    if densify:
                        moved = densify_labels(moved, device_dm.num_classes)
                    torch.cuda.synchronize()  # the copy and the densify are part of the step's input
                    return len(moved["labels"])

                readers["to_cuda_labels_on_loader"] = (lambda: cuda_loader, lambda b: to_cuda(b, False))
                readers["to_cuda_labels_on_device"] = (lambda: cuda_device_loader, lambda b: to_cuda(b, True))
            rounds = _rates(
                {
                    **readers,
                    "datamodule_train_cached": (lambda: loader, n_batch),
                    "datamodule_train_cached_labels_on_device": (lambda: device_loader, n_batch),
                    "labels_on_device_densified_on_cpu": (lambda: densified_loader, n_dense),
                    "datamodule_val_cached": (lambda: val_loader, n_batch),
                    "per_example_cached": (lambda: DataLoader(per_example, batch_size=BATCH), n_batch),
                    "memmap_floor": (floor, int),
                },
                repeats,
            )
            rates = {name: round(statistics.median(v), 1) for name, v in rounds.items()}
    finally:
        if was_quiet is None:
            set_quiet(False)
        else:
            os.environ["AVLAB_QUIET"] = was_quiet

    figures: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}",
        "data": f"generated video-level split: {videos} train videos in 8 shards, 1-4 labels of 3862",
        "unit": f"examples/s, batch {BATCH}, one process (num_workers=0), median of {repeats} interleaved "
        "rounds (one epoch of each reader per round) after a warm-up epoch, files in the page cache",
        "feature_cache_build_s": round(build_s, 2),
        **rates,
        "batched_vs_per_example": round(rates["datamodule_train_cached"] / rates["per_example_cached"], 2),
        **({} if torch.cuda.is_available() else {"to_cuda": "not measured: no CUDA device"}),
        "vs_memmap_floor": {
            mode: round(rates[name] / rates["memmap_floor"], 2) for mode, name in MODES.items()
        },
        "rounds": {name: [round(x, 1) for x in v] for name, v in rounds.items()},
    }

    reader = _reader_bench()
    python = reader._tf_python(tf_python)
    tf_rate = None
    if python is None:
        figures["tensorflow_video_mf_batched256"] = (
            "not installed (create .venv-bench with tensorflow-cpu, or pass --tf-python)"
        )
    else:
        job = {
            "name": "video_mf_batched256",
            "schema": "video",
            "features": "mf",
            "paths": [str(p) for p in train],
            "batched": BATCH,
        }
        try:
            out = reader._run_tf(python, [job], repeats, cpu, work_dir)
            tf_rate = round(statistics.median(out["jobs"]["video_mf_batched256"]["rates"]), 1)
            figures["tensorflow_version"] = out["tensorflow_version"]
            figures["tensorflow_video_mf_batched256"] = tf_rate
            figures["vs_tensorflow_batched256"] = {
                mode: round(rates[name] / tf_rate, 2) for mode, name in MODES.items()
            }
        except Exception as exc:  # noqa: BLE001 - a missing/broken TF must not lose avlab's figures
            figures["tensorflow_video_mf_batched256"] = f"failed: {exc}"
    # The goal is judged on the faster documented mode; `mode` says which one that is.
    best = max(MODES, key=lambda mode: rates[MODES[mode]])
    figures["goal"] = {
        "rule": "train loader >= 5 x TensorFlow batched parse_example, or >= 0.5 x memmap floor, "
        "in the faster of data.labels_on=loader / device",
        "mode": f"labels_on={best}",
        "ge_5x_tensorflow_batched": None
        if tf_rate is None
        else figures["vs_tensorflow_batched256"][best] >= 5.0,
        "ge_half_memmap_floor": figures["vs_memmap_floor"][best] >= 0.5,
    }
    figures["goal"]["met"] = bool(figures["goal"]["ge_5x_tensorflow_batched"]) or bool(
        figures["goal"]["ge_half_memmap_floor"]
    )
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20000, help="training videos to generate")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (one epoch of each reader)")
    ap.add_argument("--tf-python", default=None, help="interpreter with TensorFlow (default: .venv-bench)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU for the TensorFlow process; -1: no pinning")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="avlab-bench-yt8m-loader-") as work:
        figures = yt8m_loader_figures(
            Path(work), videos=args.videos, repeats=args.repeats, tf_python=args.tf_python, cpu=args.cpu
        )
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: avlab's YouTube-8M TFRecord reader, side by side with other readers in one run.

Measured (examples per second, single process, after one warm-up pass so the files are in
the page cache):

* ``avlab_framing_crc``   — TFRecord framing + both CRC checks only (``iter_records``);
* ``avlab_video_mf``      — the dataset on video-level shards: samples with multi-hot labels;
* ``avlab_frame_mf`` / ``avlab_frame_mf_std`` — the dataset on frame-level shards (decode the
  uint8 frames, dequantise, mean / mean+std). Measured on the demo shards (6–16 frames per
  video) *and* on a generated shard with 300 frames per video, the real data's maximum, since
  frame-level cost grows with the frame count;
* ``pypi_tfrecord_*``     — the PyPI ``tfrecord`` package's loader (no CRC checks) producing the
  same features, as a TensorFlow-free point of comparison;
* ``avlab_parse_video`` / ``example_pb2_parse_video`` — framing + protobuf decoding only, the
  hand-rolled parser vs ``example_pb2`` (upb) with numpy conversion (the choice the parser is
  based on); ``example_pb2_video_mf`` builds full samples from the upb parse;
* ``feature_cache_*``     — the one-time conversion to memory-mapped columns
  (``data.feature_cache=true``): its build time per video, and the read rate afterwards;
* ``tensorflow_*``        — ``tf.data.TFRecordDataset`` + ``tf.io.parse_single_example`` when
  TensorFlow is importable; otherwise the JSON says ``"tensorflow": "not installed"``.

Usage: ``python bench/yt8m_reader.py [--repeats 3] [--demo-size small]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np


def _rate(fn: Callable[[], Iterable[object]], repeats: int) -> float:
    """Median examples/s of ``fn()`` over ``repeats`` passes, after one warm-up pass."""
    sum(1 for _ in fn())
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(1 for _ in fn())
        rates.append(n / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


def _rates_interleaved(fns: dict[str, Callable[[], Iterable[object]]], repeats: int) -> dict[str, float]:
    """Like :func:`_rate` for several readers, alternating them so machine noise hits all alike."""
    for fn in fns.values():
        sum(1 for _ in fn())
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            n = sum(1 for _ in fn())
            rates[name].append(n / (time.perf_counter() - t0))
    return {k: round(statistics.median(v), 1) for k, v in rates.items()}


def _long_frame_shard(folder: Path, videos: int, frames: int) -> Path:
    from avlab.io.tfrecord import TFRecordWriter, encode_sequence_example

    rng = np.random.default_rng(0)
    path = folder / "train0000.tfrecord"
    with TFRecordWriter(path) as w:
        for i in range(videos):
            q_rgb = rng.integers(0, 256, (frames, 1024), dtype=np.uint8)
            q_aud = rng.integers(0, 256, (frames, 128), dtype=np.uint8)
            w.write(encode_sequence_example({"id": [f"v{i}".encode()], "labels": [1, 2, 3]}, {"rgb": q_rgb, "audio": q_aud}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-size", default="small", choices=["tiny", "small"])
    ap.add_argument("--long-videos", type=int, default=200, help="videos in the 300-frame shard")
    args = ap.parse_args()

    from avlab.datamodules.yt8m import YT8MFeatureCacheDataset, YT8MRecordDataset, build_feature_cache, resolve_split
    from avlab.demo.yt8m import build_yt8m_demo
    from avlab.io.tfrecord import iter_records, parse_example

    work = Path(tempfile.mkdtemp(prefix="avlab-bench-yt8m-"))
    demo = build_yt8m_demo(work / "demo", size=args.demo_size)
    video = resolve_split(demo, "video/train*.tfrecord")
    frame = resolve_split(demo, "frame/train*.tfrecord")
    long_shard = _long_frame_shard(work, args.long_videos, 300)
    r = args.repeats

    def ds(paths: list[Path], schema: str, features: str = "mf") -> Callable[[], Iterable[object]]:
        return lambda: YT8MRecordDataset(paths, schema=schema, features=features, num_classes=3862)

    def framing(paths: list[Path]) -> Iterable[object]:
        for p in paths:
            yield from iter_records(p)

    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "data": {
            "demo": f"avlab demo '{args.demo_size}' train split: {len(video)} video-level + {len(frame)} frame-level shards, "
            "6-16 frames per video",
            "long_frames": f"{args.long_videos} frame-level videos x 300 frames (random uint8)",
        },
        "unit": "examples/s, single process, median of repeats, files in page cache",
        "avlab_framing_crc": _rate(lambda: framing(video), r),
        "avlab_video_mf": _rate(ds(video, "video"), r),
        "avlab_frame_mf": _rate(ds(frame, "frame"), r),
        "avlab_frame_mf_std": _rate(ds(frame, "frame", "mf_std"), r),
        "avlab_frame300_mf": _rate(ds([long_shard], "frame"), r),
        "avlab_frame300_mf_std": _rate(ds([long_shard], "frame", "mf_std"), r),
    }

    def parse_only() -> Iterable[object]:
        for _, data in framing(video):
            yield parse_example(data)

    parsers: dict[str, Callable[[], Iterable[object]]] = {"avlab_parse_video": parse_only}

    # --- one-time conversion to memory-mapped columns, then reading from it
    for name, paths, schema, features in (("video_mf", video, "video", "mf"), ("frame300_mf_std", [long_shard], "frame", "mf_std")):
        records = YT8MRecordDataset(paths, schema=schema, features=features, num_classes=3862)
        t0 = time.perf_counter()
        cache = build_feature_cache(records, work / f"cache_{name}")
        n = YT8MFeatureCacheDataset(cache).count
        results[f"feature_cache_build_{name}"] = round(n / (time.perf_counter() - t0), 1)
        results[f"feature_cache_read_{name}"] = _rate(lambda c=cache: YT8MFeatureCacheDataset(c), r)

    # --- PyPI tfrecord (vahidk/tfrecord): no CRC checks; same outputs built in a transform
    try:
        import tfrecord

        def pypi_video() -> Iterable[object]:
            for p in video:
                for rec in tfrecord.tfrecord_loader(str(p), None, {"id": "byte", "labels": "int", "mean_rgb": "float", "mean_audio": "float"}):
                    y = np.zeros(3862, np.float32)
                    y[rec["labels"]] = 1
                    yield rec["mean_rgb"], rec["mean_audio"], y

        def pypi_frame(paths: list[Path], std: bool) -> Callable[[], Iterable[object]]:
            def run() -> Iterable[object]:
                for p in paths:
                    for ctx, seq in tfrecord.tfrecord_loader(str(p), None, {"id": "byte", "labels": "int"}, sequence_description={"rgb": "byte", "audio": "byte"}):
                        out = []
                        for key in ("rgb", "audio"):
                            q = np.stack([np.frombuffer(bytes(f), np.uint8) for f in seq[key]]).astype(np.float64)
                            x = q * (4 / 255) + (4 / 512 - 2)
                            out.append(np.concatenate([x.mean(0), x.std(0)]) if std else x.mean(0))
                        yield out
            return run

        results["pypi_tfrecord_version"] = getattr(tfrecord, "__version__", "unknown")
        results["pypi_tfrecord_video_mf"] = _rate(pypi_video, r)
        results["pypi_tfrecord_frame300_mf"] = _rate(pypi_frame([long_shard], False), r)
        results["pypi_tfrecord_frame300_mf_std"] = _rate(pypi_frame([long_shard], True), r)

        from tfrecord import example_pb2

        def pb2_video() -> Iterable[object]:
            for _, data in framing(video):
                ex = example_pb2.Example()
                ex.ParseFromString(data)
                f = ex.features.feature
                y = np.zeros(3862, np.float32)
                y[list(f["labels"].int64_list.value)] = 1
                yield np.array(f["mean_rgb"].float_list.value, np.float32), np.array(f["mean_audio"].float_list.value, np.float32), y

        results["example_pb2_video_mf"] = _rate(pb2_video, r)

        def pb2_parse() -> Iterable[object]:
            for _, data in framing(video):
                ex = example_pb2.Example()
                ex.ParseFromString(data)
                f = ex.features.feature
                yield (f["id"].bytes_list.value[0], list(f["labels"].int64_list.value),
                       np.array(f["mean_rgb"].float_list.value, np.float32), np.array(f["mean_audio"].float_list.value, np.float32))

        parsers["example_pb2_parse_video"] = pb2_parse
    except ImportError:
        results["pypi_tfrecord"] = "not installed"

    results.update(_rates_interleaved(parsers, max(r, 5)))

    # --- TensorFlow, only if it is importable (never installed by avlab)
    try:
        import tensorflow as tf  # type: ignore[import-not-found]

        spec = {
            "id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64),
            "mean_rgb": tf.io.FixedLenFeature([1024], tf.float32),
            "mean_audio": tf.io.FixedLenFeature([128], tf.float32),
        }

        def tf_video() -> Iterable[object]:
            dataset = tf.data.TFRecordDataset([str(p) for p in video]).map(lambda s: tf.io.parse_single_example(s, spec))
            return dataset.as_numpy_iterator()

        results["tensorflow_version"] = tf.__version__
        results["tensorflow_video_mf"] = _rate(tf_video, r)
    except ImportError:
        results["tensorflow"] = "not installed"

    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

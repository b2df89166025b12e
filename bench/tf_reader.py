"""TensorFlow's reader of YouTube-8M TFRecords, as the reference point for ``bench/yt8m_reader.py``.

Standalone: run it with the bench environment's interpreter (TensorFlow is **not** an avlab
dependency and is installed only in ``.venv-bench``)::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install tensorflow-cpu numpy
    taskset -c 0 .venv-bench/bin/python bench/tf_reader.py --schema frame --features mf_std SHARD...

What it measures: ``tf.data.TFRecordDataset`` over the shards, ``.map()`` of a per-record parse
(``tf.io.parse_single_example`` for video-level ``Example`` records,
``tf.io.parse_single_sequence_example`` for frame-level ``SequenceExample`` records) that builds
the same model inputs avlab's ``YT8MRecordDataset`` yields:

* ``rgb`` / ``audio``: video level — ``mean_rgb[1024]`` / ``mean_audio[128]``; frame level —
  ``tf.io.decode_raw`` of the per-second uint8 bytes, reshaped to ``[T, d]``, dequantised as the
  starter code's ``utils.Dequantize`` (``q * 4/255 + 4/512 - 2``, float32), then the mean over
  frames (``mf``) or mean and population std concatenated (``mf_std``: ``tf.math.reduce_std``);
* ``labels``: multi-hot float32 ``[num_classes]`` (the starter code's ``sparse_to_dense``), and
  the ``id`` bytes.

Examples are pulled one at a time through ``as_numpy_iterator()`` (numpy arrays, as avlab yields
tensors per sample). ``--batched`` adds the starter code's video-level variant: ``.batch(B)`` then
``tf.io.parse_example`` on the whole batch (TensorFlow's fastest path; reported separately).

One core: TensorFlow's intra-op and inter-op pools are set to one thread, the tf.data pipeline
gets a private thread pool of one thread and ``max_intra_op_parallelism=1``, no
``num_parallel_calls``/AUTOTUNE, and tf.data's automatic map parallelisation and prefetch
injection are turned off. The caller additionally pins the process with ``taskset -c 0``.

Each job is timed over ``--repeats`` full passes after one warm-up pass (files in the page
cache); prints one JSON object: ``{"tensorflow_version", "jobs": {name: {"examples",
"examples_per_s" (median), "rates"}}}``.

Several jobs in one process: ``--jobs FILE`` with a JSON list of ``{"name", "schema",
"features", "paths", ["batched"]}`` (that is how ``bench/yt8m_reader.py`` calls it, so the
TensorFlow import is paid once per round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RGB_DIM, AUDIO_DIM = 1024, 128
MAX_Q, MIN_Q = 2.0, -2.0
Q_SCALE = (MAX_Q - MIN_Q) / 255.0
Q_BIAS = (MAX_Q - MIN_Q) / 512.0 + MIN_Q


def _configure_one_thread(tf):
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
    opts.autotune.enabled = False
    opts.experimental_optimization.map_parallelization = False
    opts.experimental_optimization.inject_prefetch = False
    return opts


def make_dataset(
    tf,
    opts,
    paths: list[str],
    schema: str,
    features: str,
    num_classes: int,
    batched: int = 0,
):
    """The ``tf.data`` pipeline of one job (see the module docstring)."""

    def multi_hot(labels):
        # starter code: tf.sparse_to_dense(labels.values, (num_classes,), 1, validate_indices=False)
        idx = tf.expand_dims(labels.values, 1)
        return tf.scatter_nd(idx, tf.ones_like(labels.values, tf.float32), [num_classes])

    ds = tf.data.TFRecordDataset(paths)
    if schema == "video":
        spec = {
            "id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64),
            "mean_rgb": tf.io.FixedLenFeature([RGB_DIM], tf.float32),
            "mean_audio": tf.io.FixedLenFeature([AUDIO_DIM], tf.float32),
        }
        if batched:

            def parse_batch(serialized):
                f = tf.io.parse_example(serialized, spec)
                lab = f["labels"]
                y = tf.sparse.to_dense(
                    tf.SparseTensor(
                        lab.indices,
                        tf.ones_like(lab.values, tf.float32),
                        [tf.shape(serialized)[0], num_classes],
                    ),
                    validate_indices=False,
                )
                return {"id": f["id"], "rgb": f["mean_rgb"], "audio": f["mean_audio"], "labels": y}

            ds = ds.batch(batched).map(parse_batch)
        else:

            def parse(serialized):
                f = tf.io.parse_single_example(serialized, spec)
                return {
                    "id": f["id"],
                    "rgb": f["mean_rgb"],
                    "audio": f["mean_audio"],
                    "labels": multi_hot(f["labels"]),
                }

            ds = ds.map(parse)
    else:
        context = {"id": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}
        sequence = {
            "rgb": tf.io.FixedLenSequenceFeature([], tf.string),
            "audio": tf.io.FixedLenSequenceFeature([], tf.string),
        }

        def pool(raw, width):
            # starter code readers.get_video_matrix + utils.Dequantize, then mean (and std) over frames
            q = tf.reshape(tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.float32), [-1, width])
            x = q * Q_SCALE + Q_BIAS
            mean = tf.reduce_mean(x, 0)
            if features == "mf":
                return mean
            return tf.concat([mean, tf.math.reduce_std(x, 0)], 0)

        def parse_seq(serialized):
            ctx, seq = tf.io.parse_single_sequence_example(
                serialized, context_features=context, sequence_features=sequence
            )
            return {
                "id": ctx["id"],
                "rgb": pool(seq["rgb"], RGB_DIM),
                "audio": pool(seq["audio"], AUDIO_DIM),
                "labels": multi_hot(ctx["labels"]),
            }

        ds = ds.map(parse_seq)
    return ds.with_options(opts)


def run_job(tf, opts, job: dict, repeats: int) -> dict:
    batched = int(job.get("batched", 0))
    ds = make_dataset(
        tf,
        opts,
        [str(p) for p in job["paths"]],
        job["schema"],
        job["features"],
        int(job.get("num_classes", 3862)),
        batched,
    )

    def one_pass() -> int:
        n = 0
        for item in ds.as_numpy_iterator():
            n += len(item["id"]) if batched else 1
        return n

    examples = one_pass()  # warm-up: page cache, graph tracing
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = one_pass()
        rates.append(n / (time.perf_counter() - t0))
    return {
        "examples": examples,
        "examples_per_s": round(statistics.median(rates), 1),
        "rates": [round(r, 1) for r in rates],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="TFRecord shards (single-job mode)")
    ap.add_argument("--schema", choices=["video", "frame"], default="video")
    ap.add_argument("--features", choices=["mf", "mf_std"], default="mf")
    ap.add_argument("--num-classes", type=int, default=3862)
    ap.add_argument(
        "--batched", type=int, default=0, help="video level: parse batches of this size (starter-code style)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", help="JSON file: list of {name, schema, features, paths[, batched]}")
    args = ap.parse_args()
    if not args.jobs and not args.paths and len(sys.argv) == 1:
        # `make bench` runs every bench/*.py without arguments: this one is a helper of
        # bench/yt8m_reader.py (which runs it in the TensorFlow interpreter), not a bench itself.
        print(json.dumps({"skipped": "helper of bench/yt8m_reader.py: give shard paths or --jobs FILE"}))
        return
    if args.jobs:
        with open(args.jobs) as fh:
            jobs = json.load(fh)
    elif args.paths:
        if args.schema == "video" and args.features == "mf_std":
            ap.error("mf_std needs frame-level records (--schema frame)")
        jobs = [
            {
                "name": f"{args.schema}_{args.features}"
                + (f"_batched{args.batched}" if args.batched else ""),
                "schema": args.schema,
                "features": args.features,
                "paths": args.paths,
                "num_classes": args.num_classes,
                "batched": args.batched,
            }
        ]
    else:
        ap.error("give shard paths or --jobs FILE")

    import tensorflow as tf

    opts = _configure_one_thread(tf)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out = {
        "tensorflow_version": tf.__version__,
        "python": sys.version.split()[0],
        "cpu_affinity": affinity,
        "threads": (
            "intra_op=1, inter_op=1, tf.data private pool=1, no num_parallel_calls/AUTOTUNE/injected prefetch"
        ),
        "jobs": {job["name"]: run_job(tf, opts, job, args.repeats) for job in jobs},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

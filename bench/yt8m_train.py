"""Benchmark: does avlab's YouTube-8M data pipeline starve training?

Trains ``YT8MModule`` with Attend-Fusion (``avlab.models.yt8m.AttendFusion``, 8 heads) for the
same number of optimizer steps, fed three ways, and reports training examples per second:

* ``memory``   — the same examples preloaded as tensors (``rgb``, ``audio``, multi-hot ``labels``)
  in a ``TensorDataset``; a ``DataLoader`` indexes it with whole shuffled batches of indices
  (``BatchSampler`` as sampler, ``batch_size=None``), so a batch costs one gather per tensor —
  the "tensors already in memory" reference;
* ``records_wN`` — the real pipeline: ``YT8MDataModule`` on the video-level TFRecord shards
  (``YT8MRecordDataset``: shuffled shard order, 2048-sample shuffle buffer, CRC checks, multi-hot
  labels, default collation) with ``num_workers`` N (0 and 1);
* ``cache_w0`` — the datamodule with ``feature_cache=true`` (memory-mapped columns built once,
  before timing), ``num_workers=0``.

Data: the avlab demo ``small`` train split, video-level (2400 videos, 8 shards; MF inputs
1024 + 128, 3862 classes); batch 256, so an epoch is 9 full batches + one of 96, identical for
every feed. Widths: ``hidden=128`` (the ``experiments/yt8m/_cpu.yaml`` profile) and a wider
``hidden=512`` (the paper's "2K" is 2048; ``--hidden 128 2048`` runs it, ~4x the time per step of
512 on CPU). Lightning ``Trainer`` on CPU with logger, checkpointing, progress bar, model summary,
validation and the sanity check off.

Threads: the model runs with ``torch.set_num_threads(--threads)``, default 1. On a small shared
machine (2 cores, other jobs running) two intra-op threads made a step up to 17x slower than one
(OpenMP threads waiting on each other while descheduled), which would measure the neighbours, not
the pipeline; with 1 thread the main process uses one core and a ``num_workers=1`` DataLoader
worker (1 thread, PyTorch's default in workers) the other.

Timing: a callback counts examples and takes the time between the end of step ``--warmup`` and
the end of the last step (so DataLoader worker start-up and first-batch effects are excluded,
but epoch restarts — iterator re-creation, shuffle-buffer refill — are included). Every
(width, feed) run is repeated ``--repeats`` times, interleaved (all feeds of a round, then the
next round) so load from other processes hits all feeds alike; the figure is the median.
``ratio_memory_over_<feed>`` = memory examples/s / feed examples/s: 1.0 means the data never
holds training up; the goal is ≤ 1.1.

Usage: ``python bench/yt8m_train.py [--steps 50] [--warmup 10] [--repeats 3] [--hidden 128 512]
[--threads 1]``.
Prints one JSON object.
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
import warnings
from pathlib import Path
from typing import Any

import torch


class _Throughput:
    """Lightning callback: examples/s between the end of step ``warmup`` and the end of the run."""

    def __init__(self, warmup: int) -> None:
        from lightning import Callback

        class _CB(Callback):
            def __init__(cb) -> None:
                cb.step, cb.examples, cb.t0, cb.t1 = 0, 0, None, None

            def on_train_batch_end(
                cb, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                cb.step += 1
                if cb.step == warmup:
                    cb.t0 = time.perf_counter()
                elif cb.step > warmup:
                    cb.examples += len(batch["labels"])
                    cb.t1 = time.perf_counter()

        self.cb = _CB()

    @property
    def rate(self) -> float:
        return self.cb.examples / (self.cb.t1 - self.cb.t0)


def _memory_loader(
    tensors: dict[str, torch.Tensor], batch_size: int, seed: int
) -> torch.utils.data.DataLoader:
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    keys = list(tensors)
    ds = TensorDataset(*(tensors[k] for k in keys))
    gen = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(RandomSampler(ds, generator=gen), batch_size, drop_last=False)
    return DataLoader(ds, sampler=sampler, batch_size=None, collate_fn=lambda b: dict(zip(keys, b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per run (an epoch is 10 steps)")
    ap.add_argument("--warmup", type=int, default=10, help="steps excluded from the timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the training process")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--feeds", nargs="+", default=["memory", "records_w0", "records_w1", "cache_w0"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import lightning
    from lightning import Trainer

    from avlab.callbacks.data_wait import DataWait
    from avlab.datamodules.yt8m import YT8MDataModule, YT8MRecordDataset, resolve_split
    from avlab.demo.yt8m import build_yt8m_demo
    from avlab.lightningmodules.yt8m import YT8MModule
    from avlab.models.yt8m.attend_fusion import AttendFusion

    warnings.filterwarnings("ignore")  # Lightning's "few workers" / "no val loop" advice
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="avlab-bench-yt8m-train-"))
    os.environ["AVLAB_CACHE"] = str(work / "cache")  # feature cache of cache_w0 goes here
    demo = build_yt8m_demo(work / "demo", size="small")
    shards = resolve_split(demo, "video/train*.tfrecord")

    # The same examples, preloaded as tensors.
    samples = list(YT8MRecordDataset(shards, schema="video", features="mf", num_classes=3862))
    tensors = {k: torch.stack([s[k] for s in samples]) for k in ("rgb", "audio", "labels")}
    n_examples = len(samples)
    del samples

    def datamodule(workers: int, cache: bool) -> YT8MDataModule:
        return YT8MDataModule(
            root=str(demo),
            batch_size=args.batch_size,
            num_workers=workers,
            schema="video",
            features="mf",
            feature_cache=cache,
            seed=0,
        )

    if "cache_w0" in args.feeds:  # one-time conversion, outside the timing
        dm = datamodule(0, True)
        t0 = time.perf_counter()
        dm.prepare_data()
        cache_build_s = round(time.perf_counter() - t0, 2)
    else:
        cache_build_s = None

    def run(hidden: int, feed: str) -> float:
        torch.manual_seed(0)
        net = AttendFusion(
            visual_dim=1024, audio_dim=128, num_classes=3862, hidden=hidden, num_heads=8, dropout=0.4
        )
        module = YT8MModule(net, lr=1e-3, prior_bias=0.001)
        timer = _Throughput(args.warmup)
        wait = DataWait()
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=args.steps,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[timer.cb, wait],
            default_root_dir=str(work / "trainer"),
        )
        if feed == "memory":
            trainer.fit(module, train_dataloaders=_memory_loader(tensors, args.batch_size, 0))
        else:
            kind, w = feed.split("_w")
            trainer.fit(module, datamodule=datamodule(int(w), kind == "cache"))
        waits.setdefault((hidden, feed), []).append(wait.mean_fraction())
        return timer.rate

    waits: dict[tuple[int, str], list[float | None]] = {}

    params = {}
    rates: dict[int, dict[str, list[float]]] = {h: {f: [] for f in args.feeds} for h in args.hidden}
    t_start = time.perf_counter()
    for h in args.hidden:  # warm-up run per width (imports, allocator, page cache)
        run(h, "memory")
        net = AttendFusion(hidden=h, num_heads=8)
        params[h] = sum(p.numel() for p in net.parameters())
    for _ in range(args.repeats):
        for h in args.hidden:
            for feed in args.feeds:
                rates[h][feed].append(run(h, feed))

    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), lightning {lightning.__version__}",
        "data": f"avlab demo 'small' video-level train split: {n_examples} videos, "
        f"{len(shards)} shards, MF 1024+128, "
        "3862 classes",
        "setup": f"YT8MModule + AttendFusion(num_heads=8), AdamW, batch {args.batch_size}, "
        f"{args.steps} steps per run "
        f"(first {args.warmup} untimed), median of {args.repeats} interleaved repeats",
        "unit": "training examples/s",
        "feature_cache_build_s": cache_build_s,
        "results": {},
    }
    goal = True
    for h in args.hidden:
        med = {f: round(statistics.median(v), 1) for f, v in rates[h].items()}
        entry: dict[str, Any] = {
            "params": params[h],
            **med,
            "all": {f: [round(x, 1) for x in v] for f, v in rates[h].items()},
        }
        # Fraction of step time spent waiting for the next batch (callbacks/data_wait.py), per feed.
        entry["data_wait_fraction"] = {
            f: round(statistics.median(w), 3)
            if (w := [x for x in waits[(h, f)][-args.repeats :] if x is not None])
            else None
            for f in rates[h]
        }
        if "memory" in med:
            for f, value in med.items():
                if f != "memory":
                    entry[f"ratio_memory_over_{f}"] = round(med["memory"] / value, 3)
            best = min(v for k, v in entry.items() if k.startswith("ratio_memory_over_records"))
            entry["goal_le_1.1_records_best_workers"] = best <= 1.1
            goal = goal and best <= 1.1
        out["results"][f"hidden_{h}"] = entry
    out["goal_le_1.1"] = goal
    out["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""``avlab data check`` for TFRecord shards: every record's length and data CRC, all damage listed.

The scan is :func:`avlab.io.tfrecord.iter_records` with ``skip_corrupt=True``, so the CRC and
framing rules live in one place: a bad data CRC costs one record and the scan goes on; a bad
length CRC or a truncation ends that shard (its next record boundary is unknown). Each damaged
spot becomes one problem line naming the file, the byte offset and what failed.

This module imports nothing heavy (no torch), so worker processes start fast whatever the
multiprocessing start method.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from avlab.errors import DataError
from avlab.io.tfrecord import CorruptRecord, iter_records
from avlab.progress import progress as show_progress

__all__ = ["PARALLEL_MIN_SHARDS", "scan_shard", "scan_shards"]

#: From this many shards on, :func:`scan_shards` uses several processes. Below it, starting
#: processes costs more than reading the shards (the demo has a handful of small ones).
PARALLEL_MIN_SHARDS = 8


def _describe(event: CorruptRecord) -> str:
    # "corrupt record data (data CRC mismatch)" -> "corrupt record data at byte offset N (data CRC
    # mismatch)": the same shape as count_records' messages, so the damage kind reads first.
    kind, _, detail = event.reason.partition(" (")
    msg = f"{event.path}: {kind} at byte offset {event.offset}"
    if detail:
        msg += f" ({detail}"
    if event.rest_skipped:
        msg += "; the records after it cannot be located, so the rest of the shard is unreadable"
    return msg


def scan_shard(path: str | os.PathLike[str], verify_crc: bool = True) -> list[str]:
    """Read every record of one shard; one problem line per damaged record (empty when intact)."""
    found: list[str] = []
    logger = logging.getLogger("avlab.io.tfrecord")
    level = logger.level
    # iter_records logs a warning per skip for training runs; here the returned lines are the
    # report, so the warnings would only print everything twice.
    logger.setLevel(logging.ERROR)
    try:
        for _ in iter_records(
            path, verify_crc=verify_crc, skip_corrupt=True, on_corrupt=lambda e: found.append(_describe(e))
        ):
            pass
    except DataError as exc:  # unreadable file (permissions, vanished): a problem like any other
        found.append(str(exc))
    finally:
        logger.setLevel(level)
    return found


def scan_shards(
    paths: Sequence[Path], *, verify_crc: bool = True, workers: int | None = None, progress: bool = True
) -> dict[Path, list[str]]:
    """:func:`scan_shard` of every path (problem lines per path, in no particular completion order).

    Args:
        paths: shards to scan.
        verify_crc: check both CRCs of every record (framing is checked regardless).
        workers: processes to use; ``None`` picks ``min(cpu count, 8)`` when there are at least
            :data:`PARALLEL_MIN_SHARDS` shards and scans in this process otherwise.
        progress: show progress (:mod:`avlab.progress`; also off when quiet).
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(paths) >= PARALLEL_MIN_SHARDS else 1
    workers = max(1, min(workers, len(paths)))
    out: dict[Path, list[str]] = {}
    if workers == 1:
        for path in show_progress(paths, desc="checking shards", unit="shard", disable=not progress):
            out[path] = scan_shard(path, verify_crc)
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(scan_shard, str(p), verify_crc): p for p in paths}
        done = as_completed(futures)
        for fut in show_progress(
            done, total=len(futures), desc="checking shards", unit="shard", disable=not progress
        ):
            out[futures[fut]] = fut.result()
    return out

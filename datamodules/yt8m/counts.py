"""Record counts of TFRecord shards, cached on disk so that each shard is scanned once.

Counting a shard means walking its record framing (lengths and CRCs), which costs a full read.
Equal-batches planning under DDP and the feature cache's preallocation both need every shard's
count, so the counts are kept under the avlab cache folder, keyed by the shard's resolved path,
size and modification time: a shard that changes is counted again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from avlab.io.tfrecord import count_records
from avlab.paths import cache_dir
from avlab.rundir import atomic_write

__all__ = ["cached_count", "count_key"]


def count_key(path: Path) -> str:
    """The cache key of a shard's count as the shard is now: SHA-1 of its resolved path, size, mtime."""
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def cached_count(path: Path) -> int:
    """Record count of a shard, cached on disk by (path, size, mtime) so scans happen once."""
    cache = cache_dir() / "tfrecord_counts" / f"{count_key(path)}.json"
    try:
        return int(json.loads(cache.read_text())["count"])
    except (OSError, ValueError, KeyError):
        pass
    n = count_records(path)
    try:
        # Atomic: concurrent workers never read half a file.
        # The resolved path lets `avlab cache prune` recompute the key and spot a rewritten shard.
        atomic_write(cache, json.dumps({"path": str(path.resolve()), "count": n}))
    except OSError:
        pass
    return n

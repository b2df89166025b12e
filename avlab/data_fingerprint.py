"""What data a run read: a fingerprint of each dataset folder, kept in its run directory.

Two runs of the same resolved config give different results when the dataset folder behind
``data.root`` changed between them: a corrected score file, added videos, a re-extracted frame
folder. The config cannot show that, so a finished run records ``data.json``::

    {"data": {"root": "/abs/path", "files": 1234, "bytes": 56789, "sha1": "..."},
     "test_data": {...}}                # only when the experiment tests on a second dataset

``avlab table`` reuses a run only when the folders it read still have the fingerprints it recorded,
and ``avlab compare`` lists differing fingerprints beside the config differences.

The fingerprint is a SHA-1 over every file under the folder, in sorted order: its relative name, its
size, and either the SHA-1 of its bytes (annotation-like files: scores, labels, manifests, splits,
fixations; see :data:`CONTENT_SUFFIXES`) or its modification time (media). Annotation edits often
keep the size (a MOS of 3.21 corrected to 3.25), so those files are read; a dataset holds hundreds of
thousands of frames and videos, whose bytes cannot be hashed at every table, while any rewrite of
one changes its size or time. Hidden entries (``.features`` caches, ``.git``) are left out: avlab's
own caches live there and change without the data changing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avlab.features.cache import file_fingerprint
from avlab.rundir import atomic_write

__all__ = [
    "CONTENT_SUFFIXES",
    "DATA_RECORD",
    "data_fingerprint",
    "describe_record",
    "read_data_record",
    "stale_data",
    "write_data_record",
]

#: The run directory file that records the fingerprints.
DATA_RECORD = "data.json"
#: Files whose bytes enter the fingerprint (the rest enter by size and modification time).
CONTENT_SUFFIXES = frozenset(
    {".csv", ".tsv", ".txt", ".json", ".yaml", ".yml", ".xlsx", ".xls", ".mat", ".lst", ".xml", ".pkl"}
)
#: Larger annotation-like files enter by size and time too: reading them at every table would cost.
CONTENT_MAX_BYTES = 64 * 1024 * 1024


def data_fingerprint(root: str | Path) -> dict[str, Any]:
    """``{"root", "files", "bytes", "sha1"}`` of the dataset folder ``root`` (or of one file)."""
    root = Path(root).expanduser().absolute()
    if not root.exists():
        return {"root": str(root), "files": 0, "bytes": 0, "sha1": None}
    h = hashlib.sha1()
    files = total = 0
    walk = [(str(root.parent), [], [root.name])] if root.is_file() else os.walk(root, followlinks=True)
    for dirpath, dirnames, filenames in walk:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling link is not data
            suffix = os.path.splitext(name)[1].lower()
            if suffix in CONTENT_SUFFIXES and st.st_size <= CONTENT_MAX_BYTES:
                what = file_fingerprint(path)["sha1"]  # memoised per (path, size, mtime)
            else:
                what = str(st.st_mtime_ns)
            rel = os.path.relpath(path, root.parent if root.is_file() else root)
            h.update(f"{rel}\0{st.st_size}\0{what}\n".encode())
            files += 1
            total += st.st_size
    return {"root": str(root), "files": files, "bytes": total, "sha1": h.hexdigest()}


def write_data_record(run_dir: Path, roots: Mapping[str, str | Path]) -> dict[str, Any]:
    """Fingerprint each named dataset folder (``{"data": root, "test_data": root}``) into
    ``run_dir/data.json``; returns what was written."""
    record = {name: data_fingerprint(root) for name, root in roots.items()}
    atomic_write(Path(run_dir) / DATA_RECORD, json.dumps(record, indent=2) + "\n")
    return record


def read_data_record(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's ``data.json``; None for runs that did not record one."""
    try:
        data = json.loads((Path(run_dir) / DATA_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_record(run_dir: Path) -> dict[str, str]:
    """``{"data.json: data": "<sha1[:12]>, N files at ROOT", ...}`` of a run, for side-by-side tables."""
    record = read_data_record(run_dir) or {}
    return {
        f"{DATA_RECORD}: {name}": f"{str(fp.get('sha1'))[:12]}, {fp.get('files')} files at {fp.get('root')}"
        for name, fp in record.items()
    }


def stale_data(run_dir: Path, memo: dict[str, dict[str, Any]] | None = None) -> str | None:
    """Why the data that ``run_dir``'s run read is not the data on disk now; None when it still is.

    ``memo`` (root → fingerprint) lets a caller that checks many runs over one dataset walk it once.
    """
    record = read_data_record(run_dir)
    if record is None:
        return f"{run_dir} recorded no {DATA_RECORD} (a run from before avlab fingerprinted its data)"
    memo = {} if memo is None else memo
    for name, then in record.items():
        root = str(then.get("root"))
        if root not in memo:
            memo[root] = data_fingerprint(root)
        now = memo[root]
        if now["sha1"] is None:
            return f"{name} folder {root} is gone"
        if now["sha1"] != then.get("sha1"):
            files = f"{then.get('files')} → {now['files']} files"
            return f"{name} folder {root} changed since the run ({files}; a file was added, removed, edited)"
    return None

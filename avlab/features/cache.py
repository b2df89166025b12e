"""A content-addressed, provenance-recording cache for extracted feature arrays.

Layout under ``root``::

    root/<key[:2]>/<key>.npz     the arrays (``numpy.savez``, no pickles)
    root/<key[:2]>/<key>.json    provenance: extractor, version, params, inputs, created, ...

The key is a SHA-1 over a canonical JSON of (extractor name, extractor version, params, input
fingerprints). Input fingerprints are *content* based (size + SHA-1 of the bytes), so copying or
touching a dataset does not invalidate its features while any change of a byte does; ``mtime_ns``
is recorded in the provenance and only used to avoid re-hashing a file within one process.

Writes are atomic: both files are written to temporary names in the same folder and moved into
place with :func:`os.replace`, the ``.json`` sidecar last. An entry counts as present only when
both files exist and the ``.npz`` loads, so an interrupted run leaves either the old entry or
nothing, never a half-written one, and a failing ``compute_fn`` never overwrites anything.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avlab.errors import FeatureError
from avlab.rundir import atomic_path

__all__ = ["FeatureCache", "cache_key", "cached", "dataset_feature_cache", "file_fingerprint", "mark_used"]

# (resolved path, size, mtime_ns) -> sha1; files are re-hashed only when they change.
_SHA1_MEMO: dict[tuple[str, int, int], str] = {}
# Readers refresh an entry's last-use time at most this often: one metadata write a day at most.
_MARK_USED_EVERY_S = 86400.0


def mark_used(meta: Path) -> None:
    """Record that the cache entry described by the file ``meta`` was read now.

    The last use is ``meta``'s modification time, which ``avlab cache prune --older-than`` and
    ``--max-size`` order entries by. It is refreshed at most once a day, so reading costs no
    write per step; a read-only cache (a shared dataset folder) is read as usual.
    """
    try:
        if time.time() - meta.stat().st_mtime > _MARK_USED_EVERY_S:
            os.utime(meta)
    except OSError:
        pass


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha1"}`` of a file; only size and sha1 enter cache keys."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise FeatureError(f"{path} does not exist; cannot fingerprint it for the feature cache") from exc
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _SHA1_MEMO.get(memo_key)
    if digest is None:
        h = hashlib.sha1()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        _SHA1_MEMO[memo_key] = digest
    # The absolute path lets `avlab cache prune` find the source again from any working folder.
    return {"path": str(path.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha1": digest}


def _canonical(obj: Any) -> Any:
    """JSON-able, order-independent form of params (tuples -> lists, Paths -> str, numpy scalars)."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def cache_key(extractor: str, version: str, params: Mapping[str, Any], inputs: Sequence[str | Path]) -> str:
    """Hex SHA-1 key of (extractor, version, params, content fingerprints of ``inputs`` in order)."""
    fps = [{"size": fp["size"], "sha1": fp["sha1"]} for fp in (file_fingerprint(p) for p in inputs)]
    payload = {
        "extractor": extractor,
        "version": str(version),
        "params": _canonical(dict(params)),
        "inputs": fps,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


class FeatureCache:
    """Arrays plus a JSON provenance sidecar per key, written atomically under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.npz", folder / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        npz, meta = self._paths(key)
        return npz.exists() and meta.exists()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None when absent or unreadable (treated as a miss)."""
        npz, meta = self._paths(key)
        if not (npz.exists() and meta.exists()):
            return None
        try:
            with np.load(npz, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            # A damaged entry (disk full, foreign tampering) is recomputed rather than trusted.
            return None
        mark_used(meta)
        return arrays

    def provenance(self, key: str) -> dict[str, Any] | None:
        """The provenance sidecar of ``key`` (None when absent)."""
        _, meta = self._paths(key)
        if not meta.exists():
            return None
        return json.loads(meta.read_text())

    @staticmethod
    def _atomic_write(target: Path, write: Callable[[Any], None], mode: str) -> None:
        with atomic_path(target) as tmp, open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the entry must survive a crash once its sidecar says it exists

    def put(self, key: str, arrays: Mapping[str, np.ndarray], provenance: Mapping[str, Any]) -> None:
        """Store ``arrays`` under ``key`` with ``provenance`` (a ``created`` timestamp is added)."""
        if not arrays:
            raise ValueError("FeatureCache.put needs at least one array")
        arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        for name, arr in arrays.items():
            if arr.dtype == object:
                raise ValueError(f"array {name!r} has dtype object; the cache stores numeric arrays only")
        npz, meta = self._paths(key)
        prov = dict(_canonical(dict(provenance)))
        prov.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        prov["key"] = key
        prov["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}
        # Arrays first, sidecar last: get() needs both, so a crash in between leaves no valid entry.
        self._atomic_write(npz, lambda fh: np.savez(fh, **arrays), "wb")
        text = json.dumps(prov, indent=2, sort_keys=True, default=str)
        self._atomic_write(meta, lambda fh: fh.write(text), "w")


def cached(
    cache: FeatureCache | None,
    extractor_name: str,
    version: str,
    params: Mapping[str, Any],
    inputs: Sequence[str | Path],
    compute_fn: Callable[[], Mapping[str, np.ndarray]],
    *,
    extra_provenance: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Return the cached arrays for this (extractor, version, params, inputs), computing them if absent.

    With ``cache=None`` this just calls ``compute_fn``. ``compute_fn`` runs before anything is
    written, so an exception leaves the cache untouched.
    """
    if cache is None:
        return {k: np.asarray(v) for k, v in compute_fn().items()}
    key = cache_key(extractor_name, version, params, inputs)
    hit = cache.get(key)
    if hit is not None:
        return hit
    arrays = {k: np.asarray(v) for k, v in compute_fn().items()}
    prov = {
        "extractor": extractor_name,
        "version": str(version),
        "params": dict(params),
        "inputs": [file_fingerprint(p) for p in inputs],
        **(extra_provenance or {}),
    }
    cache.put(key, arrays, prov)
    return arrays


def dataset_feature_cache(dataset_root: str | Path) -> FeatureCache:
    """The feature cache that belongs to a dataset folder: ``<dataset_root>/.features``.

    Keeping features next to the data means the demo builder's extraction is reused by the
    datamodule, and deleting a dataset deletes its features.
    """
    return FeatureCache(Path(dataset_root) / ".features")

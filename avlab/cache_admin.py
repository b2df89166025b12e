"""What avlab's caches hold on disk, which entries can never be read again, and pruning them.

avlab keeps four kinds of derived data, each keyed by its sources so that a changed source is
computed again and never served stale (:mod:`avlab.features.cache`,
:mod:`avlab.features.frame_cache`, ``datamodules.yt8m.feature_cache``,
``datamodules.yt8m.counts``). The old entry of a changed source then stays on disk, unread.
This module finds such entries and removes them (``avlab cache list`` / ``avlab cache prune``).

Every entry gets one status:

* ``current`` — its recorded sources are on disk as they were when it was built;
* ``changed`` — a source is on disk but differs (size, or content / modification time, whichever
  the cache's key is made of), so the entry's key can never be asked for again;
* ``missing`` — a source is gone. The dataset may only be unmounted or moved (content-keyed
  feature entries still hit after a move), so these are pruned only when asked (``--missing``);
* ``outdated`` — written by an older layout version that the current code never reads;
* ``partial`` — the leftovers of a build that was interrupted (a crash, a killed job); a build
  still running (its process alive on this host, or a file in it written in the last hour) is
  never touched;
* ``unchecked`` — written before avlab recorded enough to check it (pruned by age or size only).

Pruning removes ``changed``, ``outdated`` and ``partial`` entries by default, ``missing`` ones
with ``--missing``, and any entry by last use with ``--older-than DAYS`` or ``--max-size SIZE``
(least recently used first). The last use is the modification time of the entry's metadata file,
which readers refresh at most once a day (:func:`avlab.features.cache.mark_used`), so reading a
cache costs no write per step and a read-only dataset folder still works.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avlab.errors import ConfigError, FeatureError
from avlab.features.cache import file_fingerprint
from avlab.features.frame_cache import FRAME_CACHE_VERSION, sources_fingerprint

__all__ = [
    "STATUSES",
    "CacheEntry",
    "parse_size",
    "prune",
    "scan",
    "summarize",
]

STATUSES = ("current", "changed", "missing", "outdated", "partial", "unchecked")
#: Statuses ``prune`` removes without being asked for more.
DEFAULT_PRUNE = ("changed", "outdated", "partial")
#: A temporary build folder or file younger than this may belong to a build still running elsewhere.
PARTIAL_GRACE_S = 3600.0

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
# Temporary names of avlab's atomic writers: FrameStore ``.<key>.tmp-<pid>-<hex>``, the yt8m
# cache ``<key>.tmp<pid>``, rundir.atomic_path ``.<stem>.tmp<pid>-<thread><ext>``.
_TMP_PID = re.compile(r"\.tmp-?(\d+)")


@dataclass
class CacheEntry:
    """One removable unit of a cache: an entry (or a build's leftovers) and what is known of it."""

    area: str  # features | frames | yt8m-features | tfrecord-counts
    path: Path  # the entry's folder, or its metadata file for single-file layouts
    files: tuple[Path, ...]  # everything removing the entry deletes
    size: int
    last_used: float  # epoch seconds
    status: str
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "path": str(self.path),
            "size": self.size,
            "last_used": self.last_used,
            "status": self.status,
            "reason": self.reason,
        }


def parse_size(text: str) -> int:
    """Bytes of ``"50G"``, ``"500M"``, ``"1.5T"``, ``"12345"`` (binary units: 1G = 1024**3)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not match:
        raise ConfigError(f"--max-size: cannot read {text!r} as a size; write it like 500M, 50G or 1.5T")
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[match.group(2).lower()]
    return int(float(match.group(1)) * 1024**power)


# --------------------------------------------------------------------------- source checks
def _check_fingerprints(fingerprints: Iterable[dict[str, Any]]) -> tuple[str, str]:
    """Status of entries keyed by content (size + SHA-1, with path and mtime recorded beside)."""
    for fp in fingerprints:
        path = Path(fp["path"])
        if not path.is_absolute():
            return "unchecked", f"source {path} was recorded relative to an unknown folder"
        try:
            st = path.stat()
        except OSError:
            return "missing", f"source {path} is gone"
        if st.st_size != fp.get("size"):
            return "changed", f"source {path} is now {st.st_size} bytes, was {fp.get('size')}"
        touched = st.st_mtime_ns != fp.get("mtime_ns") and fp.get("sha1")
        if touched and file_fingerprint(path)["sha1"] != fp["sha1"]:  # re-hash only touched files
            return "changed", f"source {path} has new content"
    return "current", ""


def _check_stats(stats: Iterable[dict[str, Any]]) -> tuple[str, str]:
    """Status of entries keyed by (path, size, mtime_ns) of their sources."""
    for rec in stats:
        path = Path(rec["path"])
        try:
            st = path.stat()
        except OSError:
            return "missing", f"source {path} is gone"
        if (st.st_size, st.st_mtime_ns) != (rec.get("size"), rec.get("mtime_ns")):
            return "changed", f"source {path} was rewritten since the entry was built"
    return "current", ""


def _check_frame_sources(meta: dict[str, Any]) -> tuple[str, str]:
    if str(meta.get("version")) != FRAME_CACHE_VERSION:
        return "outdated", f"layout version {meta.get('version')}, this avlab reads {FRAME_CACHE_VERSION}"
    sources = meta.get("sources")
    if isinstance(sources, list):  # content fingerprints (unqa stimuli)
        return _check_fingerprints(sources)
    files = meta.get("source_files")
    if isinstance(sources, dict) and files:  # a stat fingerprint over many files (saliency videos)
        try:
            now = sources_fingerprint(files)
        except FeatureError:
            gone = next((f for f in files if not Path(f).exists()), files[0])
            return "missing", f"source {gone} is gone"
        if now["sha1"] != sources.get("sha1"):
            return "changed", f"its {len(files)} source files no longer match (one was rewritten)"
        return "current", ""
    return "unchecked", "built before avlab recorded its source files"


# --------------------------------------------------------------------------- scanning
def _tree_size(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of a file or of everything under a folder."""
    if path.is_file():
        st = path.stat()
        return st.st_size, st.st_mtime
    total, newest = 0, 0.0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return total, newest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def _partial(area: str, path: Path) -> CacheEntry | None:
    """The leftovers of an interrupted build at ``path``, or None while a build may still be writing."""
    match = _TMP_PID.search(path.name)
    if match is None:
        return None
    size, newest = _tree_size(path)
    newest = max(newest, path.stat().st_mtime)
    pid = int(match.group(1))
    if _pid_alive(pid) or time.time() - newest < PARTIAL_GRACE_S:
        return None
    reason = f"left by process {pid}, which is no longer running"
    return CacheEntry(area, path, (path,), size, newest, "partial", reason)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _scan_feature_store(root: Path) -> Iterator[CacheEntry]:
    """:class:`~avlab.features.cache.FeatureCache` entries: ``root/<xx>/<key>.npz`` + ``.json``."""
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and _HEX2.fullmatch(p.name)):
        for item in sorted(sub.iterdir()):
            if item.name.startswith(".") and (partial := _partial("features", item)) is not None:
                yield partial
                continue
            if item.suffix != ".json" or not _HEX40.fullmatch(item.stem):
                continue
            npz = item.with_suffix(".npz")
            files = (npz, item) if npz.exists() else (item,)
            size = sum(f.stat().st_size for f in files)
            meta = _read_json(item)
            if meta is None or not npz.exists():
                status, reason = "partial", "metadata without arrays, or unreadable metadata"
            else:
                status, reason = _check_fingerprints(meta.get("inputs", []))
            info = {"extractor": (meta or {}).get("extractor")}
            yield CacheEntry("features", item, files, size, item.stat().st_mtime, status, reason, info)


def _folder_entry(
    area: str, folder: Path, check: Callable[[dict[str, Any]], tuple[str, str]], info_keys: Sequence[str]
) -> CacheEntry:
    """An entry stored as a folder whose ``meta.json`` is written last (its mtime is the last use)."""
    size, _ = _tree_size(folder)
    meta_path = folder / "meta.json"
    meta = _read_json(meta_path)
    if meta is None:
        return CacheEntry(area, folder, (folder,), size, folder.stat().st_mtime, "partial", "no meta.json")
    status, reason = check(meta)
    info = {key: meta.get(key) for key in info_keys}
    return CacheEntry(area, folder, (folder,), size, meta_path.stat().st_mtime, status, reason, info)


def _check_yt8m_sources(meta: dict[str, Any]) -> tuple[str, str]:
    if not meta.get("source_stats"):
        return "unchecked", "built before avlab recorded its shards' sizes and times"
    return _check_stats(meta["source_stats"])


def _scan_frame_store(root: Path) -> Iterator[CacheEntry]:
    """:class:`~avlab.features.frame_cache.FrameStore` entries: ``root/<xx>/<key>/meta.json``."""
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and _HEX2.fullmatch(p.name)):
        for item in sorted(sub.iterdir()):
            if item.name.startswith("."):
                if (partial := _partial("frames", item)) is not None:
                    yield partial
                continue
            if not (item.is_dir() and _HEX40.fullmatch(item.name)):
                continue
            yield _folder_entry("frames", item, _check_frame_sources, ("kind", "video"))


def _scan_yt8m_features(root: Path) -> Iterator[CacheEntry]:
    """yt8m memory-mapped feature caches: ``root/<key>/meta.json`` and the column arrays."""
    for item in sorted(p for p in root.iterdir() if p.is_dir()):
        if (partial := _partial("yt8m-features", item)) is not None:
            yield partial
            continue
        if _TMP_PID.search(item.name):
            continue  # a build in progress
        yield _folder_entry("yt8m-features", item, _check_yt8m_sources, ("count", "features"))


def _scan_tfrecord_counts(root: Path) -> Iterator[CacheEntry]:
    """Record counts of TFRecord shards: ``root/<key>.json`` holding the shard's path."""
    from avlab.datamodules.yt8m.counts import count_key

    for item in sorted(root.iterdir()):
        if item.name.startswith("."):
            if (partial := _partial("tfrecord-counts", item)) is not None:
                yield partial
            continue
        if item.suffix != ".json":
            continue
        shard = Path((_read_json(item) or {}).get("path", ""))
        if not shard.is_absolute():
            status, reason = "unchecked", "the shard's path is not recorded as an absolute path"
        elif not shard.is_file():
            status, reason = "missing", f"source {shard} is gone"
        elif count_key(shard) != item.stem:  # the key is made of the shard's path, size and mtime
            status, reason = "changed", f"source {shard} was rewritten since it was counted"
        else:
            status, reason = "current", ""
        st = item.stat()
        yield CacheEntry("tfrecord-counts", item, (item,), st.st_size, st.st_mtime, status, reason)


def _feature_dirs(path: Path) -> Iterator[tuple[str, Path]]:
    """(layout, folder) pairs that ``path`` holds: a cache root, a dataset, or a feature folder."""
    if (path / ".features").is_dir():  # a dataset folder
        yield from _feature_dirs(path / ".features")
        return
    named = {
        "frames": "frames",
        "yt8m_features": "yt8m-features",
        "tfrecord_counts": "tfrecord-counts",
    }
    for name, layout in named.items():
        if (path / name).is_dir():
            yield layout, path / name
    if any(p.is_dir() and _HEX2.fullmatch(p.name) for p in path.iterdir()):
        yield "features", path  # a FeatureCache folder (a dataset's .features, data.feature_cache_dir)
    demo = path / "demo"
    if demo.is_dir():  # the demo datasets that avlab built under its cache folder
        for dataset in sorted(d for d in demo.glob("*/*") if (d / ".features").is_dir()):
            yield from _feature_dirs(dataset / ".features")


_SCANNERS = {
    "features": _scan_feature_store,
    "frames": _scan_frame_store,
    "yt8m-features": _scan_yt8m_features,
    "tfrecord-counts": _scan_tfrecord_counts,
}


def scan(paths: Sequence[str | Path]) -> list[CacheEntry]:
    """Every cache entry under ``paths``: avlab's cache folder (``$AVLAB_CACHE``), a dataset folder
    (its ``.features``), or a feature folder (``data.feature_cache_dir``)."""
    entries: list[CacheEntry] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder; name avlab's cache folder or a dataset folder")
        for layout, folder in _feature_dirs(path):
            folder = folder.resolve()
            if (layout, folder) in seen:
                continue
            seen.add((layout, folder))
            entries.extend(_SCANNERS[layout](folder))
    return entries


def summarize(entries: Sequence[CacheEntry]) -> dict[str, dict[str, Any]]:
    """Per area: entries and bytes in all, and the number of entries per status."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        area = out.setdefault(e.area, {"entries": 0, "bytes": 0, **{s: 0 for s in STATUSES}})
        area["entries"] += 1
        area["bytes"] += e.size
        area[e.status] += 1
    return out


def select(
    entries: Sequence[CacheEntry],
    *,
    statuses: Sequence[str] = DEFAULT_PRUNE,
    older_than_days: float | None = None,
    max_size: int | None = None,
    now: float | None = None,
) -> list[tuple[CacheEntry, str]]:
    """(entry, why) pairs to remove: by status, by last use, then least recently used first until
    what is kept fits ``max_size`` bytes."""
    now = time.time() if now is None else now
    chosen: dict[int, str] = {}
    for i, e in enumerate(entries):
        if e.status in statuses:
            chosen[i] = f"{e.status}: {e.reason}" if e.reason else e.status
        elif older_than_days is not None and now - e.last_used > older_than_days * 86400:
            chosen[i] = f"unused for {(now - e.last_used) / 86400:.0f} days"
    if max_size is not None:
        kept = sum(e.size for i, e in enumerate(entries) if i not in chosen)
        unpicked = [i for i in range(len(entries)) if i not in chosen]
        for i in sorted(unpicked, key=lambda i: entries[i].last_used):
            if kept <= max_size:
                break
            chosen[i] = "least recently used beyond --max-size"
            kept -= entries[i].size
    return [(entries[i], why) for i, why in sorted(chosen.items())]


def remove(entry: CacheEntry) -> None:
    """Delete an entry, metadata file last, so an interruption never leaves arrays that look whole."""
    for path in sorted(entry.files, key=lambda p: p.suffix == ".json" or p.name == "meta.json"):
        if path.is_dir():
            meta = path / "meta.json"
            if meta.exists():
                meta.unlink()  # first: a half-deleted folder must not look like a complete entry
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def prune(
    paths: Sequence[str | Path],
    *,
    missing: bool = False,
    older_than_days: float | None = None,
    max_size: int | None = None,
    dry_run: bool = False,
) -> list[tuple[CacheEntry, str]]:
    """Remove what :func:`select` picks under ``paths`` (nothing with ``dry_run``); returns it."""
    statuses = DEFAULT_PRUNE + (("missing",) if missing else ())
    picked = select(scan(paths), statuses=statuses, older_than_days=older_than_days, max_size=max_size)
    if not dry_run:
        for entry, _why in picked:
            remove(entry)
    return picked


# --------------------------------------------------------------------------- command line
def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def add_parser(sub: Any) -> None:
    """The ``avlab cache list|prune`` sub-commands (registered by :mod:`avlab.cli`)."""
    p = sub.add_parser(
        "cache",
        help="What avlab's caches hold, and removing entries that can never be read again.",
        description="List or prune avlab's caches: decoded frames, extracted features, the yt8m\n"
        "feature cache and TFRecord counts. Entries whose sources changed (so they are never\n"
        "read again), of an older layout, or left by interrupted builds are pruned by default.",
        epilog="examples:\n  avlab cache list --entries\n  avlab cache prune --dry-run\n"
        "  avlab cache prune /data/diem --missing --older-than 90\n  avlab cache prune --max-size 200G",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    where_help = (
        "avlab's cache folder ($AVLAB_CACHE, default ~/.cache/avlab), a dataset folder (its "
        ".features) or a feature folder (data.feature_cache_dir); default: the cache folder"
    )
    listing = csub.add_parser("list", help="Entries, sizes and staleness per cache area.")
    listing.add_argument("paths", nargs="*", type=Path, help=where_help)
    listing.add_argument("--entries", action="store_true", help="one line per entry that is not current")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    prune_p = csub.add_parser("prune", help="Remove stale entries (and, if asked, old or excess ones).")
    prune_p.add_argument("paths", nargs="*", type=Path, help=where_help)
    prune_p.add_argument("--missing", action="store_true", help="also remove entries whose sources are gone")
    prune_p.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="also remove entries unused for DAYS"
    )
    prune_p.add_argument(
        "--max-size",
        default=None,
        metavar="SIZE",
        help="then remove least recently used entries until the rest fits SIZE (e.g. 200G)",
    )
    prune_p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")


def main(args: Any) -> int:
    """Run ``avlab cache`` for parsed arguments."""
    from rich.console import Console
    from rich.table import Table

    from avlab.paths import cache_dir

    command = getattr(args, "cache_command", None)
    if command not in ("list", "prune"):
        raise ConfigError("avlab cache needs a sub-command: list or prune (avlab cache --help)")
    paths = list(args.paths) or [cache_dir()]
    console = Console()
    if command == "list":
        entries = scan(paths)
        if args.json:
            print(json.dumps([e.as_dict() for e in entries], indent=1))
            return 0
        where = ", ".join(str(p) for p in paths)
        console.print(f"avlab caches under {where}", highlight=False, soft_wrap=True)
        table = Table()
        for col, justify in (("area", "left"), ("entries", "right"), ("size", "right"), ("status", "left")):
            table.add_column(col, justify=justify)
        for area, row in summarize(entries).items():
            status = ", ".join(f"{row[s]} {s}" for s in STATUSES if row[s])  # the non-zero counts only
            table.add_row(area, str(row["entries"]), _human(row["bytes"]), status)
        console.print(table)
        if args.entries:
            for e in entries:
                if e.status != "current":
                    line = f"{e.status:9} {_human(e.size):>10}  {e.path}  {e.reason}"
                    console.print(line, highlight=False, soft_wrap=True)
        stale = [e for e in entries if e.status in DEFAULT_PRUNE]
        if stale:
            freed = _human(sum(e.size for e in stale))
            console.print(f"`avlab cache prune` would free {freed} ({len(stale)} entries).", highlight=False)
        return 0
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    picked = prune(
        paths,
        missing=args.missing,
        older_than_days=args.older_than,
        max_size=max_size,
        dry_run=args.dry_run,
    )
    verb = "would remove" if args.dry_run else "removed"
    for entry, why in picked:
        line = f"{verb} {entry.area} {entry.path} ({_human(entry.size)}): {why}"
        console.print(line, highlight=False, soft_wrap=True)
    total = _human(sum(e.size for e, _ in picked))
    console.print(f"{verb} {len(picked)} entries, {total}.", highlight=False)
    return 0
